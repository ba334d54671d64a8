/**
 * DataSync helpers: apply deltas to the application's own data.
 *
 * A {@link CollectionDeltaProcessor} routes each delta to the collection
 * registered for its model (or for its model and tag) and applies it there.
 * Collections wrap what the application renders: an array
 * ({@link ArrayCollection}) or a single object ({@link SingleItemCollection}).
 */
import { Signal } from "./signal.js";
import type { Delta } from "./types.js";
/** Whether a collection's `item` is the object described by `data` (delta data). */
export type ItemsAreEqual = (item: any, data: any) => boolean;
/** What a delta processor needs of a collection. Implement it for your own containers. */
export interface Collection {
    /** An object entered the collection. */
    insert(data: unknown, itemsAreEqual: ItemsAreEqual): void;
    /** An object changed: find the item equal to `oldData`, replace it with `newData`. */
    update(oldData: unknown, newData: unknown, itemsAreEqual: ItemsAreEqual): void;
    /** An object left the collection. */
    remove(data: unknown, itemsAreEqual: ItemsAreEqual): void;
}
/** Collections by model, or by model then tag. */
export type CollectionMap = Record<string, Collection | Record<string, Collection>>;
export interface DeltaProcessorOptions {
    /** Replaces {@link CollectionDeltaProcessor.itemsAreEqual}. */
    itemsAreEqual?: (item: any, data: any, delta: Delta) => boolean;
}
/**
 * Applies deltas to collections.
 *
 * ```js
 * processor.collections["Task"] = new ArrayCollection(tasks);          // by model
 * processor.collections["Player"] = {red: redTeam, blue: blueTeam};    // by model and tag
 * ```
 *
 * Tags are not on the wire: set `delta.tag` (or pass a tag to
 * {@link processDelta}) to say which view of the model a delta is for.
 * Deltas for models (or tags) with no collection are ignored.
 */
export declare class CollectionDeltaProcessor {
    collections: CollectionMap;
    constructor(collections?: CollectionMap, options?: DeltaProcessorOptions);
    /**
     * Whether a collection item is the object a delta describes. By default,
     * items with the same `id`. Override it (subclass, assignment or the
     * `itemsAreEqual` option) for other keys; `item` is what the collection
     * holds (after `transformItem`), `data` is the delta's.
     */
    itemsAreEqual(item: any, data: any, _delta: Delta): boolean;
    /**
     * Applies `delta` to the collection registered for its model (and `tag`,
     * which defaults to `delta.tag`). Returns whether a collection took it.
     */
    processDelta(delta: Delta, tag?: string | undefined): boolean;
}
export interface ArrayCollectionOptions<T> {
    /** Turns delta data into what the array holds (a model instance, say). Default: identity. */
    transformItem?: (data: any) => T;
}
/**
 * An array kept in step with deltas, changed in place (so frameworks that
 * watch the array see the change). `changed` fires after every change; React
 * users copy the array there (see the README).
 *
 * An insert for an object already present replaces it, so a delta that races
 * with the initial fetch does not duplicate an item.
 */
export declare class ArrayCollection<T = any> implements Collection {
    readonly array: T[];
    readonly transformItem: (data: any) => T;
    /** Dispatched after each insert, update or removal. */
    readonly changed: Signal<void>;
    constructor(array?: T[], options?: ArrayCollectionOptions<T>);
    insert(data: unknown, itemsAreEqual: ItemsAreEqual): void;
    update(oldData: unknown, newData: unknown, itemsAreEqual: ItemsAreEqual): void;
    remove(data: unknown, itemsAreEqual: ItemsAreEqual): void;
}
/**
 * One object, read and written through your handlers (Snorky 0.1's
 * signature): `new SingleItemCollection(() => task, t => { task = t }, () => { task = null })`.
 *
 * An insert sets the object through `updateHandler` (it entered the view);
 * updates and removals apply when the current object equals the delta's.
 */
export declare class SingleItemCollection<T = any> implements Collection {
    readonly readHandler: () => T | null | undefined;
    readonly updateHandler: (data: T) => void;
    readonly removeHandler: () => void;
    constructor(readHandler: () => T | null | undefined, updateHandler: (data: T) => void, removeHandler?: () => void);
    insert(data: unknown): void;
    update(oldData: unknown, newData: unknown, itemsAreEqual: ItemsAreEqual): void;
    remove(data: unknown, itemsAreEqual: ItemsAreEqual): void;
}
