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
import { ArrayCollection, CollectionDeltaProcessor, SingleItemCollection } from "../collections.js";
import { Signal } from "../signal.js";
import type { AcquireParams, AcquireResult, Delta, PushMessage, SubscriptionDelta } from "../types.js";
import { RPCService } from "./base.js";
/** Where a subscription's deltas go: a delta processor (its collections), or a function. */
export type DeltaTarget = CollectionDeltaProcessor | ((delta: Delta, subscription: string) => void);
export declare class DataSync extends RPCService {
    static readonly CollectionDeltaProcessor: typeof CollectionDeltaProcessor;
    static readonly ArrayCollection: typeof ArrayCollection;
    static readonly SingleItemCollection: typeof SingleItemCollection;
    /** Whether acquisitions opt in to offsets. Default `true`; `false` for a Snorky 0.1 server. */
    offsets: boolean;
    /** Every delta, in the order the server sent them (of every subscription). */
    readonly deltaReceived: Signal<Delta>;
    /** Every delta of an opted-in subscription, with its subscription and offset, after it was applied to the subscription's target. */
    readonly subscriptionDelta: Signal<SubscriptionDelta<any>>;
    /** A subscription was lost: refetch the data and acquire the new token. Carries the old token. */
    readonly resyncNeeded: Signal<string>;
    /** Called with every delta, after `deltaReceived` (Snorky 0.1 style). */
    onDelta: ((delta: Delta) => void) | null;
    private readonly held;
    /** The tokens acquired (in acquisition order), which are acquired again after a reconnection. */
    private readonly tokens;
    /** Acquisitions to try again, by token (the server answered "Service unavailable"). */
    private readonly retries;
    /**
     * Starts receiving the deltas of a subscription; `target` receives this
     * subscription's deltas (only with offsets: deltas of 0.1's protocol do not
     * say which subscription they belong to). Resolves with the server's data:
     * `{offset}` when opted in, `null` otherwise. Rejects with
     * `"No such subscription"`, `"Offset not retained"`, `"token must be string"`,
     * and with a `TypeError` when `params` is not an object (`{token}`).
     */
    acquireSubscription(params: AcquireParams, target?: DeltaTarget): Promise<AcquireResult | null>;
    /** Ends a subscription. Rejects with `"No such subscription"`. */
    cancelSubscription(params: {
        token: string;
    }): Promise<null>;
    /** The tokens this client holds (and acquires again after a reconnection). */
    get subscriptions(): string[];
    /** The offset of the last delta applied for `token` (or of its acquisition), if known. */
    offsetOf(token: string): string | null;
    protected onNotification(message: PushMessage): void;
    protected restore(): void;
    /**
     * Acquires `token` again, after its last offset: as part of the restoration
     * after a reconnection (`attempt` 0), or as a later attempt when the server
     * could not serve the previous one.
     */
    private resume;
    /** Tries `token` again after a pause that doubles with each attempt (1 s to 30 s). */
    private retryLater;
    protected connectionLost(code: number): void;
    /** Records what an acquire's reply says, unless a delta already told more. */
    private acquired;
    private apply;
    private forget;
    private resync;
}
