/**
 * The one event type of the client: a list of listeners for one kind of event.
 *
 * Every event Snorky emits (a message published, a delta received, the
 * connection state changing) is a `Signal` property on the object that emits
 * it, as in Snorky 0.1: `pubsub.messagePublished.add(fn)`.
 */
/** A function that receives a signal's value. */
export type Listener<T> = (value: T) => void;
export declare class Signal<T = void> {
    private bindings;
    /**
     * Calls `listener` (with `this` set to `context`, if given) on every
     * dispatch until it is removed. Adding the same listener and context twice
     * has no effect. Returns a function that removes the listener, handy in a
     * React effect's cleanup.
     */
    add(listener: Listener<T>, context?: unknown): () => void;
    /** Like {@link add}, but the listener is removed after its first call. */
    addOnce(listener: Listener<T>, context?: unknown): () => void;
    /** Removes a listener added with the same function and context. */
    remove(listener: Listener<T>, context?: unknown): void;
    /** Removes every listener. */
    removeAll(): void;
    /** How many listeners are attached. */
    get listenerCount(): number;
    /**
     * Calls every listener with `value`, in the order they were added.
     *
     * A listener that throws does not stop the others, nor the client that is
     * dispatching: the error is reported with `console.error`. Listeners added
     * during a dispatch are first called on the next one.
     */
    dispatch(value: T): void;
    private bind;
}
