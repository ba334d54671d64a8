/**
 * What every service facade shares: RPC calls through the client, pushed
 * messages, and the hooks the client calls around a reconnection.
 */

import type { Snorky } from "../client.js";
import { ErrorCode } from "../codes.js";
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
export class RPCService {
  /** The service name on the wire. */
  readonly name: string;
  /** The client this service belongs to. */
  readonly snorky: Snorky<any>;
  /** Every message the service pushes without a request, before it is handled. */
  readonly notificationReceived = new Signal<PushMessage>();

  constructor(name: string, snorky: Snorky<any>) {
    if (typeof name !== "string" || !snorky) throw new TypeError("Bad arguments for service constructor");
    this.name = name;
    this.snorky = snorky;
  }

  /**
   * Sends a command and resolves with the server's `data`, or rejects with a
   * {@link SnorkyError} whose message is the server's error text.
   */
  call<T = unknown>(command: string, params: object = {}): Promise<T> {
    return this.snorky._call(this.name, command, params) as Promise<T>;
  }

  /** Snorky 0.1's name for {@link call}. */
  rpcCall<T = unknown>(command: string, params: object = {}): Promise<T> {
    return this.call<T>(command, params);
  }

  /** Handles a pushed message; subclasses override it and ignore types they do not know. */
  protected onNotification(_message: PushMessage): void {
    // A plain RPC service has no pushed messages of its own.
  }

  /**
   * Called by the client right after a reconnection, before queued calls are
   * sent: re-issue what makes the server's state for this connection match the
   * client's (subscriptions, memberships...). Use {@link restoreCall}.
   */
  protected restore(): void {
    // Nothing to restore by default.
  }

  /** Called by the client when the connection closes, with the close code. */
  protected connectionLost(_code: number): void {
    // Nothing to forget by default.
  }

  /**
   * Sends a call that restores state after a reconnection. The client waits
   * for these before dispatching `restored`, and reports server refusals on
   * `restoreFailed`. The promise never rejects: it resolves with the data, or
   * with `undefined` after calling `onRefused` with the server's error.
   * A call lost to another disconnection is neither: it will be retried by the
   * next restore.
   */
  protected restoreCall<T = unknown>(
    command: string,
    params: object,
    onRefused: (error: SnorkyError) => void,
  ): Promise<T | undefined> {
    return this.snorky._call(this.name, command, params, true).then(
      (data) => data as T,
      (error: unknown) => {
        if (error instanceof SnorkyError && error.code === ErrorCode.server) onRefused(error);
        return undefined;
      },
    );
  }

  /** @internal Entry point of the client for a pushed (non-reply) message. */
  _handleMessage(message: PushMessage): void {
    this.notificationReceived.dispatch(message);
    this.onNotification(message);
  }

  /** @internal */
  _restore(): void {
    this.restore();
  }

  /** @internal */
  _connectionLost(code: number): void {
    this.connectionLost(code);
  }

  /**
   * Adds one method per command, each taking a params object, as Snorky 0.1
   * did: `MyService.addRPCMethods(["vote"])` then `service.vote({option: 2})`.
   */
  static addRPCMethods(this: ServiceClass, commands: string[]): void {
    const proto = this.prototype as unknown as Record<string, unknown>;
    for (const command of commands) {
      if (command in proto) throw new Error(`Method "${command}" already exists; refusing to overwrite it`);
      proto[command] = function (this: RPCService, params?: object) {
        return this.call(command, params ?? {});
      };
    }
  }
}

/** Runs `effect` once `promise` settles, either way, and passes the outcome on. */
export function afterSettled<T>(promise: Promise<T>, effect: () => void): Promise<T> {
  return promise.then(
    (value) => {
      effect();
      return value;
    },
    (error: unknown) => {
      effect();
      throw error;
    },
  );
}

/**
 * A string that identifies a JSON value by content: object keys are sorted,
 * so `{a: 1, b: 2}` and `{b: 2, a: 1}` name the same channel, as on the server.
 */
export function jsonKey(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(jsonKey).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const object = value as Record<string, unknown>;
    const fields = Object.keys(object)
      .filter((key) => object[key] !== undefined)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${jsonKey(object[key])}`);
    return `{${fields.join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}
