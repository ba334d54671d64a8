import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { WebSocket } from "ws";
import { Snorky, State } from "../../src/client.js";
import { FakeServer, RpcError } from "../support/fakeServer.js";
import { ALL_SERVICES, connected, maxJitter } from "../support/harness.js";
import { nextDispatch, record, sleep, waitUntil, within } from "../support/wait.js";

const commandsOn = (server: FakeServer, connection: number) =>
  server.received.filter((r) => r.connection === connection).map((r) => `${r.service}.${r.message.command}`);

describe("reconnection", () => {
  it("restores every service's state, before the calls queued while disconnected", async (t) => {
    maxJitter(t);
    const { server, client, s } = await connected(t, { minReconnectDelay: 50, maxReconnectDelay: 50 });
    let publicHandle = 10;
    server.on("cursors", "createCursor", () => publicHandle++);
    server.on("chat", "join", (_params, request) =>
      request.connection === 0 ? { members: ["me", "old"] } : { members: ["me", "new"] },
    );
    server.on("cursors", "join", (_params, request) =>
      request.connection === 0
        ? { cursors: [{ publicHandle: 1, document: "doc", position: 0, status: null, owner: "old" }] }
        : { cursors: [{ publicHandle: 2, document: "doc", position: 9, status: null, owner: "new" }] },
    );

    await within(s.pubsub.subscribe({ channel: "news" }));
    await within(s.chat.join({ channel: "lobby" }));
    await within(s.cursors.join({ document: "doc" }));
    const own = await within(s.cursors.createCursor({ document: "doc", position: 3, status: "idle" }));
    await within(s.cursors.updateCursor({ privateHandle: own.privateHandle, newData: { position: 4 } }));
    await within(s.messaging.registerParticipant({ name: "alice" }));
    await within(s.datasync.acquireSubscription({ token: "tok" }));
    assert.equal(own.publicHandle, 10);

    const restored = nextDispatch(client.restored, 3000, "restored");
    const cursorEvents = record(s.cursors.cursorRemoved);
    const connecting = nextDispatch(client.stateChanged);
    server.current.close(1001, "going away");
    assert.equal((await connecting).newState, State.Connecting);
    const queued = s.pubsub.publish({ channel: "news", message: "after" });
    await server.waitForConnection(2);
    await restored;
    await within(queued);

    assert.deepEqual(commandsOn(server, 1), [
      "pubsub.subscribe",
      "chat.join",
      "cursors.join",
      "cursors.createCursor",
      "messaging.registerParticipant",
      "datasync.acquireSubscription",
      "pubsub.publish",
    ]);
    const params = (command: string) =>
      server.received.find((r) => r.connection === 1 && `${r.service}.${r.message.command}` === command)?.message.params;
    assert.deepEqual(params("pubsub.subscribe"), { channel: "news" });
    assert.deepEqual(params("chat.join"), { channel: "lobby" });
    assert.deepEqual(params("cursors.join"), { document: "doc" });
    assert.deepEqual(params("cursors.createCursor"), { privateHandle: own.privateHandle, document: "doc", position: 4, status: "idle" });
    assert.deepEqual(params("messaging.registerParticipant"), { name: "alice" });
    assert.deepEqual(params("datasync.acquireSubscription"), { token: "tok", offsets: true });

    // State after the restore: fresh members and remote cursors, own cursor with its new public handle.
    assert.deepEqual(s.chat.getMembers("lobby"), ["me", "new"]);
    assert.deepEqual(s.cursors.getCursors("doc").map((c) => c.publicHandle), [2]);
    assert.deepEqual(cursorEvents, [{ publicHandle: 1, document: "doc" }]);
    assert.equal(own.publicHandle, 11);
    assert.deepEqual(s.pubsub.subscriptions, ["news"]);
    assert.deepEqual(s.messaging.participants, ["alice"]);
    assert.deepEqual(s.datasync.subscriptions, ["tok"]);
    assert.equal(client.state, State.Connected);

    // Pushes on the new connection reach the same signals.
    const published = nextDispatch(s.pubsub.messagePublished);
    server.push("pubsub", { type: "message", channel: "news", message: "again" });
    assert.equal((await published).message, "again");
  });

  it("state and connection signals across a reconnection", async (t) => {
    const { server, client } = await connected(t);
    const states = record(client.stateChanged);
    const connections = record(client.connected);
    const disconnections = record(client.disconnected);
    server.current.terminate();
    await server.waitForConnection(2);
    await waitUntil(() => client.state === State.Connected, 2000, "reconnected");
    assert.deepEqual(
      states.map((c) => `${c.oldState}->${c.newState}`),
      ["connected->connecting", "connecting->connected"],
    );
    assert.equal(connections.length, 1);
    assert.equal(disconnections[0]?.code, 1006);
  });

  it("keeps trying with backoff while the server is down, and comes back when it returns", async (t) => {
    const first = await FakeServer.start();
    const port = first.port;
    const client = new Snorky(WebSocket, first.url, ALL_SERVICES, { minReconnectDelay: 10, maxReconnectDelay: 40 });
    t.after(() => client.close());
    await within(client.services.pubsub.subscribe({ channel: "news" }));
    await first.stop();
    await waitUntil(() => client.state === State.Connecting, 2000, "connecting");
    await sleep(150); // several failed attempts

    const second = await FakeServer.start(port);
    t.after(() => second.stop());
    await second.waitForConnection(1, 3000);
    const resubscribe = await second.waitForFrame((r) => r.message.command === "subscribe");
    assert.deepEqual(resubscribe.message.params, { channel: "news" });
    await waitUntil(() => client.state === State.Connected, 2000, "connected");
  });

  it("resyncNeeded when a token cannot be acquired again", async (t) => {
    const { server, client, s } = await connected(t);
    await within(s.datasync.acquireSubscription({ token: "gone" }));
    await within(s.datasync.acquireSubscription({ token: "kept" }));
    server.on("datasync", "acquireSubscription", (params) => {
      if (params.token === "gone") throw new RpcError("No such subscription");
      return null;
    });
    const resync = nextDispatch(s.datasync.resyncNeeded, 3000, "resyncNeeded");
    const failures = record(client.restoreFailed);
    server.current.close(1001);
    assert.equal(await resync, "gone");
    await nextDispatch(client.restored, 3000, "restored");
    assert.deepEqual(s.datasync.subscriptions, ["kept"]);
    assert.equal(failures.length, 1);
    assert.equal(failures[0]?.error.message, "No such subscription");
    assert.deepEqual(failures[0]?.params, { token: "gone", offsets: true });
  });

  it("after a slow-consumer close (1008) every token needs a resync instead of a resume", async (t) => {
    const { server, s } = await connected(t);
    await within(s.datasync.acquireSubscription({ token: "a" }));
    await within(s.datasync.acquireSubscription({ token: "b" }));
    const resyncs = record(s.datasync.resyncNeeded);
    server.current.close(1008, "slow consumer");
    await server.waitForConnection(2);
    await waitUntil(() => resyncs.length === 2, 2000, "two resyncs");
    assert.deepEqual(resyncs, ["a", "b"]);
    await sleep(30);
    assert.equal(server.calls("datasync", "acquireSubscription", 1).length, 0);
    assert.deepEqual(s.datasync.subscriptions, []);
  });

  it("a refused re-registration drops the name and reports restoreFailed", async (t) => {
    const { server, client, s } = await connected(t);
    await within(s.messaging.registerParticipant({ name: "alice" }));
    server.on("messaging", "registerParticipant", () => {
      throw new RpcError("Name already registered");
    });
    const failed = nextDispatch(client.restoreFailed, 3000, "restoreFailed");
    server.current.close(1001);
    const failure = await failed;
    assert.equal(failure.service, "messaging");
    assert.equal(failure.command, "registerParticipant");
    assert.equal(failure.error.message, "Name already registered");
    assert.deepEqual(s.messaging.participants, []);
  });

  it("a refused rejoin forgets the channel, the document and its cursors", async (t) => {
    const { server, s } = await connected(t);
    server.on("cursors", "createCursor", () => 1);
    await within(s.chat.join({ channel: "lobby" }));
    await within(s.cursors.join({ document: "doc" }));
    await within(s.cursors.createCursor({ document: "doc", position: 0, status: null }));
    server.on("chat", "join", () => {
      throw new RpcError("Not authenticated");
    });
    server.on("cursors", "join", () => {
      throw new RpcError("Not authenticated");
    });
    server.on("cursors", "createCursor", () => {
      throw new RpcError("Not joined");
    });
    server.current.close(1001);
    await server.waitForConnection(2);
    await waitUntil(() => s.chat.channels.length === 0 && s.cursors.getOwnCursors().length === 0, 2000, "forgotten");
    assert.deepEqual(s.cursors.joinedDocuments, []);
  });

  it("state is not lost when the connection drops again during the restore", async (t) => {
    const { server, client, s } = await connected(t);
    await within(s.datasync.acquireSubscription({ token: "tok" }));
    server.on("datasync", "acquireSubscription", (_params, request) => {
      // Drop the second connection before answering its restore call.
      if (request.connection === 1) server.connections[1]?.close(1001);
      return null;
    });
    const resyncs = record(s.datasync.resyncNeeded);
    const restored = record(client.restored);
    server.current.close(1001);
    await server.waitForConnection(3);
    await waitUntil(() => restored.length === 1, 3000, "restored");
    assert.equal(server.calls("datasync", "acquireSubscription", 2).length, 1);
    assert.deepEqual(s.datasync.subscriptions, ["tok"]);
    assert.deepEqual(resyncs, []);
  });

  it("spaces attempts by the doubling, capped backoff", async (t) => {
    maxJitter(t);
    const server = await FakeServer.start();
    const port = server.port;
    await server.stop();
    const attempts: number[] = [];
    class CountingWebSocket extends WebSocket {
      constructor(url: string) {
        super(url);
        attempts.push(Date.now());
      }
    }
    const client = new Snorky(CountingWebSocket, `ws://127.0.0.1:${port}/ws`, {}, {
      minReconnectDelay: 20,
      maxReconnectDelay: 80,
      maxReconnectAttempts: 4,
    });
    t.after(() => client.close());
    await waitUntil(() => client.state === State.Disconnected, 3000, "giving up");
    assert.equal(attempts.length, 5); // the first connection and 4 reconnections
    const gaps = attempts.slice(1).map((time, i) => time - attempts[i]!);
    [20, 40, 80, 80].forEach((ceiling, i) => {
      // Just under the ceiling (random() is 0.999), plus the refused connection and scheduling.
      assert.ok(gaps[i]! >= ceiling - 2 && gaps[i]! < ceiling + 150, `gap ${i}: ${gaps[i]} ms, ceiling ${ceiling}`);
    });
  });
});
