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
export declare const DEFAULT_MIN_DELAY = 500;
/** Default largest delay, in milliseconds. */
export declare const DEFAULT_MAX_DELAY = 20000;
/**
 * The delay before reconnection attempt number `attempt` (0 for the first).
 *
 * @param random a source of numbers in [0, 1); tests pass a fixed one.
 */
export declare function backoff(attempt: number, minDelay?: number, maxDelay?: number, random?: () => number): number;
