/** Clients of the real server (see realServer.ts), torn down when the test ends. */

import type { TestContext } from "node:test";
import { WebSocket } from "ws";
import { Snorky, type WebSocketClass } from "../../src/client.js";
import { RPCService } from "../../src/services/base.js";
import type { SnorkyOptions } from "../../src/types.js";
import { ALL_SERVICES } from "./harness.js";
import type { RealServer } from "./realServer.js";
import { waitUntil } from "./wait.js";

/** The frontend services of `server.py`: the built-in ones and the Python `calc` service. */
export const SERVICES = { ...ALL_SERVICES, calc: RPCService };

/** Quick reconnection, and calls waiting a little longer than the unit tests let them. */
export const LIVE: SnorkyOptions = { minReconnectDelay: 20, maxReconnectDelay: 200, queueTimeout: 5000 };

export type LiveClient = Snorky<typeof SERVICES>;

/** A client of `server` (not waited for); closed when the test ends. */
export function liveClient(
  t: TestContext,
  server: RealServer,
  options: SnorkyOptions = {},
  socketClass: WebSocketClass = WebSocket,
): LiveClient {
  const client = new Snorky(socketClass, server.wsUrl, SERVICES, { ...LIVE, ...options });
  t.after(() => client.close());
  return client;
}

/** Like {@link liveClient}, and waits (bounded) for the connection to be open. */
export async function connectedClient(
  t: TestContext,
  server: RealServer,
  options: SnorkyOptions = {},
  socketClass: WebSocketClass = WebSocket,
): Promise<LiveClient> {
  const client = liveClient(t, server, options, socketClass);
  await waitUntil(() => client.isConnected, 5000, "the client to connect to the real server");
  return client;
}

/**
 * A `ws` WebSocket class that remembers every socket it opens, so a test can
 * watch a connection's own events (its close handshake finishing, say).
 */
export function recordingSocketClass(): { socketClass: WebSocketClass; sockets: WebSocket[] } {
  const sockets: WebSocket[] = [];
  class RecordedWebSocket extends WebSocket {
    constructor(address: string) {
      super(address);
      sockets.push(this);
    }
  }
  return { socketClass: RecordedWebSocket, sockets };
}

/**
 * Holds a client's reconnection: pass {@link Gate.tokenSource} as the `token`
 * option; while the gate is shut, the client waits for its token before every
 * attempt, so a test can act on the server while the client is surely away.
 */
export class Gate {
  private shut = false;
  private waiters: Array<() => void> = [];
  /** How many times the client asked for a token (one per connection attempt). */
  requests = 0;

  /** Keeps the next connection attempts waiting. */
  close(): void {
    this.shut = true;
  }

  /** Lets the waiting attempt (and the next ones) through. */
  open(): void {
    this.shut = false;
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** A `token` option for the client: `token` once the gate is open. */
  tokenSource(token: string): () => Promise<string> {
    return async () => {
      this.requests++;
      if (this.shut) await new Promise<void>((resolve) => this.waiters.push(resolve));
      return token;
    };
  }
}
