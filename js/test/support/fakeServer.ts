/**
 * A small stand-in for the Snorky server, speaking the envelope and RPC
 * framing of docs/protocol.md over a real WebSocket (`ws`, 127.0.0.1, port 0).
 *
 * It records every frame the client sends, answers each call (by default with
 * `data: null`; `on(service, command, handler)` to say otherwise), and can push
 * or close on demand. It knows nothing of the services' semantics: tests
 * script what they need. Behaviour against the real server is the business of
 * `test/integration/`.
 *
 *   server.on("pubsub", "subscribe", (params) => null)          // reply data
 *   server.on("chat", "join", () => { throw new RpcError("Not authenticated") })
 *   server.on("pubsub", "publish", () => NO_REPLY)               // leave the call hanging
 *   server.push("pubsub", {type: "message", channel: "c", message: 1})
 *   server.current.close(1001)                                   // drive a reconnection
 */

import type { IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { WebSocket, WebSocketServer } from "ws";
import { waitUntil } from "./wait.js";

/** Thrown by a handler: the call is answered with an error whose message is the text. */
export class RpcError extends Error {}

/** Returned by a handler: the call is not answered. */
export const NO_REPLY = Symbol("no reply");

/** A frame the client sent. */
export interface Received {
  /** Index of the connection it came on (0 for the first). */
  connection: number;
  service: string;
  message: any;
}

export type Handler = (params: any, request: Received) => unknown;

/** One client connection, as the server sees it. */
export class FakeConnection {
  constructor(
    readonly index: number,
    readonly socket: WebSocket,
    /** The request path and query, e.g. `/ws?token=abc`. */
    readonly url: string,
  ) {}

  get open(): boolean {
    return this.socket.readyState === WebSocket.OPEN;
  }

  send(payload: unknown): void {
    this.socket.send(typeof payload === "string" ? payload : JSON.stringify(payload));
  }

  close(code = 1001, reason = ""): void {
    this.socket.close(code, reason);
  }

  /** Drops the TCP connection without a close frame (the client sees 1006). */
  terminate(): void {
    this.socket.terminate();
  }
}

export class FakeServer {
  /** Every frame received, in order, across connections. */
  readonly received: Received[] = [];
  /** Every connection accepted, in order. */
  readonly connections: FakeConnection[] = [];

  private readonly handlers = new Map<string, Handler>();

  private constructor(private readonly wss: WebSocketServer) {
    wss.on("connection", (socket: WebSocket, request: IncomingMessage) => {
      const connection = new FakeConnection(this.connections.length, socket, request.url ?? "");
      this.connections.push(connection);
      socket.on("message", (data) => this.receive(connection, String(data)));
    });
  }

  /** Starts listening on 127.0.0.1 (`port` 0 picks a free one). */
  static async start(port = 0): Promise<FakeServer> {
    const wss = new WebSocketServer({ host: "127.0.0.1", port });
    await new Promise<void>((resolve, reject) => {
      wss.once("listening", resolve);
      wss.once("error", reject);
    });
    return new FakeServer(wss);
  }

  get port(): number {
    return (this.wss.address() as AddressInfo).port;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** The latest connection. */
  get current(): FakeConnection {
    const connection = this.connections[this.connections.length - 1];
    if (!connection) throw new Error("no connection yet");
    return connection;
  }

  /** Answers `command` of `service` with the handler's return value (or its RpcError). */
  on(service: string, command: string, handler: Handler): this {
    this.handlers.set(`${service}.${command}`, handler);
    return this;
  }

  /** Pushes `message` from `service` to a connection (the latest by default). */
  push(service: string, message: unknown, connection: FakeConnection = this.current): void {
    connection.send({ service, message });
  }

  /** The calls received for `service`.`command`, optionally on one connection. */
  calls(service: string, command: string, connection?: number): Received[] {
    return this.received.filter(
      (r) =>
        r.service === service &&
        r.message?.command === command &&
        (connection === undefined || r.connection === connection),
    );
  }

  /** Resolves when `count` connections have been accepted and the last is open. */
  async waitForConnection(count: number, timeout = 2000): Promise<FakeConnection> {
    await waitUntil(() => this.connections.length >= count && this.current.open, timeout, `connection #${count}`);
    return this.current;
  }

  /** Resolves with the first received frame matching `predicate`. */
  async waitForFrame(predicate: (r: Received) => boolean, timeout = 2000, label = "frame"): Promise<Received> {
    let found: Received | undefined;
    await waitUntil(() => (found = this.received.find(predicate)) !== undefined, timeout, label);
    return found as Received;
  }

  /** Stops listening and drops every connection. */
  async stop(): Promise<void> {
    for (const client of this.wss.clients) client.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }

  private receive(connection: FakeConnection, raw: string): void {
    const envelope = JSON.parse(raw) as { service: string; message: any };
    const received: Received = { connection: connection.index, service: envelope.service, message: envelope.message };
    this.received.push(received);
    const { command, params, callId } = envelope.message ?? {};
    if (typeof command !== "string") return;
    const handler = this.handlers.get(`${envelope.service}.${command}`);
    let reply: unknown;
    try {
      const data = handler ? handler(params, received) : null;
      if (data === NO_REPLY) return;
      reply = { type: "response", callId, data: data ?? null };
    } catch (error) {
      if (!(error instanceof RpcError)) throw error;
      reply = { type: "error", callId, message: error.message };
    }
    if (connection.open) connection.send({ service: envelope.service, message: reply });
  }
}
