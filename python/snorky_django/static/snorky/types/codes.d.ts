/**
 * WebSocket close codes the client acts on, and error codes it reports.
 *
 * The server sends standard codes (`src/protocol/codes.rs`: 1000, 1001,
 * 1007, 1008, 1009) and 4501 (the connection's identity was revoked). `tests/fixtures/protocol/close-codes.json` is the one table
 * both sides are tested against (`test/unit/transcripts.test.ts` checks this
 * file's behaviour against it), and docs/protocol.md ("Connection health and
 * close codes") explains it. What a close code means for the client:
 *
 * - reconnect: everything except the terminal codes below. A server shutting
 *   down (1001), a connection that stopped reading (1008), an oversized frame
 *   (1009) and a lost network (1006) are all transient.
 * - stop: codes that say talking again would fail the same way: a protocol or
 *   data error on our side (1002, 1003, 1007, 1010, 1015), and the application
 *   range 4500-4999, reserved for "do not reconnect" closes (the server sends
 *   4501 when the web application revokes the connection's identity).
 * - over SockJS, 1002 is not a protocol error: sockjs-client reports a server
 *   it cannot reach ("Cannot connect to server") and an interrupted session
 *   with it, and 2000-2999 for transports that failed or timed out. All are
 *   transient, so a SockJS client reconnects after them.
 * - lost messages: 1008 means the server dropped what was queued for us, so a
 *   resumed DataSync subscription would have a gap; the client asks the
 *   application to resync instead of resuming.
 */
/** WebSocket close codes (RFC 6455 section 7.4.1). */
export declare const CloseCode: {
    /** The client closed on purpose (`close()`). */
    readonly normal: 1000;
    /** The server is shutting down. */
    readonly goingAway: 1001;
    readonly protocolError: 1002;
    readonly unsupportedData: 1003;
    /** No close frame: the network or the process went away. */
    readonly abnormal: 1006;
    readonly invalidPayload: 1007;
    /** Policy violation; Snorky uses it for a slow consumer whose queue overflowed. */
    readonly policyViolation: 1008;
    /** A frame larger than the server's maximum. */
    readonly messageTooBig: 1009;
    readonly mandatoryExtension: 1010;
    readonly internalError: 1011;
    readonly tlsHandshake: 1015;
    /** The web application revoked this connection's identity (a logout): do not reconnect. */
    readonly revoked: 4501;
};
/**
 * Whether a close with `code` should be followed by a reconnection attempt;
 * `sockjs` when the socket is a SockJS one, whose codes differ (see above).
 */
export declare function shouldReconnect(code: number, sockjs?: boolean): boolean;
/** Whether a close with `code` means the server dropped messages queued for us. */
export declare function lostMessages(code: number): boolean;
/** The `code` of a {@link SnorkyError}: why a call or a connection failed. */
export declare const ErrorCode: {
    /** The server answered the call with an error; the message is its text. */
    readonly server: "server";
    /** The connection dropped after the call was sent; it may or may not have taken effect. */
    readonly disconnected: "disconnected";
    /** The client is not connected and is not going to reconnect. */
    readonly notConnected: "notConnected";
    /** The call waited longer than `queueTimeout` for a connection. */
    readonly timeout: "timeout";
    /** The params could not be serialized as JSON; nothing was sent. */
    readonly invalidParams: "invalidParams";
    /** `close()` was called. */
    readonly closed: "closed";
    /** `fetchWithSubscription` got a failed or token-less response. */
    readonly http: "http";
};
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];
