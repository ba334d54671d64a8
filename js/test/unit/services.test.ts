import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Cursor } from "../../src/types.js";
import { RpcError } from "../support/fakeServer.js";
import { connected } from "../support/harness.js";
import { nextDispatch, record, within } from "../support/wait.js";

describe("PubSub", () => {
  it("dispatches published messages on messagePublished", async (t) => {
    const { server, s } = await connected(t);
    const published = nextDispatch(s.pubsub.messagePublished);
    server.push("pubsub", { type: "message", channel: "news", message: { text: "hi" } });
    assert.deepEqual(await published, { type: "message", channel: "news", message: { text: "hi" } });
  });

  it("tracks subscriptions: added when confirmed, removed by unsubscribe whatever the answer", async (t) => {
    const { server, s } = await connected(t);
    await within(s.pubsub.subscribe({ channel: "a" }));
    await within(s.pubsub.subscribe({ channel: { room: 1, kind: "x" } }));
    server.on("pubsub", "subscribe", () => {
      throw new RpcError("Not authorized");
    });
    await assert.rejects(s.pubsub.subscribe({ channel: "refused" }), /Not authorized/);
    assert.deepEqual(s.pubsub.subscriptions, ["a", { room: 1, kind: "x" }]);

    server.on("pubsub", "unsubscribe", () => {
      throw new RpcError("Not subscribed");
    });
    // Channels compare by value, key order aside.
    await assert.rejects(s.pubsub.unsubscribe({ channel: { kind: "x", room: 1 } }), /Not subscribed/);
    assert.deepEqual(s.pubsub.subscriptions, ["a"]);
  });

  it("publish sends channel and message", async (t) => {
    const { server, s } = await connected(t);
    await within(s.pubsub.publish({ channel: "messages", message: null }));
    assert.deepEqual(server.calls("pubsub", "publish")[0]?.message.params, { channel: "messages", message: null });
  });
});

describe("Chat", () => {
  it("keeps the members of joined channels up to date", async (t) => {
    const { server, s } = await connected(t);
    server.on("chat", "join", () => ({ members: ["me", "ann"] }));
    const changes = record(s.chat.membersChanged);
    assert.deepEqual(await within(s.chat.join({ channel: "lobby" })), { members: ["me", "ann"] });
    assert.deepEqual(s.chat.getMembers("lobby"), ["me", "ann"]);

    const presence = nextDispatch(s.chat.presenceReceived);
    server.push("chat", { type: "presence", from: "bob", channel: "lobby", status: "joined", timestamp: "t" });
    assert.equal((await presence).from, "bob");
    assert.deepEqual(s.chat.getMembers("lobby"), ["me", "ann", "bob"]);

    server.push("chat", { type: "presence", from: "ann", channel: "lobby", status: "left", timestamp: "t" });
    await nextDispatch(s.chat.presenceReceived);
    assert.deepEqual(s.chat.getMembers("lobby"), ["me", "bob"]);

    // Presence for a channel we did not join is passed on and changes nothing.
    server.push("chat", { type: "presence", from: "zed", channel: "elsewhere", status: "joined", timestamp: "t" });
    await nextDispatch(s.chat.presenceReceived);
    assert.deepEqual(s.chat.getMembers("elsewhere"), []);

    await within(s.chat.leave({ channel: "lobby" }));
    assert.deepEqual(s.chat.getMembers("lobby"), []);
    assert.deepEqual(s.chat.channels, []);
    assert.deepEqual(
      changes.map((c) => c.members),
      [["me", "ann"], ["me", "ann", "bob"], ["me", "bob"], []],
    );
  });

  it("dispatches messages and read receipts; send and read carry their params", async (t) => {
    const { server, s } = await connected(t);
    const message = { type: "message", from: "ann", channel: "c", body: "hello", timestamp: "2025-01-01T00:00:00+00:00" };
    const received = nextDispatch(s.chat.messageReceived);
    server.push("chat", message);
    assert.deepEqual(await received, message);

    const read = nextDispatch(s.chat.readReceived);
    server.push("chat", { type: "read", channel: "c", timestamp: "t" });
    assert.deepEqual(await read, { type: "read", channel: "c", timestamp: "t" });

    await within(s.chat.send({ channel: "c", body: { text: "hey" } }));
    await within(s.chat.read({ channel: "c" }));
    assert.deepEqual(server.calls("chat", "send")[0]?.message.params, { channel: "c", body: { text: "hey" } });
    assert.deepEqual(server.calls("chat", "read")[0]?.message.params, { channel: "c" });
  });

  it("a refused join tracks nothing", async (t) => {
    const { server, s } = await connected(t);
    server.on("chat", "join", () => {
      throw new RpcError("Not authenticated");
    });
    await assert.rejects(s.chat.join({ channel: "c" }), { message: "Not authenticated" });
    assert.deepEqual(s.chat.channels, []);
  });
});

