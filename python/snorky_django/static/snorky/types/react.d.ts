/**
 * React bindings: `useSnorkyCollection`, a list from your API kept live by
 * DataSync. A separate entry point (`snorky/react`) so that the main bundle
 * stays free of React; React is a peer dependency.
 */
import { type Snorky } from "./index.js";
/** Where the hook stands: loading the data, following it live, or failed (see `error`). */
export type CollectionStatus = "loading" | "live" | "error";
/** What {@link useSnorkyCollection} returns. */
export interface SnorkyCollection<T> {
    /** The rows: the response's, then changed by every delta (a new array each time). */
    items: T[];
    status: CollectionStatus;
    /** Why `status` is `"error"`: a failed fetch (`SnorkyError` code `"http"`) or a refused subscription. */
    error: unknown;
}
export interface UseSnorkyCollectionOptions<T> {
    /** The name of the DataSync service in the client's service map. Default `"datasync"`. */
    service?: string;
    /** Options of the `fetch` call (credentials, headers). Read when the effect starts. */
    init?: RequestInit;
    /** Turns each row (of the response and of deltas) into what `items` holds. Read when the effect starts. */
    transformItem?: (data: any) => T;
    /** Whether `item` is the row a delta describes. Default: same `id`. Read when the effect starts. */
    itemsAreEqual?: (item: T, data: any) => boolean;
}
/**
 * The rows of `url` (a subscribable API view answering a JSON array), kept
 * live: fetched with {@link fetchWithSubscription}, its subscription acquired on
 * `snorky`'s DataSync service, and every delta of `model` that this
 * subscription receives applied. When the subscription is lost (a server
 * restart, deltas no longer retained after a long disconnection) the hook
 * fetches again. On unmount, or when `snorky`, `url` or `model` change, the
 * subscription is cancelled.
 *
 * Each hook applies only its own subscription's deltas, so a page may show two
 * views of one model (two hooks, two URLs) side by side. (With
 * `datasync.offsets` turned off, for a Snorky 0.1 server, deltas do not say
 * which subscription they belong to: every hook of the model then sees all of
 * them, so keep one hook per model per client there.)
 */
export declare function useSnorkyCollection<T = any>(snorky: Snorky<any>, url: string, model: string, options?: UseSnorkyCollectionOptions<T>): SnorkyCollection<T>;
