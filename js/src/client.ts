/**
 * The `Snorky` client: one WebSocket connection shared by the service facades.
 *
 * It owns the connection state (one `setState()`, one `stateChanged` signal),
 * RPC call ids and their promises, the queue of calls made while not
 * connected, and reconnection: full-jitter backoff, then each service restores
 * its server-side state before queued calls are sent.
 */

import { backoff, DEFAULT_MAX_DELAY, DEFAULT_MIN_DELAY } from "./backoff.js";
import { CloseCode, ErrorCode, shouldReconnect } from "./codes.js";
import { SnorkyError } from "./errors.js";
import { fetchWithSubscription } from "./fetch.js";
import { RPCService, type ServiceClass } from "./services/base.js";
import { Chat } from "./services/chat.js";
import { Cursors } from "./services/cursors.js";
import { DataSync } from "./services/datasync.js";
import { Messaging } from "./services/messaging.js";
import { PubSub } from "./services/pubsub.js";
import { Signal } from "./signal.js";
import type {
  DisconnectInfo,
  PushMessage,
  RestoreFailure,
  SnorkyOptions,
  StateChange,
  TokenSource,
} from "./types.js";

/** The connection state. String values, so they read well in logs and devtools. */
export enum State {
  /** Opening a connection, or waiting for the next reconnection attempt. Calls are queued. */
  Connecting = "connecting",
  /** Connected. Calls are sent at once. */
  Connected = "connected",
  /** Not connected and not trying: reconnection is off, gave up, or the close code was terminal. `connect()` starts again. */
  Disconnected = "disconnected",
  /** `close()` was called. Final. */
  Closed = "closed",
}

/**
 * What the client needs of a WebSocket class: the browser's `WebSocket`,
 * `ws`'s `WebSocket` in Node, or `SockJS`.
 */
export interface WebSocketLike {
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor. */
export type WebSocketClass = new (url: string) => WebSocketLike;

/** The services map: service name on the server -> service class. */
export type ServiceMap = Record<string, ServiceClass<RPCService>>;

/** The service instances of a client, typed after its services map. */
export type Services<S extends ServiceMap> = { [K in keyof S]: InstanceType<S[K]> };

interface Call {
  service: string;
  command: string;
  params: object;
  resolve: (data: unknown) => void;
  reject: (error: SnorkyError) => void;
  timer?: ReturnType<typeof setTimeout>;
}

interface Settings {
  token: TokenSource | undefined;
  reconnect: boolean;
  minReconnectDelay: number;
  maxReconnectDelay: number;
  maxReconnectAttempts: number;
  queueTimeout: number;
  debug: boolean;
}

export class Snorky<S extends ServiceMap = ServiceMap> {
  static readonly PubSub = PubSub;
  static readonly Chat = Chat;
  static readonly Cursors = Cursors;
  static readonly Messaging = Messaging;
  static readonly DataSync = DataSync;
  static readonly RPCService = RPCService;
  static readonly Signal = Signal;
  static readonly State = State;
  static readonly SnorkyError = SnorkyError;
  static readonly CloseCode = CloseCode;
  static readonly fetchWithSubscription = fetchWithSubscription;

  /** The WebSocket URL, without the token. */
  readonly address: string;
  /** The service facades, by name: `snorky.services.pubsub`. */
  readonly services: Services<S>;

  /** Every state change, with `{oldState, newState}`. */
  readonly stateChanged = new Signal<StateChange>();
  /** The connection opened (first time or after a reconnection); queued calls have been sent. */
  readonly connected = new Signal<void>();
  /** An open connection closed, with its close code and reason. */
  readonly disconnected = new Signal<DisconnectInfo>();
  /** Every call that restores state after a connection opened has been answered. */
  readonly restored = new Signal<void>();
  /** The server refused a call made to restore state after a reconnection. */
  readonly restoreFailed = new Signal<RestoreFailure>();

