/**
 * DataSync: exchange subscription tokens for a stream of deltas.
 *
 * The client opts in to offsets (docs/protocol.md, "Offsets"): every delta
 * names the subscription it belongs to and carries its offset, so each
 * subscription's deltas can go to its own collection (pass a target to
 * {@link DataSync.acquireSubscription}), and the client keeps the offset of the
 * last delta it applied per subscription. After a reconnection, to the same
 * server or another node, every token is acquired again with that offset: the
 * server sends exactly the deltas that followed it, in order, none twice, even
 * when the connection was cut with deltas in flight. When a subscription cannot
 * be resumed (the deltas that followed are no longer retained, the resume
 * timeout passed, the server lost it) `resyncNeeded` tells the application to
 * fetch its data and a new token. When the server cannot serve the acquisition
 * for now ("Service unavailable": several nodes whose Redis is down), the
 * client keeps the subscription and tries again later, with backoff.
 *
 * Set {@link DataSync.offsets} to `false` to speak Snorky 0.1's protocol (a 0.1
 * server): the server then resumes after the last delta it wrote, and a close
 * with 1008 (deltas queued for us were lost) resyncs every subscription.
 */

import { ErrorCode, lostMessages } from "../codes.js";
import { SnorkyError } from "../errors.js";
import { ArrayCollection, CollectionDeltaProcessor, SingleItemCollection } from "../collections.js";
import { Signal } from "../signal.js";
import type { AcquireParams, AcquireResult, Delta, PushMessage, SubscriptionDelta } from "../types.js";
import { afterSettled, RPCService } from "./base.js";

/** The error text of a server that cannot serve a request for now (its broker is down). */
const UNAVAILABLE = "Service unavailable";
/** The first pause before trying an acquisition the server could not serve again, and the longest. */
const RETRY_MIN = 1000;
const RETRY_MAX = 30_000;

/** Where a subscription's deltas go: a delta processor (its collections), or a function. */
export type DeltaTarget = CollectionDeltaProcessor | ((delta: Delta, subscription: string) => void);

/** What the client keeps of a subscription it acquired (or is acquiring). */
interface Held {
  /** Whether it was acquired with offsets. */
  offsets: boolean;
  /** The offset of the last delta applied, or of the acquire's reply when none was. */
  offset: string | null;
  /** Whether a delta arrived since the last acquire was sent (its offset is newer than the reply's). */
  deltaSinceAcquire: boolean;
  target: DeltaTarget | undefined;
}

export class DataSync extends RPCService {
  static readonly CollectionDeltaProcessor = CollectionDeltaProcessor;
  static readonly ArrayCollection = ArrayCollection;
  static readonly SingleItemCollection = SingleItemCollection;

  /** Whether acquisitions opt in to offsets. Default `true`; `false` for a Snorky 0.1 server. */
  offsets = true;

  /** Every delta, in the order the server sent them (of every subscription). */
  readonly deltaReceived = new Signal<Delta>();
  /** Every delta of an opted-in subscription, with its subscription and offset, after it was applied to the subscription's target. */
  readonly subscriptionDelta = new Signal<SubscriptionDelta>();
  /** A subscription was lost: refetch the data and acquire the new token. Carries the old token. */
  readonly resyncNeeded = new Signal<string>();
  /** Called with every delta, after `deltaReceived` (Snorky 0.1 style). */
  onDelta: ((delta: Delta) => void) | null = null;

  private readonly held = new Map<string, Held>();
  /** The tokens acquired (in acquisition order), which are acquired again after a reconnection. */
  private readonly tokens = new Set<string>();
  /** Acquisitions to try again, by token (the server answered "Service unavailable"). */
  private readonly retries = new Map<string, ReturnType<typeof setTimeout>>();

  /**
   * Starts receiving the deltas of a subscription; `target` receives this
   * subscription's deltas (only with offsets: deltas of 0.1's protocol do not
   * say which subscription they belong to). Resolves with the server's data:
   * `{offset}` when opted in, `null` otherwise. Rejects with
   * `"No such subscription"`, `"Offset not retained"`, `"token must be string"`,
   * and with a `TypeError` when `params` is not an object (`{token}`).
   */
  acquireSubscription(params: AcquireParams, target?: DeltaTarget): Promise<AcquireResult | null> {
    if (typeof params !== "object" || params === null) {
      return Promise.reject(
        new TypeError('acquireSubscription takes {token: "..."}, the subscription token the web application handed out'),
      );
    }
    const sent: AcquireParams = this.offsets && !("offsets" in params) ? { ...params, offsets: true } : params;
    const token = params.token;
    const previous = this.held.get(token);
    const held: Held = { offsets: sent.offsets === true, offset: null, deltaSinceAcquire: false, target };
    this.held.set(token, held);
    return this.call<AcquireResult | null>("acquireSubscription", sent).then(
      (data) => {
        this.acquired(token, held, data);
        this.tokens.add(token);
        return data;
      },
      (error: unknown) => {
        // Refused: forget it, unless this was a second acquire of a token already held.
        if (this.held.get(token) === held) {
          if (previous) this.held.set(token, previous);
          else this.held.delete(token);
        }
        throw error;
      },
    );
  }

