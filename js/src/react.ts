/**
 * React bindings: `useSnorkyCollection`, a list from your API kept live by
 * DataSync. A separate entry point (`snorky/react`) so that the main bundle
 * stays free of React; React is a peer dependency.
 */

import { useEffect, useState } from "react";
// From the main entry, which the build keeps external (`./snorky.mjs`): one copy of the client.
import { ArrayCollection, CollectionDeltaProcessor, type DataSync, fetchWithSubscription, type Snorky } from "./index.js";

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
export function useSnorkyCollection<T = any>(
  snorky: Snorky<any>,
  url: string,
  model: string,
  options: UseSnorkyCollectionOptions<T> = {},
): SnorkyCollection<T> {
  const [state, setState] = useState<SnorkyCollection<T>>({ items: [], status: "loading", error: null });
  const serviceName = options.service ?? "datasync";

  useEffect(() => {
    const found = (snorky.services as Record<string, DataSync | undefined>)[serviceName];
    if (!found) {
      setState({ items: [], status: "error", error: new Error(`the Snorky client has no service "${serviceName}"`) });
      return undefined;
    }
    const datasync = found;
    const { init, transformItem, itemsAreEqual } = options;
    const processor = new CollectionDeltaProcessor(
      {},
      itemsAreEqual ? { itemsAreEqual: (item: T, data: any) => itemsAreEqual(item, data) } : {},
    );
    let active = true;
    let token: string | null = null;

    const release = (lost: string | null) => {
      if (lost) datasync.cancelSubscription({ token: lost }).catch(() => {});
    };

    async function load(): Promise<void> {
      setState((previous) => ({ ...previous, status: "loading", error: null }));
      try {
        const { data, subscriptionToken } = await fetchWithSubscription<unknown[]>(url, init);
        if (!active) return;
        const rows = transformItem ? data.map(transformItem) : (data as T[]);
        const collection = new ArrayCollection<T>(rows, transformItem ? { transformItem } : {});
        collection.changed.add(() => {
          if (active) setState((previous) => ({ ...previous, items: [...collection.array] }));
        });
        // Registered before the subscription is acquired: the server delivers the deltas
        // published since the token was issued on acquisition, and they must land here.
        processor.collections[model] = collection;
        token = subscriptionToken;
        setState({ items: [...collection.array], status: "loading", error: null });
        await datasync.acquireSubscription({ token: subscriptionToken }, processor);
        if (!active) {
          release(subscriptionToken);
          return;
        }
        setState((previous) => ({ ...previous, status: "live" }));
      } catch (error) {
        if (active) setState((previous) => ({ ...previous, status: "error", error }));
      }
    }

    // Opted in, the subscription's deltas reach `processor` directly; without offsets (a 0.1
    // server) they cannot be told apart, so every delta of the model is applied.
    const offDelta = datasync.offsets
      ? () => {}
      : datasync.deltaReceived.add((delta) => {
          processor.processDelta(delta);
        });
    const offResync = datasync.resyncNeeded.add((lost) => {
      if (active && lost === token) void load();
    });
    void load();
    return () => {
      active = false;
      offDelta();
      offResync();
      release(token);
    };
    // `options` is read when the effect starts (documented): a new object on every render must
    // not refetch.
  }, [snorky, url, model, serviceName]);

  return state;
}