describe("Cursors", () => {
  const cursor = (publicHandle: number, position: unknown = 0): Cursor =>
    ({ publicHandle, document: "doc", position, status: null, owner: "ann" }) as Cursor;

  it("keeps the remote cursors of joined documents up to date", async (t) => {
    const { server, s } = await connected(t);
    server.on("cursors", "join", () => ({ cursors: [cursor(1)] }));
    await within(s.cursors.join({ document: "doc" }));
    assert.deepEqual(s.cursors.getCursors("doc"), [cursor(1)]);

    const added = nextDispatch(s.cursors.cursorAdded);
    server.push("cursors", { type: "cursorAdded", cursor: cursor(2) });
    assert.deepEqual(await added, cursor(2));

    const updated = nextDispatch(s.cursors.cursorUpdated);
    server.push("cursors", { type: "cursorUpdated", cursor: cursor(1, 42) });
    await updated;
    assert.deepEqual(s.cursors.getCursors("doc"), [cursor(1, 42), cursor(2)]);

    const removed = nextDispatch(s.cursors.cursorRemoved);
    server.push("cursors", { type: "cursorRemoved", cursor: { publicHandle: 1, document: "doc" } });
    assert.deepEqual(await removed, { publicHandle: 1, document: "doc" });
    assert.deepEqual(s.cursors.getCursors("doc"), [cursor(2)]);

    const changed = nextDispatch(s.cursors.cursorsChanged);
    server.push("cursors", { type: "cursorAdded", cursor: cursor(3) });
    assert.deepEqual((await changed).cursors, [cursor(2), cursor(3)]);

    await within(s.cursors.leave({ document: "doc" }));
    assert.deepEqual(s.cursors.getCursors("doc"), []);
    assert.deepEqual(s.cursors.joinedDocuments, []);
  });

  it("creates, updates and removes own cursors", async (t) => {
    const { server, s } = await connected(t);
    let nextPublic = 100;
    server.on("cursors", "createCursor", () => nextPublic++);
    await within(s.cursors.join({ document: "doc" }));

    const a = await within(s.cursors.createCursor({ document: "doc", position: 1, status: "typing" }));
    const b = await within(s.cursors.createCursor({ document: "doc", position: 2, status: null }));
    const c = await within(s.cursors.createCursor({ document: "doc", position: 3, status: null, privateHandle: 77 }));
    assert.deepEqual(a, { privateHandle: 0, publicHandle: 100, document: "doc", position: 1, status: "typing" });
    assert.equal(b.privateHandle, 1);
    assert.equal(c.privateHandle, 77);
    assert.deepEqual(server.calls("cursors", "createCursor")[0]?.message.params, {
      privateHandle: 0,
      document: "doc",
      position: 1,
      status: "typing",
    });

    await within(s.cursors.updateCursor({ privateHandle: a.privateHandle, newData: { position: 5 } }));
    assert.deepEqual(server.calls("cursors", "updateCursor")[0]?.message.params, {
      privateHandle: 0,
      newData: { position: 5 },
    });
    assert.equal(s.cursors.getOwnCursors("doc")[0]?.position, 5);
    assert.equal(s.cursors.getOwnCursors("doc")[0]?.status, "typing");

    await within(s.cursors.removeCursor({ privateHandle: b.privateHandle }));
    assert.deepEqual(
      s.cursors.getOwnCursors().map((own) => own.privateHandle),
      [0, 77],
    );
    // Leaving a document forgets its own cursors too.
    await within(s.cursors.leave({ document: "doc" }));
    assert.deepEqual(s.cursors.getOwnCursors(), []);
  });

  it("ignores pushes for documents it has not joined", async (t) => {
    const { server, s } = await connected(t);
    const added = record(s.cursors.cursorAdded);
    server.push("cursors", { type: "cursorAdded", cursor: cursor(1) });
    server.push("cursors", { type: "cursorAdded" });
    const check = nextDispatch(s.pubsub.messagePublished);
    server.push("pubsub", { type: "message", channel: "sync", message: null });
    await check;
    assert.deepEqual(added, []);
  });
});