  /** Ends a subscription. Rejects with `"No such subscription"`. */
  cancelSubscription(params: { token: string }): Promise<null> {
    return afterSettled(this.call<null>("cancelSubscription", params), () => {
      this.forget(params.token);
    });
  }

  /** The tokens this client holds (and acquires again after a reconnection). */
  get subscriptions(): string[] {
    return [...this.tokens];
  }

  /** The offset of the last delta applied for `token` (or of its acquisition), if known. */
  offsetOf(token: string): string | null {
    return this.held.get(token)?.offset ?? null;
  }

  protected override onNotification(message: PushMessage): void {
    if (message.type !== "delta") return;
    const delta = message["delta"] as Delta;
    const subscription = message["subscription"];
    const offset = message["offset"];
    if (typeof subscription === "string" && typeof offset === "string") {
      const held = this.held.get(subscription);
      if (held) {
        held.offset = offset;
        held.deltaSinceAcquire = true;
        this.apply(held.target, delta, subscription);
      }
    }
    this.deltaReceived.dispatch(delta);
    if (this.onDelta) {
      try {
        this.onDelta(delta);
      } catch (error) {
        console.error("Snorky: onDelta threw", error);
      }
    }
    if (typeof subscription === "string" && typeof offset === "string") {
      this.subscriptionDelta.dispatch({ subscription, delta, offset });
    }
  }

  protected override restore(): void {
    for (const timer of this.retries.values()) clearTimeout(timer);
    this.retries.clear();
    for (const token of this.tokens) this.resume(token, 0);
  }

  /**
   * Acquires `token` again, after its last offset: as part of the restoration
   * after a reconnection (`attempt` 0), or as a later attempt when the server
   * could not serve the previous one.
   */
  private resume(token: string, attempt: number): void {
    const held = this.held.get(token);
    if (!held) return;
    const params: AcquireParams = held.offsets ? { token, offsets: true } : { token };
    if (held.offsets && held.offset !== null) params.after = held.offset;
    held.deltaSinceAcquire = false;
    const refused = (error: SnorkyError) => {
      if (this.held.get(token) !== held) return;
      if (error.message === UNAVAILABLE) this.retryLater(token, attempt + 1);
      else this.resync(token);
    };
    const sent =
      attempt === 0
        ? this.restoreCall<AcquireResult | null>("acquireSubscription", params, refused)
        : this.call<AcquireResult | null>("acquireSubscription", params).catch((error: unknown) => {
            // Lost to a disconnection: the restoration after the reconnection sends it again.
            if (error instanceof SnorkyError && error.code === ErrorCode.server) refused(error);
            return undefined;
          });
    void sent.then((data) => {
      if (data !== undefined && this.held.get(token) === held) this.acquired(token, held, data);
    });
  }

  /** Tries `token` again after a pause that doubles with each attempt (1 s to 30 s). */
  private retryLater(token: string, attempt: number): void {
    const delay = Math.min(RETRY_MIN * 2 ** (attempt - 1), RETRY_MAX);
    clearTimeout(this.retries.get(token));
    this.retries.set(
      token,
      setTimeout(() => {
        this.retries.delete(token);
        // Disconnected meanwhile: the next restoration sends it.
        if (this.snorky.isConnected) this.resume(token, attempt);
      }, delay),
    );
  }

  protected override connectionLost(code: number): void {
    if (!lostMessages(code)) return;
    // Deltas queued for us were dropped. Subscriptions with an offset resume exactly after
    // it (the server says if it cannot); the others would resume with a gap.
    for (const token of this.tokens) {
      const held = this.held.get(token);
      if (!held?.offsets || held.offset === null) this.resync(token);
    }
  }

  /** Records what an acquire's reply says, unless a delta already told more. */
  private acquired(token: string, held: Held, data: AcquireResult | null): void {
    if (held.deltaSinceAcquire || data === null || typeof data !== "object") return;
    if (typeof data.offset === "string") held.offset = data.offset;
    else console.error(`Snorky: the acquire of ${token} answered no offset`, data);
  }

  private apply(target: DeltaTarget | undefined, delta: Delta, subscription: string): void {
    if (!target) return;
    try {
      if (typeof target === "function") target(delta, subscription);
      else target.processDelta(delta);
    } catch (error) {
      console.error("Snorky: applying a delta failed", error);
    }
  }

  private forget(token: string): void {
    this.tokens.delete(token);
    this.held.delete(token);
    clearTimeout(this.retries.get(token));
    this.retries.delete(token);
  }

  private resync(token: string): void {
    this.forget(token);
    this.resyncNeeded.dispatch(token);
  }
}
