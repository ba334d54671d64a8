/**
 * PubSub: subscribe to channels, publish to them. Subscriptions are restored
 * after a reconnection; messages published while disconnected are not
 * replayed (PubSub is fire-and-forget; use DataSync for data that must arrive).
 */
import { Signal } from "../signal.js";
import type { PubSubMessage, PushMessage } from "../types.js";
import { RPCService } from "./base.js";
export declare class PubSub extends RPCService {
    /** A message published to a channel this connection is subscribed to. */
    readonly messagePublished: Signal<PubSubMessage>;
    private readonly channels;
    /** Subscribes to `channel` (any JSON value). Rejects with `"Already subscribed"`. */
    subscribe(params: {
        channel: unknown;
    }): Promise<null>;
    /** Unsubscribes from `channel`. Rejects with `"Not subscribed"`. */
    unsubscribe(params: {
        channel: unknown;
    }): Promise<null>;
    /** Publishes `message` to every subscriber of `channel`. Rejects with `"Not authorized"`. */
    publish(params: {
        channel: unknown;
        message: unknown;
    }): Promise<null>;
    /** The channels this client is subscribed to (and restores after a reconnection). */
    get subscriptions(): unknown[];
    protected onNotification(message: PushMessage): void;
    protected restore(): void;
}
