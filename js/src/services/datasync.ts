/**
 * DataSync: exchange subscription tokens for a stream of deltas.
 *
 * After a reconnection every token is acquired again; the server resumes the
 * subscription and delivers the deltas missed meanwhile, in order, none twice
 * (docs/protocol.md, "Subscription life cycle"). When a token cannot be acquired
 * again (the resume timeout passed, the buffer overflowed, the server
 * restarted) `resyncNeeded` tells the application to fetch its data and a new
 * token. It is also dispatched, for every token, when the server closed the
 * connection because we read too slowly (close code 1008): deltas queued for
 * us were lost, so resuming would leave a gap.
 */

import { lostMessages } from "../codes.js";
import { ArrayCollection, CollectionDeltaProcessor, SingleItemCollection } from "../collections.js";
import { Signal } from "../signal.js";
import type { Delta, PushMessage } from "../types.js";
import { afterSettled, RPCService } from "./base.js";

export class DataSync extends RPCService {
  static readonly CollectionDeltaProcessor = CollectionDeltaProcessor;
  static readonly ArrayCollection = ArrayCollection;
  static readonly SingleItemCollection = SingleItemCollection;

  /** Every delta, in the order the server sent them. */
  readonly deltaReceived = new Signal<Delta>();
  /** A subscription was lost: refetch the data and acquire the new token. Carries the old token. */
  readonly resyncNeeded = new Signal<string>();
  /** Called with every delta, after `deltaReceived` (Snorky 0.1 style). */
  onDelta: ((delta: Delta) => void) | null = null;

  private readonly tokens = new Set<string>();

  /** Starts receiving the deltas of a subscription. Rejects with `"No such subscription"`, `"token must be string"`. */
  acquireSubscription(params: { token: string }): Promise<null> {
    return this.call<null>("acquireSubscription", params).then((data) => {
      this.tokens.add(params.token);
      return data;
    });
  }

  /** Ends a subscription. Rejects with `"No such subscription"`. */
  cancelSubscription(params: { token: string }): Promise<null> {
    return afterSettled(this.call<null>("cancelSubscription", params), () => {
      this.tokens.delete(params.token);
    });
  }

  /** The tokens this client holds (and acquires again after a reconnection). */
  get subscriptions(): string[] {
    return [...this.tokens];
  }

  protected override onNotification(message: PushMessage): void {
    if (message.type !== "delta") return;
    const delta = message["delta"] as Delta;
    this.deltaReceived.dispatch(delta);
    if (this.onDelta) {
      try {
        this.onDelta(delta);
      } catch (error) {
        console.error("Snorky: onDelta threw", error);
      }
    }
  }

  protected override restore(): void {
    for (const token of this.tokens) {
      void this.restoreCall("acquireSubscription", { token }, () => this.resync(token));
    }
  }

  protected override connectionLost(code: number): void {
    if (lostMessages(code)) {
      for (const token of this.tokens) this.resync(token);
    }
  }

  private resync(token: string): void {
    this.tokens.delete(token);
    this.resyncNeeded.dispatch(token);
  }
}
