/**
 * The `Snorky` client: one WebSocket connection shared by the service facades.
 *
 * It owns the connection state (one `setState()`, one `stateChanged` signal),
 * RPC call ids and their promises, the queue of calls made while not
 * connected, and reconnection: full-jitter backoff, then each service restores
 * its server-side state before queued calls are sent.
 */
import { SnorkyError } from "./errors.js";
import { fetchWithSubscription } from "./fetch.js";
import { RPCService, type ServiceClass } from "./services/base.js";
import { Chat } from "./services/chat.js";
import { Cursors } from "./services/cursors.js";
import { DataSync } from "./services/datasync.js";
import { Messaging } from "./services/messaging.js";
import { PubSub } from "./services/pubsub.js";
import { Signal } from "./signal.js";
import type { DisconnectInfo, RestoreFailure, SnorkyOptions, StateChange } from "./types.js";
/** The connection state. String values, so they read well in logs and devtools. */
export declare enum State {
    /** Opening a connection, or waiting for the next reconnection attempt. Calls are queued. */
    Connecting = "connecting",
    /** Connected. Calls are sent at once. */
    Connected = "connected",
    /** Not connected and not trying: reconnection is off, gave up, or the close code was terminal. `connect()` starts again. */
    Disconnected = "disconnected",
    /** `close()` was called. Final. */
    Closed = "closed"
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
export type Services<S extends ServiceMap> = {
    [K in keyof S]: InstanceType<S[K]>;
};
export declare class Snorky<S extends ServiceMap = ServiceMap> {
    static readonly PubSub: typeof PubSub;
    static readonly Chat: typeof Chat;
    static readonly Cursors: typeof Cursors;
    static readonly Messaging: typeof Messaging;
    static readonly DataSync: typeof DataSync;
    static readonly RPCService: typeof RPCService;
    static readonly Signal: typeof Signal;
    static readonly State: typeof State;
    static readonly SnorkyError: typeof SnorkyError;
    static readonly CloseCode: {
        readonly normal: 1000;
        readonly goingAway: 1001;
        readonly protocolError: 1002;
        readonly unsupportedData: 1003;
        readonly abnormal: 1006;
        readonly invalidPayload: 1007;
        readonly policyViolation: 1008;
        readonly messageTooBig: 1009;
        readonly mandatoryExtension: 1010;
        readonly internalError: 1011;
        readonly tlsHandshake: 1015;
        readonly revoked: 4501;
    };
    static readonly fetchWithSubscription: typeof fetchWithSubscription;
    /** The WebSocket URL, without the token. */
    readonly address: string;
    /** The service facades, by name: `snorky.services.pubsub`. */
    readonly services: Services<S>;
    /** Every state change, with `{oldState, newState}`. */
    readonly stateChanged: Signal<StateChange>;
    /** The connection opened (first time or after a reconnection); queued calls have been sent. */
    readonly connected: Signal<void>;
    /** An open connection closed, with its close code and reason. */
    readonly disconnected: Signal<DisconnectInfo>;
    /** Every call that restores state after a connection opened has been answered. */
    readonly restored: Signal<void>;
    /** The server refused a call made to restore state after a reconnection. */
    readonly restoreFailed: Signal<RestoreFailure>;
    private readonly socketClass;
    /** SockJS takes http(s) or relative URLs; WebSocket URLs are ws(s). */
    private readonly sockjs;
    private readonly settings;
    private currentState;
    private socket;
    private socketOpen;
    private attempt;
    private reconnectTimer;
    private nextCallId;
    private readonly pending;
    private queue;
    private restoring;
    private generation;
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
    constructor(socketClass: WebSocketClass, address: string, services?: S, options?: SnorkyOptions | boolean);
    /** The connection state. */
    get state(): State;
    /** Whether calls are sent right now (rather than queued). */
    get isConnected(): boolean;
    /**
     * Starts connecting again after the client gave up (state `Disconnected`).
     * Does nothing while connecting or connected.
     */
    connect(): void;
    /**
     * Ends the client for good: closes the connection, stops reconnecting, and
     * rejects every call not yet answered with code `"closed"`.
     */
    close(): void;
    /** Snorky 0.1's name for {@link close}. */
    disconnect(): void;
    private setState;
    private openSocket;
    private createSocket;
    private handleOpen;
    /** The connection closed or could not open; `retry: false` when trying again cannot help. */
    private handleClose;
    private send;
    private enqueue;
    private handleFrame;
    private failAll;
    private serviceList;
    private log;
}
