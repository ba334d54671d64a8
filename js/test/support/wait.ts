/** Bounded waits: every wait in the tests ends, with a message saying what never came. */

import type { Signal } from "../../src/signal.js";

/** Polls `condition` until it holds; rejects after `timeout` ms. */
export async function waitUntil(condition: () => boolean, timeout = 2000, label = "condition"): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${label}`);
    await sleep(2);
  }
}

/** Resolves with the next value `signal` dispatches; rejects after `timeout` ms. */
export function nextDispatch<T>(signal: Signal<T>, timeout = 2000, label = "signal"): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      remove();
      reject(new Error(`timed out after ${timeout} ms waiting for ${label}`));
    }, timeout);
    const remove = signal.addOnce((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

/** Rejects if `promise` has not settled within `timeout` ms. */
export function within<T>(promise: Promise<T>, timeout = 2000, label = "promise"): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms waiting for ${label}`)), timeout);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Collects what a signal dispatches, for assertions. */
export function record<T>(signal: Signal<T>): T[] {
  const values: T[] = [];
  signal.add((value) => values.push(value));
  return values;
}
