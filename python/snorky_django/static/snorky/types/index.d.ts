/**
 * Snorky's JavaScript client: live data, PubSub, Chat, Cursors and Messaging
 * over one WebSocket. `Snorky` is the entry point; everything else is also
 * reachable from it (`Snorky.PubSub`, `Snorky.DataSync.ArrayCollection`...).
 */
export { Snorky, State } from "./client.js";
export type { ServiceMap, Services, WebSocketClass, WebSocketLike } from "./client.js";
export { backoff } from "./backoff.js";
export { CloseCode, ErrorCode, lostMessages, shouldReconnect } from "./codes.js";
export { ArrayCollection, CollectionDeltaProcessor, SingleItemCollection } from "./collections.js";
export type { ArrayCollectionOptions, Collection, CollectionMap, DeltaProcessorOptions, ItemsAreEqual, } from "./collections.js";
export { SnorkyError } from "./errors.js";
export { fetchWithSubscription } from "./fetch.js";
export type { SubscribedResponse } from "./fetch.js";
export { RPCService } from "./services/base.js";
export type { ServiceClass } from "./services/base.js";
export { Chat } from "./services/chat.js";
export { Cursors } from "./services/cursors.js";
export type { DocumentCursors } from "./services/cursors.js";
export { DataSync } from "./services/datasync.js";
export { Messaging } from "./services/messaging.js";
export { PubSub } from "./services/pubsub.js";
export { Signal } from "./signal.js";
export type { Listener } from "./signal.js";
export type * from "./types.js";
import { Snorky } from "./client.js";
export default Snorky;
