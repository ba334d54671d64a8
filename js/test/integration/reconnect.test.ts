/**
 * Reconnection against the real server: it is stopped (clients get 1001) and
 * started again on the same ports mid-test, and the client carries on.
 *
 * Where a test must act while the client is surely away, the client's token
 * source is held by a {@link Gate}: the client cannot open its next
 * connection until the gate opens, so deltas published meanwhile are
 * published while it is disconnected, whatever the timing.
 */

import assert from "node:assert/strict";
import { after, before, describe, it, type TestContext } from "node:test";
import { WebSocket } from "ws";
import { Snorky, State } from "../../src/client.js";
import { CloseCode, ErrorCode } from "../../src/codes.js";
import { ArrayCollection, CollectionDeltaProcessor } from "../../src/collections.js";
import { DataSync } from "../../src/services/datasync.js";
import { PubSub } from "../../src/services/pubsub.js";
import type { Delta } from "../../src/types.js";
import { connectedClient, Gate, LIVE, recordingSocketClass } from "../support/live.js";
import { RealServer } from "../support/realServer.js";
import { nextDispatch, record, waitUntil, within } from "../support/wait.js";

let server: RealServer;
before(async () => {
  server = await RealServer.start();
});
after(async () => {
  await server?.close();
});

/** Stops the server, checks every client got 1001, and leaves it stopped. */
async function stopServer(...clients: Array<Pick<Snorky<any>, "disconnected">>): Promise<void> {
  const closes = clients.map((client) => nextDispatch(client.disconnected, 10_000, "the disconnection"));
  await server.stop();
  for (const close of await Promise.all(closes)) assert.equal(close.code, CloseCode.goingAway);
}

/** A connected client of `identity` whose reconnection attempts wait for its gate. */
async function gatedClient(t: TestContext, identity: string, options = {}) {
  const gate = new Gate();
  const token = await server.token(identity);
  const client = await connectedClient(t, server, { ...options, token: gate.tokenSource(token) });
  return { gate, client };
}

const task = (id: number, owner: number, title: string) => ({ id, owner: { id: owner }, title });