  private readonly socketClass: WebSocketClass;
  /** SockJS takes http(s) or relative URLs; WebSocket URLs are ws(s). */
  private readonly sockjs: boolean;
  private readonly settings: Settings;
  private currentState: State = State.Connecting;
  private socket: WebSocketLike | null = null;
  private socketOpen = false;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private nextCallId = 0;
  private readonly pending = new Map<number, Call>();
  private queue: Call[] = [];
  private restoring: Promise<unknown>[] | null = null;
  private generation = 0;

  /**
   * Creates the client and starts connecting.
   *
   * @param socketClass `WebSocket` in browsers, `ws`'s `WebSocket` in Node, or `SockJS`
   *   (sockjs-client) for browsers and networks without WebSocket.
   * @param address the server's endpoint: `"wss://example.com/ws"` for WebSocket,
   *   `"https://example.com/sockjs"` (or a relative `"/sockjs"`) for SockJS.
   * @param services service name -> class: `{pubsub: Snorky.PubSub}`.
   * @param options see {@link SnorkyOptions}; `true` means `{debug: true}` (Snorky 0.1).
   */
  constructor(
    socketClass: WebSocketClass,
    address: string,
    services: S = {} as S,
    options: SnorkyOptions | boolean = {},
  ) {
    const o: SnorkyOptions = typeof options === "boolean" ? { debug: options } : (options ?? {});
    this.socketClass = socketClass;
    this.sockjs = !/^wss?:/i.test(address);
    this.address = address;
    this.settings = {
      token: o.token,
      reconnect: o.reconnect ?? true,
      minReconnectDelay: o.minReconnectDelay ?? DEFAULT_MIN_DELAY,
      maxReconnectDelay: o.maxReconnectDelay ?? DEFAULT_MAX_DELAY,
      maxReconnectAttempts: o.maxReconnectAttempts ?? Infinity,
      queueTimeout: o.queueTimeout ?? 15_000,
      debug: o.debug ?? false,
    };

    const instances: Record<string, RPCService> = {};
    for (const name of Object.keys(services)) {
      const ServiceClass = services[name] as ServiceClass<RPCService>;
      instances[name] = new ServiceClass(name, this);
    }
    this.services = instances as Services<S>;

    this.openSocket();
  }

  /** The connection state. */
  get state(): State {
    return this.currentState;
  }

  /** Whether calls are sent right now (rather than queued). */
  get isConnected(): boolean {
    return this.socketOpen;
  }

  /**
   * Starts connecting again after the client gave up (state `Disconnected`).
   * Does nothing while connecting or connected.
   */
  connect(): void {
    if (this.currentState === State.Closed) throw new SnorkyError(ErrorCode.closed, "The Snorky client was closed");
    if (this.currentState !== State.Disconnected) return;
    this.attempt = 0;
    this.setState(State.Connecting);
    this.openSocket();
  }

  /**
   * Ends the client for good: closes the connection, stops reconnecting, and
   * rejects every call not yet answered with code `"closed"`.
   */
  close(): void {
    if (this.currentState === State.Closed) return;
    const socket = this.socket;
    const wasOpen = this.socketOpen;
    this.socket = null;
    this.socketOpen = false;
    this.generation++;
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.setState(State.Closed);
    this.failAll(ErrorCode.closed, "The Snorky client was closed");
    if (socket) {
      try {
        socket.close(CloseCode.normal);
      } catch (error) {
        this.log("closing the socket failed", error);
      }
    }
    if (wasOpen) this.disconnected.dispatch({ code: CloseCode.normal, reason: "closed by the client" });
  }

  /** Snorky 0.1's name for {@link close}. */
  disconnect(): void {
    this.close();
  }

  /**
   * @internal Sends an RPC call, or queues it until the connection opens.
   * `restore` marks the calls services make to restore state after a reconnection.
   */
  _call(service: string, command: string, params: object, restore = false): Promise<unknown> {
    const promise = new Promise<unknown>((resolve, reject) => {
      const call: Call = { service, command, params, resolve, reject };
      if (this.socketOpen) {
        this.send(call);
      } else if (this.currentState === State.Connecting) {
        this.enqueue(call);
      } else if (this.currentState === State.Closed) {
        reject(new SnorkyError(ErrorCode.closed, "The Snorky client was closed"));
      } else {
        reject(new SnorkyError(ErrorCode.notConnected, "Not connected to the Snorky server, and not reconnecting"));
      }
    });
    if (restore) {
      promise.catch((error: unknown) => {
        if (error instanceof SnorkyError && error.code === ErrorCode.server) {
          this.restoreFailed.dispatch({ service, command, params, error });
        }
      });
      this.restoring?.push(promise);
    }
    return promise;
  }

