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
export const CloseCode = {
  /** The client closed on purpose (`close()`). */
  normal: 1000,
  /** The server is shutting down. */
  goingAway: 1001,
  protocolError: 1002,
  unsupportedData: 1003,
  /** No close frame: the network or the process went away. */
  abnormal: 1006,
  invalidPayload: 1007,
  /** Policy violation; Snorky uses it for a slow consumer whose queue overflowed. */
  policyViolation: 1008,
  /** A frame larger than the server's maximum. */
  messageTooBig: 1009,
  mandatoryExtension: 1010,
  internalError: 1011,
  tlsHandshake: 1015,
  /** The web application revoked this connection's identity (a logout): do not reconnect. */
  revoked: 4501,
} as const;

/** Close codes after which the client does not reconnect. */
const TERMINAL_CODES: readonly number[] = [
  CloseCode.protocolError,
  CloseCode.unsupportedData,
  CloseCode.invalidPayload,
  CloseCode.mandatoryExtension,
  CloseCode.tlsHandshake,
];

/**
 * Whether a close with `code` should be followed by a reconnection attempt;
 * `sockjs` when the socket is a SockJS one, whose codes differ (see above).
 */
export function shouldReconnect(code: number, sockjs = false): boolean {
  if (sockjs && (code === CloseCode.protocolError || (code >= 2000 && code <= 2999))) return true;
  if (TERMINAL_CODES.includes(code)) return false;
  return !(code >= 4500 && code <= 4999);
}

/** Whether a close with `code` means the server dropped messages queued for us. */
export function lostMessages(code: number): boolean {
  return code === CloseCode.policyViolation;
}

/** The `code` of a {@link SnorkyError}: why a call or a connection failed. */
export const ErrorCode = {
  /** The server answered the call with an error; the message is its text. */
  server: "server",
  /** The connection dropped after the call was sent; it may or may not have taken effect. */
  disconnected: "disconnected",
  /** The client is not connected and is not going to reconnect. */
  notConnected: "notConnected",
  /** The call waited longer than `queueTimeout` for a connection. */
  timeout: "timeout",
  /** The params could not be serialized as JSON; nothing was sent. */
  invalidParams: "invalidParams",
  /** `close()` was called. */
  closed: "closed",
  /** `fetchWithSubscription` got a failed or token-less response. */
  http: "http",
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];