describe("reconnection to the real server", () => {
  it("PubSub: subscriptions are restored, and calls queued while away are sent after them", async (t) => {
    const { gate, client } = await gatedClient(t, "pubsub-user");
    const pubsub = client.services.pubsub;
    const received = record(pubsub.messagePublished);
    await within(pubsub.subscribe({ channel: "survives" }));
    await server.publish("survives", "before");
    await waitUntil(() => received.length === 1, 3000, "the first delivery");

    gate.close();
    await stopServer(client);
    assert.equal(client.state, State.Connecting);
    // Queued while disconnected: it must go out after the restored subscription.
    const queued = pubsub.publish({ channel: "survives", message: "queued while away" });
    await server.start();
    const restored = nextDispatch(client.restored, 5000, "restored");
    gate.open();
    await restored;
    assert.equal(await within(queued), null);
    assert.deepEqual(pubsub.subscriptions, ["survives"]);

    await server.publish("survives", "after");
    await waitUntil(() => received.length === 3, 3000, "the deliveries after the restart");
    assert.deepEqual(received.map((m) => m.message), ["before", "queued while away", "after"]);
    assert.equal(client.state, State.Connected);
  });

  it("PubSub: a client that is not held back reconnects by itself", async (t) => {
    const client = await connectedClient(t, server);
    const pubsub = client.services.pubsub;
    await within(pubsub.subscribe({ channel: "by-itself" }));
    const states = record(client.stateChanged);
    await stopServer(client);
    const restored = nextDispatch(client.restored, 5000, "restored");
    await server.start();
    await restored;
    const delivered = nextDispatch(pubsub.messagePublished, 3000, "a delivery after the restart");
    await server.publish("by-itself", 42);
    assert.equal((await delivered).message, 42);
    assert.deepEqual(states.at(0), { oldState: State.Connected, newState: State.Connecting });
    assert.deepEqual(states.at(-1), { oldState: State.Connecting, newState: State.Connected });
  });

  it("a call in flight when the server stops rejects with code disconnected", async (t) => {
    const client = await connectedClient(t, server);
    // server.py's `never` command does not answer.
    const inFlight = client.services.calc.call("never", {});
    inFlight.catch(() => {}); // rejects during the stop; asserted below
    await new Promise((resolve) => setTimeout(resolve, 50));
    await stopServer(client);
    await assert.rejects(within(inFlight), { name: "SnorkyError", code: ErrorCode.disconnected });
    await server.start();
    await waitUntil(() => client.isConnected, 5000, "the reconnection");
    assert.equal(await within(client.services.calc.call("add", { a: 1, b: 1 })), 2);
  });

  it("DataSync: deltas published while the client is away arrive once, in order, after it re-acquires", async (t) => {
    const owner = 101;
    const { gate, client } = await gatedClient(t, "datasync-user");
    const datasync = client.services.datasync;
    const processor = new CollectionDeltaProcessor();
    const tasks = new ArrayCollection([task(1, owner, "existing")]);
    processor.collections["Task"] = tasks;
    const received: Delta[] = [];
    datasync.onDelta = (delta) => {
      received.push(delta);
      processor.processDelta(delta);
    };
    const resyncs = record(datasync.resyncNeeded);
    const failures = record(client.restoreFailed);

    const token = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
    await within(datasync.acquireSubscription({ token }));
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(2, owner, "while connected") }]);
    await waitUntil(() => received.length === 1, 3000, "the first delta");

    gate.close();
    await stopServer(client);
    await server.start();
    // Published while the client is disconnected (its next attempt waits for the gate).
    const missed = [
      { type: "insert", model: "Task", data: task(3, owner, "while away 1") },
      { type: "update", model: "Task", oldData: task(1, owner, "existing"), newData: task(1, owner, "renamed while away") },
      { type: "delete", model: "Task", data: task(2, owner, "while connected") },
      { type: "insert", model: "Task", data: task(4, owner, "while away 2") },
      // Someone else's task: not for this subscription.
      { type: "insert", model: "Task", data: task(5, owner + 1, "not mine") },
    ];
    await server.publishDeltas(missed.slice(0, 2));
    await server.publishDeltas(missed.slice(2));
    assert.equal(client.isConnected, false);

    const restored = nextDispatch(client.restored, 5000, "restored");
    gate.open();
    await restored;
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(6, owner, "after") }]);
    await waitUntil(() => received.length >= 6, 3000, "the missed deltas and the one after");
    // Nothing more trickles in (no duplicate).
    await new Promise((resolve) => setTimeout(resolve, 100));

    assert.deepEqual(received, [
      { type: "insert", model: "Task", data: task(2, owner, "while connected") },
      ...missed.slice(0, 4),
      { type: "insert", model: "Task", data: task(6, owner, "after") },
    ]);
    assert.deepEqual(tasks.array, [task(1, owner, "renamed while away"), task(3, owner, "while away 1"), task(4, owner, "while away 2"), task(6, owner, "after")]);
    assert.deepEqual(datasync.subscriptions, [token]);
    assert.deepEqual(resyncs, []);
    assert.deepEqual(failures, []);
  });

  it("DataSync: a token whose missed deltas are no longer retained fires resyncNeeded; the others resume", async (t) => {
    const gate = new Gate();
    const services = { datasync: DataSync, datasync_small: DataSync };
    const client = new Snorky(WebSocket, server.wsUrl, services, {
      ...LIVE,
      token: gate.tokenSource(await server.token("overflow-user")),
    });
    t.after(() => client.close());
    await waitUntil(() => client.isConnected, 5000, "the connection");
    const { datasync, datasync_small: small } = client.services;
    const big: Delta[] = [];
    const little: Delta[] = [];
    datasync.onDelta = (delta) => big.push(delta);
    small.onDelta = (delta) => little.push(delta);
    const resyncs = record(small.resyncNeeded);
    const failures = record(client.restoreFailed);

    const owner = 202;
    const keeps = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
    const overflows = await server.authorize([{ dealer: "AllTasks", query: null }], "datasync_small_backend");
    await within(datasync.acquireSubscription({ token: keeps }));
    await within(small.acquireSubscription({ token: overflows }));

    gate.close();
    await stopServer(client);
    await server.start();
    // datasync_small retains 2 deltas: a client that missed 3 cannot resume.
    const deltas = [1, 2, 3].map((id) => ({ type: "insert", model: "Task", data: task(id, owner, `away ${id}`) }));
    await server.publishDeltas(deltas);
    await server.publishDeltas(deltas, "datasync_small_backend");

    const resync = nextDispatch(small.resyncNeeded, 5000, "resyncNeeded");
    gate.open();
    assert.equal(await resync, overflows);
    await waitUntil(() => big.length === 3, 3000, "the resumed subscription's deltas");
    assert.deepEqual(big, deltas);
    assert.deepEqual(little, []);
    assert.deepEqual(resyncs, [overflows]);
    assert.deepEqual(small.subscriptions, []);
    assert.deepEqual(datasync.subscriptions, [keeps]);
    assert.equal(failures.length, 1);
    assert.equal(failures[0]?.service, "datasync_small");
    assert.equal(failures[0]?.command, "acquireSubscription");
    assert.equal(failures[0]?.error.message, "Offset not retained");

    // What the application does then: a new token, and deltas flow again.
    const fresh = await server.authorize([{ dealer: "AllTasks", query: null }], "datasync_small_backend");
    await within(small.acquireSubscription({ token: fresh }));
    await server.publishDeltas([{ type: "delete", model: "Task", data: task(1, owner, "away 1") }], "datasync_small_backend");
    await waitUntil(() => little.length === 1, 3000, "a delta on the new token");
    assert.deepEqual(little, [{ type: "delete", model: "Task", data: task(1, owner, "away 1") }]);
  });

  it("every service restores its state: Chat, Cursors, Messaging", async (t) => {
    const { gate: aliceGate, client: alice } = await gatedClient(t, "alice");
    const bob = await connectedClient(t, server, { token: await server.token("bob") });
    const document = "restore-doc";
    const failures = record(alice.restoreFailed);

    await within(alice.services.chat.join({ channel: "restore-room" }));
    await within(bob.services.chat.join({ channel: "restore-room" }));
    await within(alice.services.cursors.join({ document }));
    await within(bob.services.cursors.join({ document }));
    const own = await within(alice.services.cursors.createCursor({ document, position: 1, status: "typing" }));
    await within(alice.services.cursors.updateCursor({ privateHandle: own.privateHandle, newData: { position: 5 } }));
    await within(alice.services.messaging.registerParticipant({ name: "alice-inbox" }));
    await waitUntil(() => bob.services.cursors.getCursors(document).length === 1, 3000, "bob sees alice's cursor");

    aliceGate.close();
    await stopServer(alice, bob);
    const bobRestored = nextDispatch(bob.restored, 5000, "bob restored");
    await server.start();
    // Bob is back first; alice is still away, so her names and cursors are gone meanwhile.
    await bobRestored;
    assert.deepEqual(bob.services.chat.getMembers("restore-room"), ["bob"]);
    assert.deepEqual(bob.services.cursors.getCursors(document), []);

    const cursorBack = nextDispatch(bob.services.cursors.cursorAdded, 5000, "alice's cursor again");
    const aliceRestored = nextDispatch(alice.restored, 5000, "alice restored");
    aliceGate.open();
    await aliceRestored;
    const cursor = await cursorBack;
    assert.equal(cursor.owner, "alice");
    assert.equal(cursor.position, 5);
    assert.equal(cursor.status, "typing");
    assert.equal(cursor.publicHandle, own.publicHandle, "the restored cursor's public handle is the one the client holds");
    assert.deepEqual(failures, []);

    assert.deepEqual([...alice.services.chat.getMembers("restore-room")].sort(), ["alice", "bob"]);
    await waitUntil(() => bob.services.chat.getMembers("restore-room").length === 2, 3000, "bob sees alice rejoin");
    assert.deepEqual(await within(bob.services.messaging.listParticipants()), ["alice-inbox"]);
    const message = nextDispatch(alice.services.messaging.participantMessage, 3000, "a message to the restored name");
    await within(bob.services.messaging.registerParticipant({ name: "bob-inbox" }));
    await within(bob.services.messaging.send({ sender: "bob-inbox", dest: "alice-inbox", body: "welcome back" }));
    assert.deepEqual(await message, { type: "message", sender: "bob-inbox", dest: "alice-inbox", body: "welcome back" });
  });

  it("DataSync: after a restart that lost every subscription, resyncNeeded fires with the old token", async (t) => {
    const client = await connectedClient(t, server);
    const datasync = client.services.datasync;
    const token = await server.authorize([{ dealer: "AllTasks", query: null }]);
    await within(datasync.acquireSubscription({ token }));
    const failures = record(client.restoreFailed);

    await stopServer(client);
    const resync = nextDispatch(datasync.resyncNeeded, 5000, "resyncNeeded");
    await server.start({ fresh: true });
    assert.equal(await resync, token);
    assert.deepEqual(datasync.subscriptions, []);
    assert.equal(failures[0]?.error.message, "No such subscription");
    // The old token is gone for good; a new one works.
    await assert.rejects(within(datasync.acquireSubscription({ token })), {
      code: ErrorCode.server,
      message: "No such subscription",
    });
    const fresh = await server.authorize([{ dealer: "AllTasks", query: null }]);
    await within(datasync.acquireSubscription({ token: fresh }));
    const delta = nextDispatch(datasync.deltaReceived, 3000, "a delta on the new token");
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(9, 0, "new") }]);
    assert.deepEqual(await delta, { type: "insert", model: "Task", data: task(9, 0, "new") });
  });

  it("DataSync: a client closed for not reading (1008) resumes by offset, or resyncs without offsets, then carries on", async (t) => {
    // A server of its own, with a small outgoing queue per connection.
    const small = await RealServer.start({ args: ["--option", "max_frame_size=16384", "--option", "outbox_limit=65536"] });
    t.after(() => small.close());
    // The sockets the client opens, so the test can pause the current one's reading.
    const { socketClass, sockets } = recordingSocketClass();
    const services = { datasync: DataSync, datasync_small: DataSync, pubsub: PubSub };
    const client = new Snorky(socketClass, small.wsUrl, services, LIVE);
    t.after(() => client.close());
    await waitUntil(() => client.isConnected, 5000, "the connection");
    const { datasync, datasync_small: legacy, pubsub } = client.services;
    // One subscription with offsets (the default), one as a 0.1 client would hold it.
    legacy.offsets = false;
    const token = await small.authorize([{ dealer: "AllTasks", query: null }]);
    const legacyToken = await small.authorize([{ dealer: "AllTasks", query: null }], "datasync_small_backend");
    await within(datasync.acquireSubscription({ token }));
    await within(legacy.acquireSubscription({ token: legacyToken }));
    await within(pubsub.subscribe({ channel: "still here" }));
    const resyncs = record(datasync.resyncNeeded);
    const legacyResyncs = record(legacy.resyncNeeded);
    const failures = record(client.restoreFailed);

    // The client stops reading while the backend publishes more PubSub messages than the
    // socket buffers and its queue may hold (about 4.5 MB on loopback here; deltas would wait in
    // their stream, messages have nowhere else to be).
    sockets.at(-1)!.pause();
    const bulky = "x".repeat(8000);
    for (let message = 0; message < 1000; message++) {
      await small.publish("still here", { message, bulky });
    }
    const disconnected = nextDispatch(client.disconnected, 5000, "the 1008 close");
    const restored = nextDispatch(client.restored, 5000, "restored");
    sockets.at(-1)!.resume();
    assert.equal((await disconnected).code, CloseCode.policyViolation);
    assert.deepEqual(legacyResyncs, [legacyToken], "messages were lost: without offsets the client resyncs");
    assert.deepEqual(legacy.subscriptions, []);
    await restored;
    assert.deepEqual(resyncs, [], "with an offset the subscription resumes exactly");
    assert.deepEqual(datasync.subscriptions, [token]);
    assert.deepEqual(failures, [], "the client did not try to resume the 0.1 token");
    const delta = nextDispatch(datasync.deltaReceived, 3000, "a delta after the resume");
    await small.publishDeltas([{ type: "insert", model: "Task", data: task(7, 0, "after") }]);
    assert.deepEqual(await delta, { type: "insert", model: "Task", data: task(7, 0, "after") });
    const delivered = nextDispatch(pubsub.messagePublished, 3000, "a PubSub message after the reconnection");
    await small.publish("still here", "yes");
    assert.equal((await delivered).message, "yes");
  });
});
