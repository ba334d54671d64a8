/**
 * `fetchWithSubscription`: load data from the web application together with a
 * DataSync subscription token for it.
 *
 * The request carries `X-Snorky: Subscribe`; a subscribable view (the DRF
 * `ListSubscribeModelMixin`) answers with the data and the header
 * `X-Subscription-Token`. Cross-origin, the server must list that header in
 * `Access-Control-Expose-Headers`.
 */
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
export declare function fetchWithSubscription<T = any>(url: string | URL, init?: RequestInit): Promise<SubscribedResponse<T>>;
