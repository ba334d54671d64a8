/**
 * Types of the wire protocol (docs/protocol.md) and of the client's options and
 * events. Field names are the wire's, so a pushed message is passed to
 * listeners exactly as it arrived.
 */

import type { State } from "./client.js";

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Who a connection is: the `sub` of its connection token, or `null` when anonymous. */
export type Identity = string | null;

// ---------------------------------------------------------------------------
// Envelope and RPC
// ---------------------------------------------------------------------------

/** Every frame, both directions. */
export interface Envelope<M = unknown> {
  service: string;
  message: M;
}

/** An RPC request. */
export interface RpcRequest {
  command: string;
  params: object;
  callId: number;
}

/** A successful RPC reply. */
export interface RpcResponse {
  type: "response";
  callId: unknown;
  data: unknown;
}

/** A failed RPC reply. */
export interface RpcErrorReply {
  type: "error";
  callId: unknown;
  message: string;
}

/** A message a service pushes without a request. */
export interface PushMessage {
  type: string;
  [field: string]: unknown;
}

// ---------------------------------------------------------------------------
// Client options and events
// ---------------------------------------------------------------------------

/** A connection token, or a function that fetches a fresh one before each connection attempt. */
export type TokenSource = string | (() => string | Promise<string>);

/** The fourth argument of `new Snorky(...)`; every field is optional. */
export interface SnorkyOptions {
  /**
   * Connection token (a JWT from the web application), sent as the `token`
   * query parameter. Pass a function to get a fresh token for every attempt,
   * so that reconnecting after the token expired still works.
   */
  token?: TokenSource;
  /** Reconnect after an unexpected close. Default `true`. */
  reconnect?: boolean;
  /** First backoff ceiling in ms; doubles per failed attempt. Default 500. */
  minReconnectDelay?: number;
  /** Largest delay between attempts in ms. Default 20000. */
  maxReconnectDelay?: number;
  /** Give up after this many failed attempts in a row. Default: never. */
  maxReconnectAttempts?: number;
  /**
   * How long (ms) a call made while not connected waits for the connection
   * before it rejects with code `"timeout"`. Default 15000.
   */
  queueTimeout?: number;
  /** Log what the client does with `console.debug`. Default `false`. */
  debug?: boolean;
}

/** Payload of the `stateChanged` signal. */
export interface StateChange {
  oldState: State;
  newState: State;
}

/** Payload of the `disconnected` signal: the WebSocket close code and reason. */
export interface DisconnectInfo {
  code: number;
  reason: string;
}

/** Payload of the `restoreFailed` signal: a call made to restore state after a reconnection was refused. */
export interface RestoreFailure {
  service: string;
  command: string;
  params: object;
  error: Error;
}

// ---------------------------------------------------------------------------
// PubSub
// ---------------------------------------------------------------------------

export interface PubSubMessage {
  type: "message";
  channel: any;
  message: any;
}

// ---------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------

export interface ChatMessage {
  type: "message";
  from: Identity;
  channel: any;
  body: any;
  timestamp: string;
}

export interface ChatPresence {
  type: "presence";
  from: Identity;
  channel: any;
  status: "joined" | "left";
  timestamp: string;
}

export interface ChatRead {
  type: "read";
  channel: any;
  timestamp: string;
}

/** Payload of `chat.membersChanged`. */
export interface ChatMembers {
  channel: any;
  members: Identity[];
}

// ---------------------------------------------------------------------------
// Cursors
// ---------------------------------------------------------------------------

/** A cursor as the server describes it. */
export interface Cursor {
  publicHandle: number;
  document: any;
  position: any;
  status: any;
  owner: Identity;
}

/** `cursorRemoved` carries only the cursor's handle and document. */
export interface RemovedCursor {
  publicHandle: number;
  document: any;
}

/** A cursor this connection created; the client keeps it up to date and recreates it after a reconnection. */
export interface OwnCursor {
  privateHandle: number;
  /** Changes when the cursor is recreated after a reconnection. */
  publicHandle: number | null;
  document: any;
  position: any;
  status: any;
}

// ---------------------------------------------------------------------------
// Messaging
// ---------------------------------------------------------------------------

export interface ParticipantMessage {
  type: "message";
  sender: string;
  dest: string;
  body: any;
}

// ---------------------------------------------------------------------------
// DataSync
// ---------------------------------------------------------------------------

export interface InsertDelta<T = any> {
  type: "insert";
  model: string;
  data: T;
  /** Not on the wire: set it yourself to route deltas to tagged collections. */
  tag?: string;
}

export interface UpdateDelta<T = any> {
  type: "update";
  model: string;
  newData: T;
  oldData: T;
  tag?: string;
}

export interface DeleteDelta<T = any> {
  type: "delete";
  model: string;
  data: T;
  tag?: string;
}

/** A change to one object of a model. */
export type Delta<T = any> = InsertDelta<T> | UpdateDelta<T> | DeleteDelta<T>;

/** The params of `acquireSubscription`. */
export interface AcquireParams {
  /** The subscription token from the web application. */
  token: string;
  /** Opt in to offsets (the client adds `true` unless {@link DataSync.offsets} is off). */
  offsets?: boolean;
  /** Resume after this offset (the last delta applied). The client adds it after a reconnection. */
  after?: string;
}

/** What an opted-in `acquireSubscription` answers: the position it was acquired at. */
export interface AcquireResult {
  offset: string;
}

/** A delta of an opted-in subscription, with the subscription it belongs to and its offset. */
export interface SubscriptionDelta<T = any> {
  /** The subscription's token. */
  subscription: string;
  delta: Delta<T>;
  /** The position after this delta (opaque: stored and sent back, never compared). */
  offset: string;
}
