/**
 * `fetchWithSubscription`: load data from the web application together with a
 * DataSync subscription token for it.
 *
 * The request carries `X-Snorky: Subscribe`; a subscribable view (the DRF
 * `ListSubscribeModelMixin`) answers with the data and the header
 * `X-Subscription-Token`. Cross-origin, the server must list that header in
 * `Access-Control-Expose-Headers`.
 */

import { ErrorCode } from "./codes.js";
import { SnorkyError } from "./errors.js";

/** What {@link fetchWithSubscription} resolves with. */
export interface SubscribedResponse<T = any> {
  response: Response;
  /** The parsed JSON body. */
  data: T;
  /** Pass it to `datasync.acquireSubscription({token})`. */
  subscriptionToken: string;
}

/**
 * Fetches `url` as JSON, asking for a subscription token. Rejects with a
 * {@link SnorkyError} of code `"http"` when the response is not 2xx or has
 * no token.
 */
export async function fetchWithSubscription<T = any>(
  url: string | URL,
  init: RequestInit = {},
): Promise<SubscribedResponse<T>> {
  const headers = new Headers(init.headers);
  headers.set("X-Snorky", "Subscribe");
  if (!headers.has("Accept")) headers.set("Accept", "application/json");
  const response = await fetch(url, { ...init, headers });
  if (!response.ok) {
    throw new SnorkyError(ErrorCode.http, `${String(url)} answered HTTP ${response.status}`, response);
  }
  const subscriptionToken = response.headers.get("X-Subscription-Token");
  if (!subscriptionToken) {
    throw new SnorkyError(ErrorCode.http, `${String(url)} sent no X-Subscription-Token header`, response);
  }
  const data = (await response.json()) as T;
  return { response, data, subscriptionToken };
}
