/** Compile-time checks of the public types; the runtime part is trivial. */

import assert from "node:assert/strict";
import { it } from "node:test";
import Snorky, { type Delta, type OwnCursor, PubSub, State } from "../../src/index.js";

// Never called: it only has to type-check.
export function typeChecks(): void {
  // The browser's WebSocket class is accepted as is.
  const snorky = new Snorky(WebSocket, "ws://localhost:5001/ws", {
    pubsub: Snorky.PubSub,
    datasync: Snorky.DataSync,
    cursors: Snorky.Cursors,
  });
  const pubsub: PubSub = snorky.services.pubsub;
  void pubsub.subscribe({ channel: "messages" });
  snorky.services.datasync.onDelta = (delta: Delta) => void delta.model;
  const cursor: Promise<OwnCursor> = snorky.services.cursors.createCursor({ document: "d", position: 0, status: null });
  void cursor;
  const state: State = snorky.state;
  void state;
  // @ts-expect-error: services not in the map are not there
  void snorky.services.chat;
  // @ts-expect-error: params are an object
  void pubsub.subscribe("messages");
}

it("public types compile (see typeChecks)", () => {
  assert.equal(typeof typeChecks, "function");
});
