/**
 * Reconnection delays: exponential backoff with "full jitter".
 *
 * The ceiling doubles with every failed attempt, from `minDelay` up to
 * `maxDelay`, and the delay is drawn uniformly between 0 and that ceiling.
 * Spreading the whole range (rather than adding a little noise to a fixed
 * delay) is what keeps thousands of browsers that lost the same server from
 * coming back in lockstep when it restarts.
 */

/** Default first ceiling, in milliseconds. */
export const DEFAULT_MIN_DELAY = 500;
/** Default largest delay, in milliseconds. */
export const DEFAULT_MAX_DELAY = 20_000;

/**
 * The delay before reconnection attempt number `attempt` (0 for the first).
 *
 * @param random a source of numbers in [0, 1); tests pass a fixed one.
 */
export function backoff(
  attempt: number,
  minDelay: number = DEFAULT_MIN_DELAY,
  maxDelay: number = DEFAULT_MAX_DELAY,
  random: () => number = Math.random,
): number {
  const low = Math.max(0, minDelay);
  const high = Math.max(low, maxDelay);
  // Cap the exponent: 2 ** 1100 is Infinity, and the ceiling is reached long before.
  const ceiling = Math.min(high, low * 2 ** Math.min(Math.max(0, attempt), 64));
  return Math.floor(random() * ceiling);
}
