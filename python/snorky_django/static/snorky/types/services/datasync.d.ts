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
import { ArrayCollection, CollectionDeltaProcessor, SingleItemCollection } from "../collections.js";
import { Signal } from "../signal.js";
import type { Delta, PushMessage } from "../types.js";
import { RPCService } from "./base.js";
export declare class DataSync extends RPCService {
    static readonly CollectionDeltaProcessor: typeof CollectionDeltaProcessor;
    static readonly ArrayCollection: typeof ArrayCollection;
    static readonly SingleItemCollection: typeof SingleItemCollection;
    /** Every delta, in the order the server sent them. */
    readonly deltaReceived: Signal<Delta>;
    /** A subscription was lost: refetch the data and acquire the new token. Carries the old token. */
    readonly resyncNeeded: Signal<string>;
    /** Called with every delta, after `deltaReceived` (Snorky 0.1 style). */
    onDelta: ((delta: Delta) => void) | null;
    private readonly tokens;
    /** Starts receiving the deltas of a subscription. Rejects with `"No such subscription"`, `"token must be string"`. */
    acquireSubscription(params: {
        token: string;
    }): Promise<null>;
    /** Ends a subscription. Rejects with `"No such subscription"`. */
    cancelSubscription(params: {
        token: string;
    }): Promise<null>;
    /** The tokens this client holds (and acquires again after a reconnection). */
    get subscriptions(): string[];
    protected onNotification(message: PushMessage): void;
    protected restore(): void;
    protected connectionLost(code: number): void;
    private resync;
}