  // -------------------------------------------------------------------------
  // Connection life cycle
  // -------------------------------------------------------------------------

  private setState(newState: State): void {
    const oldState = this.currentState;
    if (oldState === newState) return;
    this.currentState = newState;
    this.log("state", oldState, "->", newState);
    this.stateChanged.dispatch({ oldState, newState });
  }

  private openSocket(): void {
    const token = this.settings.token;
    const generation = ++this.generation;
    if (typeof token === "function") {
      // A token provider may fetch a fresh token; a failure counts as a failed attempt.
      Promise.resolve()
        .then(token)
        .then(
          (value) => {
            if (generation === this.generation) this.createSocket(value);
          },
          (error: unknown) => {
            if (generation !== this.generation) return;
            this.log("the token provider failed", error);
            this.handleClose(CloseCode.abnormal, "token provider failed");
          },
        );
    } else {
      this.createSocket(token);
    }
  }

  private createSocket(token: string | undefined): void {
    let socket: WebSocketLike;
    try {
      socket = new this.socketClass(withToken(this.address, token));
    } catch (error) {
      // A socket class refuses its address at once (a network failure never does): the URL or
      // the class is wrong, and trying again would fail the same way.
      console.error(
        `Snorky: cannot open a connection to "${this.address}" (${String(error)}): WebSocket takes ws:// or ` +
          "wss:// addresses, SockJS http(s):// or relative ones; not reconnecting",
      );
      this.handleClose(CloseCode.abnormal, String(error), false);
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket === socket) this.handleOpen();
    };
    socket.onmessage = (event: { data?: unknown }) => {
      if (this.socket === socket) this.handleFrame(event.data);
    };
    socket.onclose = (event: { code?: number; reason?: string }) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.handleClose(event.code ?? CloseCode.abnormal, event.reason ?? "");
    };
    socket.onerror = (event: unknown) => {
      // A close event always follows; that is where the error is handled.
      this.log("socket error", event);
    };
  }

  private handleOpen(): void {
    this.socketOpen = true;
    this.attempt = 0;
    const generation = this.generation;

    // Restore calls go out before the queued ones, so a call queued while
    // disconnected sees the state that was there before the disconnection.
    const restoring: Promise<unknown>[] = [];
    this.restoring = restoring;
    for (const service of this.serviceList()) {
      try {
        service._restore();
      } catch (error) {
        console.error(`Snorky: restoring service "${service.name}" failed`, error);
      }
    }
    this.restoring = null;

    const queued = this.queue;
    this.queue = [];
    for (const call of queued) {
      if (call.timer !== undefined) clearTimeout(call.timer);
      this.send(call);
    }

    this.setState(State.Connected);
    this.connected.dispatch();
    Promise.allSettled(restoring).then(() => {
      if (generation === this.generation && this.socketOpen) this.restored.dispatch();
    });
  }

  /** The connection closed or could not open; `retry: false` when trying again cannot help. */
  private handleClose(code: number, reason: string, retry = true): void {
    const wasOpen = this.socketOpen;
    this.socketOpen = false;
    this.generation++;
    this.log("connection closed", code, reason);

    const inFlight = [...this.pending.values()];
    this.pending.clear();
    for (const call of inFlight) {
      call.reject(
        new SnorkyError(ErrorCode.disconnected, `The connection closed before "${call.command}" was answered`),
      );
    }
    for (const service of this.serviceList()) {
      try {
        service._connectionLost(code);
      } catch (error) {
        console.error(`Snorky: service "${service.name}" failed handling the disconnection`, error);
      }
    }
    if (wasOpen) this.disconnected.dispatch({ code, reason });

    // A listener may have called close().
    if (this.currentState === State.Closed) return;
    const s = this.settings;
    if (retry && s.reconnect && shouldReconnect(code, this.sockjs) && this.attempt < s.maxReconnectAttempts) {
      const delay = backoff(this.attempt++, s.minReconnectDelay, s.maxReconnectDelay);
      this.log(`reconnecting in ${delay} ms (attempt ${this.attempt})`);
      this.setState(State.Connecting);
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null;
        this.openSocket();
      }, delay);
    } else {
      this.setState(State.Disconnected);
      const queued = this.queue;
      this.queue = [];
      for (const call of queued) {
        if (call.timer !== undefined) clearTimeout(call.timer);
        call.reject(new SnorkyError(ErrorCode.notConnected, "Not connected to the Snorky server, and not reconnecting"));
      }
    }
  }

  // -------------------------------------------------------------------------
  // Frames
  // -------------------------------------------------------------------------

  private send(call: Call): void {
    const callId = this.nextCallId++;
    let frame: string;
    try {
      frame = JSON.stringify({ service: call.service, message: { command: call.command, params: call.params, callId } });
    } catch (error) {
      call.reject(new SnorkyError(ErrorCode.invalidParams, `Params of "${call.command}" are not JSON: ${String(error)}`));
      return;
    }
    this.pending.set(callId, call);
    try {
      this.socket?.send(frame);
    } catch (error) {
      // The socket is closing; its close event rejects the call.
      this.log("send failed", error);
    }
  }

  private enqueue(call: Call): void {
    this.queue.push(call);
    const timeout = this.settings.queueTimeout;
    if (Number.isFinite(timeout)) {
      call.timer = setTimeout(() => {
        this.queue = this.queue.filter((c) => c !== call);
        call.reject(
          new SnorkyError(ErrorCode.timeout, `Not connected to the Snorky server within ${timeout} ms ("${call.command}")`),
        );
      }, timeout);
    }
  }

  private handleFrame(data: unknown): void {
    let envelope: unknown;
    try {
      envelope = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      this.log("dropped a frame that is not JSON", data);
      return;
    }
    if (!isObject(envelope) || typeof envelope["service"] !== "string" || !isObject(envelope["message"])) {
      this.log("dropped a frame that is not an envelope", envelope);
      return;
    }
    const serviceName = envelope["service"];
    const message = envelope["message"];

    if (message["type"] === "response" || message["type"] === "error") {
      const callId = message["callId"];
      const call = typeof callId === "number" ? this.pending.get(callId) : undefined;
      if (!call || call.service !== serviceName) {
        this.log("reply to an unknown call", envelope);
        return;
      }
      this.pending.delete(callId as number);
      if (message["type"] === "response") {
        call.resolve(message["data"] ?? null);
      } else {
        call.reject(new SnorkyError(ErrorCode.server, String(message["message"])));
      }
      return;
    }

    const service = Object.prototype.hasOwnProperty.call(this.services, serviceName)
      ? (this.services as Record<string, RPCService>)[serviceName]
      : undefined;
    if (!service || typeof message["type"] !== "string") {
      this.log("dropped a message for an unknown service or without a type", envelope);
      return;
    }
    service._handleMessage(message as PushMessage);
  }

  private failAll(code: ErrorCode, text: string): void {
    const calls = [...this.pending.values(), ...this.queue];
    this.pending.clear();
    this.queue = [];
    for (const call of calls) {
      if (call.timer !== undefined) clearTimeout(call.timer);
      call.reject(new SnorkyError(code, text));
    }
  }

  private serviceList(): RPCService[] {
    return Object.values(this.services as Record<string, RPCService>);
  }

  private log(...args: unknown[]): void {
    if (this.settings.debug) console.debug("Snorky:", ...args);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Adds the connection token to the URL as the `token` query parameter. */
function withToken(address: string, token: string | undefined): string {
  if (!token) return address;
  return `${address}${address.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}
