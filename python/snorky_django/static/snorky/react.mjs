// src/react.ts
import { useEffect, useState } from "react";
import { ArrayCollection, CollectionDeltaProcessor, fetchWithSubscription } from "./snorky.mjs";
function useSnorkyCollection(snorky, url, model, options = {}) {
  const [state, setState] = useState({ items: [], status: "loading", error: null });
  const serviceName = options.service ?? "datasync";
  useEffect(() => {
    const found = snorky.services[serviceName];
    if (!found) {
      setState({ items: [], status: "error", error: new Error(`the Snorky client has no service "${serviceName}"`) });
      return void 0;
    }
    const datasync = found;
    const { init, transformItem, itemsAreEqual } = options;
    const processor = new CollectionDeltaProcessor(
      {},
      itemsAreEqual ? { itemsAreEqual: (item, data) => itemsAreEqual(item, data) } : {}
    );
    let active = true;
    let token = null;
    const release = (lost) => {
      if (lost) datasync.cancelSubscription({ token: lost }).catch(() => {
      });
    };
    async function load() {
      setState((previous) => ({ ...previous, status: "loading", error: null }));
      try {
        const { data, subscriptionToken } = await fetchWithSubscription(url, init);
        if (!active) return;
        const rows = transformItem ? data.map(transformItem) : data;
        const collection = new ArrayCollection(rows, transformItem ? { transformItem } : {});
        collection.changed.add(() => {
          if (active) setState((previous) => ({ ...previous, items: [...collection.array] }));
        });
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
    const offDelta = datasync.offsets ? () => {
    } : datasync.deltaReceived.add((delta) => {
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
  }, [snorky, url, model, serviceName]);
  return state;
}
export {
  useSnorkyCollection
};
//# sourceMappingURL=react.mjs.map
