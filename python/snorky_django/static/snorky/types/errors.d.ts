/** The error every Snorky promise rejects with. */
import type { ErrorCode } from "./codes.js";
/**
 * A failed call or request.
 *
 * When the server refused a call, `code` is `"server"` and `message` is the
 * server's error text exactly (`"Already subscribed"`, `"No such
 * subscription"`...), so `error.message === "Not joined"` is a fine test.
 * Other codes say the call never got an answer; see {@link ErrorCode}.
 */
export declare class SnorkyError extends Error {
    /** Why the call failed. */
    readonly code: ErrorCode;
    /** For `"http"` errors, the response that caused it. */
    readonly response?: Response;
    constructor(code: ErrorCode, message: string, response?: Response);
}
