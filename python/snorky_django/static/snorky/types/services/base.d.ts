/**
 * What every service facade shares: RPC calls through the client, pushed
 * messages, and the hooks the client calls around a reconnection.
 */
import type { Snorky } from "../client.js";
import { SnorkyError } from "../errors.js";
import { Signal } from "../signal.js";
import type { PushMessage } from "../types.js";
/** A service class as passed in the services map of `new Snorky(...)`. */
export type ServiceClass<S extends RPCService = RPCService> = new (name: string, snorky: Snorky<any>) => S;
/**
 * Base class of the service facades, and of your own: a Python `RPCService`
 * on the server is reached with `call(command, params)`, or with methods added
 * by {@link RPCService.addRPCMethods}.
 *
 * The service's name is the key it was given in the services map, which is
 * the name it is registered under on the server.
 */
export declare class RPCService {
    /** The service name on the wire. */
    readonly name: string;
    /** The client this service belongs to. */
    readonly snorky: Snorky<any>;
    /** Every message the service pushes without a request, before it is handled. */
    readonly notificationReceived: Signal<PushMessage>;
    constructor(name: string, snorky: Snorky<any>);
    /**
     * Sends a command and resolves with the server's `data`, or rejects with a
     * {@link SnorkyError} whose message is the server's error text.
     */
    call<T = unknown>(command: string, params?: object): Promise<T>;
    /** Snorky 0.1's name for {@link call}. */
    rpcCall<T = unknown>(command: string, params?: object): Promise<T>;
    /** Handles a pushed message; subclasses override it and ignore types they do not know. */
    protected onNotification(_message: PushMessage): void;
    /**
     * Called by the client right after a reconnection, before queued calls are
     * sent: re-issue what makes the server's state for this connection match the
     * client's (subscriptions, memberships...). Use {@link restoreCall}.
     */
    protected restore(): void;
    /** Called by the client when the connection closes, with the close code. */
    protected connectionLost(_code: number): void;
    /**
     * Sends a call that restores state after a reconnection. The client waits
     * for these before dispatching `restored`, and reports server refusals on
     * `restoreFailed`. The promise never rejects: it resolves with the data, or
     * with `undefined` after calling `onRefused` with the server's error.
     * A call lost to another disconnection is neither: it will be retried by the
     * next restore.
     */
    protected restoreCall<T = unknown>(command: string, params: object, onRefused: (error: SnorkyError) => void): Promise<T | undefined>;
    /**
     * Adds one method per command, each taking a params object, as Snorky 0.1
     * did: `MyService.addRPCMethods(["vote"])` then `service.vote({option: 2})`.
     */
    static addRPCMethods(this: ServiceClass, commands: string[]): void;
}
/** Runs `effect` once `promise` settles, either way, and passes the outcome on. */
export declare function afterSettled<T>(promise: Promise<T>, effect: () => void): Promise<T>;
/**
 * A string that identifies a JSON value by content: object keys are sorted,
 * so `{a: 1, b: 2}` and `{b: 2, a: 1}` name the same channel, as on the server.
 */
export declare function jsonKey(value: unknown): string;
