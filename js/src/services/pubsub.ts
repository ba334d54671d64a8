/**
 * PubSub: subscribe to channels, publish to them. Subscriptions are restored
 * after a reconnection; messages published while disconnected are not
 * replayed (PubSub is fire-and-forget; use DataSync for data that must arrive).
 */

import { Signal } from "../signal.js";
import type { PubSubMessage, PushMessage } from "../types.js";
import { afterSettled, jsonKey, RPCService } from "./base.js";

export class PubSub extends RPCService {
  /** A message published to a channel this connection is subscribed to. */
  readonly messagePublished = new Signal<PubSubMessage>();

  private readonly channels = new Map<string, unknown>();

  /** Subscribes to `channel` (any JSON value). Rejects with `"Already subscribed"`. */
  subscribe(params: { channel: unknown }): Promise<null> {
    return this.call<null>("subscribe", params).then((data) => {
      this.channels.set(jsonKey(params.channel), params.channel);
      return data;
    });
  }

  /** Unsubscribes from `channel`. Rejects with `"Not subscribed"`. */
  unsubscribe(params: { channel: unknown }): Promise<null> {
    // Whatever the answer, the channel is not to be restored any more.
    return afterSettled(this.call<null>("unsubscribe", params), () => {
      this.channels.delete(jsonKey(params.channel));
    });
  }

  /** Publishes `message` to every subscriber of `channel`. Rejects with `"Not authorized"`. */
  publish(params: { channel: unknown; message: unknown }): Promise<null> {
    return this.call<null>("publish", params);
  }

  /** The channels this client is subscribed to (and restores after a reconnection). */
  get subscriptions(): unknown[] {
    return [...this.channels.values()];
  }

  protected override onNotification(message: PushMessage): void {
    if (message.type === "message") this.messagePublished.dispatch(message as unknown as PubSubMessage);
  }

  protected override restore(): void {
    for (const [key, channel] of this.channels) {
      void this.restoreCall("subscribe", { channel }, () => this.channels.delete(key));
    }
  }
}
