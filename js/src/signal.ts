/**
 * The one event type of the client: a list of listeners for one kind of event.
 *
 * Every event Snorky emits (a message published, a delta received, the
 * connection state changing) is a `Signal` property on the object that emits
 * it, as in Snorky 0.1: `pubsub.messagePublished.add(fn)`.
 */

/** A function that receives a signal's value. */
export type Listener<T> = (value: T) => void;

interface Binding<T> {
  listener: Listener<T>;
  context: unknown;
  once: boolean;
}

export class Signal<T = void> {
  private bindings: Binding<T>[] = [];

  /**
   * Calls `listener` (with `this` set to `context`, if given) on every
   * dispatch until it is removed. Adding the same listener and context twice
   * has no effect. Returns a function that removes the listener, handy in a
   * React effect's cleanup.
   */
  add(listener: Listener<T>, context?: unknown): () => void {
    return this.bind(listener, context, false);
  }

  /** Like {@link add}, but the listener is removed after its first call. */
  addOnce(listener: Listener<T>, context?: unknown): () => void {
    return this.bind(listener, context, true);
  }

  /** Removes a listener added with the same function and context. */
  remove(listener: Listener<T>, context?: unknown): void {
    this.bindings = this.bindings.filter((b) => b.listener !== listener || b.context !== context);
  }

  /** Removes every listener. */
  removeAll(): void {
    this.bindings = [];
  }

  /** How many listeners are attached. */
  get listenerCount(): number {
    return this.bindings.length;
  }

  /**
   * Calls every listener with `value`, in the order they were added.
   *
   * A listener that throws does not stop the others, nor the client that is
   * dispatching: the error is reported with `console.error`. Listeners added
   * during a dispatch are first called on the next one.
   */
  dispatch(value: T): void {
    // Iterate over a snapshot: listeners may add or remove listeners.
    for (const binding of this.bindings.slice()) {
      if (binding.once) this.remove(binding.listener, binding.context);
      try {
        binding.listener.call(binding.context, value);
      } catch (error) {
        console.error("Snorky: a signal listener threw", error);
      }
    }
  }

  private bind(listener: Listener<T>, context: unknown, once: boolean): () => void {
    if (typeof listener !== "function") throw new TypeError("Signal listener must be a function");
    if (!this.bindings.some((b) => b.listener === listener && b.context === context)) {
      this.bindings.push({ listener, context, once });
    }
    return () => this.remove(listener, context);
  }
}