describe("Messaging", () => {
  it("registers names, dispatches participant messages, sends", async (t) => {
    const { server, s } = await connected(t);
    await within(s.messaging.registerParticipant({ name: "alice" }));
    await within(s.messaging.registerParticipant({ name: "alice-2" }));
    server.on("messaging", "registerParticipant", () => {
      throw new RpcError("Name already registered");
    });
    await assert.rejects(s.messaging.registerParticipant({ name: "bob" }), { message: "Name already registered" });
    await within(s.messaging.unregisterParticipant({ name: "alice-2" }));
    assert.deepEqual(s.messaging.participants, ["alice"]);

    const message = { type: "message", sender: "bob", dest: "alice", body: [1, 2] };
    const received = nextDispatch(s.messaging.participantMessage);
    server.push("messaging", message);
    assert.deepEqual(await received, message);

    await within(s.messaging.send({ sender: "alice", dest: "bob", body: "hi" }));
    assert.deepEqual(server.calls("messaging", "send")[0]?.message.params, { sender: "alice", dest: "bob", body: "hi" });
  });
});

describe("DataSync", () => {
  it("passes deltas to deltaReceived and onDelta, in order", async (t) => {
    const { server, s } = await connected(t);
    await within(s.datasync.acquireSubscription({ token: "tok" }));
    assert.deepEqual(s.datasync.subscriptions, ["tok"]);
    const viaSignal = record(s.datasync.deltaReceived);
    const viaCallback: unknown[] = [];
    s.datasync.onDelta = (delta) => viaCallback.push(delta);
    const deltas = [
      { type: "insert", model: "Task", data: { id: 1 } },
      { type: "update", model: "Task", oldData: { id: 1 }, newData: { id: 1, done: true } },
      { type: "delete", model: "Task", data: { id: 1, done: true } },
    ];
    for (const delta of deltas) server.push("datasync", { type: "delta", delta });
    const last = nextDispatch(s.pubsub.messagePublished);
    server.push("pubsub", { type: "message", channel: "sync", message: null });
    await last;
    assert.deepEqual(viaSignal, deltas);
    assert.deepEqual(viaCallback, deltas);

    await within(s.datasync.cancelSubscription({ token: "tok" }));
    assert.deepEqual(s.datasync.subscriptions, []);
  });

  it("a throwing onDelta does not break delivery", async (t) => {
    t.mock.method(console, "error", () => {});
    const { server, s } = await connected(t);
    s.datasync.onDelta = () => {
      throw new Error("app bug");
    };
    const received = record(s.datasync.deltaReceived);
    server.push("datasync", { type: "delta", delta: { type: "insert", model: "T", data: {} } });
    server.push("datasync", { type: "delta", delta: { type: "insert", model: "T", data: {} } });
    const check = nextDispatch(s.pubsub.messagePublished);
    server.push("pubsub", { type: "message", channel: "sync", message: null });
    await check;
    assert.equal(received.length, 2);
  });
});
