/**
 * Chat, Cursors and Messaging against the real server, with identities from
 * real connection tokens (`snorky.connection_token`).
 */

import assert from "node:assert/strict";
import { after, before, describe, it, type TestContext } from "node:test";
import { ErrorCode } from "../../src/codes.js";
import type { ChatPresence } from "../../src/types.js";
import { connectedClient, type LiveClient } from "../support/live.js";
import { RealServer } from "../support/realServer.js";
import { nextDispatch, record, sleep, waitUntil, within } from "../support/wait.js";

let server: RealServer;
before(async () => {
  server = await RealServer.start();
});
after(async () => {
  await server?.close();
});

const serverError = (message: string) => ({ name: "SnorkyError", code: ErrorCode.server, message });

/** ISO 8601 with an offset (`Z` or `+hh:mm`), as docs/protocol.md says Chat timestamps are. */
const ISO_WITH_OFFSET = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/;

/** A connected client whose connection token says it is `identity`. */
async function user(t: TestContext, identity: string): Promise<LiveClient> {
  return connectedClient(t, server, { token: await server.token(identity) });
}

/** Waits a little, so that a message that should not come would have come. */
const settle = () => sleep(150);

describe("Chat on the real server", () => {
  it("join, members, presence joined/left, send and message between two identities", async (t) => {
    const alice = await user(t, "alice");
    const bob = await user(t, "bob");
    const channel = "lobby";

    assert.deepEqual(await within(alice.services.chat.join({ channel })), { members: ["alice"] });
    assert.deepEqual(alice.services.chat.getMembers(channel), ["alice"]);
    assert.deepEqual(alice.services.chat.channels, [channel]);

    const aliceSees = record(alice.services.chat.presenceReceived);
    const bobSees = record(bob.services.chat.presenceReceived);
    const joined = nextDispatch(alice.services.chat.presenceReceived, 3000, "bob's presence");
    const bobJoin = await within(bob.services.chat.join({ channel }));
    assert.deepEqual([...bobJoin.members].sort(), ["alice", "bob"]);
    const presence: ChatPresence = await joined;
    assert.deepEqual({ ...presence, timestamp: "" }, { type: "presence", from: "bob", channel, status: "joined", timestamp: "" });
    assert.match(presence.timestamp, ISO_WITH_OFFSET);
    assert.deepEqual([...alice.services.chat.getMembers(channel)].sort(), ["alice", "bob"]);

    // A message goes to every connection in the channel, the sender's included.
    const toAlice = nextDispatch(alice.services.chat.messageReceived, 3000, "the message at alice");
    const toBob = nextDispatch(bob.services.chat.messageReceived, 3000, "the message at bob");
    assert.equal(await within(bob.services.chat.send({ channel, body: { text: "hi alice" } })), null);
    for (const message of await Promise.all([toAlice, toBob])) {
      assert.deepEqual({ ...message, timestamp: "" }, { type: "message", from: "bob", channel, body: { text: "hi alice" }, timestamp: "" });
      assert.match(message.timestamp, ISO_WITH_OFFSET);
      assert.ok(Math.abs(Date.parse(message.timestamp) - Date.now()) < 60_000, message.timestamp);
    }

    // Leaving: the others get "left" and their member list follows.
    const left = nextDispatch(alice.services.chat.presenceReceived, 3000, "bob leaving");
    const members = record(alice.services.chat.membersChanged);
    assert.equal(await within(bob.services.chat.leave({ channel })), null);
    assert.equal((await left).status, "left");
    assert.deepEqual(alice.services.chat.getMembers(channel), ["alice"]);
    assert.deepEqual(members.at(-1), { channel, members: ["alice"] });
    assert.deepEqual(bob.services.chat.channels, []);

    // Disconnecting is leaving too.
    await within(bob.services.chat.join({ channel }));
    await waitUntil(() => alice.services.chat.getMembers(channel).length === 2, 3000, "bob back");
    const gone = nextDispatch(alice.services.chat.presenceReceived, 3000, "bob's disconnection");
    bob.close();
    assert.deepEqual({ ...(await gone), timestamp: "" }, { type: "presence", from: "bob", channel, status: "left", timestamp: "" });
    assert.deepEqual(alice.services.chat.getMembers(channel), ["alice"]);
    await settle();
    assert.deepEqual(
      aliceSees.map((p) => `${p.from} ${p.status}`),
      ["bob joined", "bob left", "bob joined", "bob left"],
    );
    assert.deepEqual(bobSees, [], "joined/left never go to the identity concerned, and join pushes nothing to the joiner");
  });

  it("read receipts go to the identity's other connections only; presence counts identities", async (t) => {
    const channel = { room: "receipts" };
    const tab1 = await user(t, "carol");
    const tab2 = await user(t, "carol");
    const dave = await user(t, "dave");
    await within(dave.services.chat.join({ channel }));
    const davePresence = record(dave.services.chat.presenceReceived);
    await within(tab1.services.chat.join({ channel }));
    const second = await within(tab2.services.chat.join({ channel }));
    assert.deepEqual([...second.members].sort(), ["carol", "dave"], "each identity once");
    await waitUntil(() => davePresence.length >= 1, 3000, "carol's presence");

    const reads1 = record(tab1.services.chat.readReceived);
    const readsDave = record(dave.services.chat.readReceived);
    const read = nextDispatch(tab2.services.chat.readReceived, 3000, "the read receipt in the other tab");
    assert.equal(await within(tab1.services.chat.read({ channel })), null);
    const receipt = await read;
    assert.deepEqual({ ...receipt, timestamp: "" }, { type: "read", channel, timestamp: "" });
    assert.match(receipt.timestamp, ISO_WITH_OFFSET);

    // One tab closing is not carol leaving; the last one is.
    tab1.close();
    await settle();
    assert.deepEqual(davePresence.map((p) => `${p.from} ${p.status}`), ["carol joined"]);
    tab2.close();
    await waitUntil(() => davePresence.length === 2, 3000, "carol's last connection leaving");
    assert.deepEqual(davePresence.map((p) => `${p.from} ${p.status}`), ["carol joined", "carol left"]);
    assert.deepEqual(dave.services.chat.getMembers(channel), ["dave"]);
    assert.deepEqual(reads1, []);
    assert.deepEqual(readsDave, []);
  });

  it("refusals carry the server's text", async (t) => {
    const anonymous = await connectedClient(t, server);
    await assert.rejects(within(anonymous.services.chat.join({ channel: "x" })), serverError("Not authenticated"));
    const erin = await user(t, "erin");
    await within(erin.services.chat.join({ channel: "x" }));
    await assert.rejects(within(erin.services.chat.join({ channel: "x" })), serverError("Already joined"));
    await assert.rejects(within(erin.services.chat.leave({ channel: "y" })), serverError("Not joined"));
    await assert.rejects(within(erin.services.chat.send({ channel: "y", body: "?" })), serverError("Not joined"));
    assert.deepEqual(erin.services.chat.channels, ["x"]);
  });
});

describe("Cursors on the real server", () => {
  it("create, update and remove are seen by the other connections", async (t) => {
    const document = { doc: 1 };
    const alice = await user(t, "alice");
    const bob = await user(t, "bob");
    assert.deepEqual(await within(alice.services.cursors.join({ document })), { cursors: [] });
    assert.deepEqual(await within(bob.services.cursors.join({ document })), { cursors: [] });

    const added = nextDispatch(bob.services.cursors.cursorAdded, 3000, "cursorAdded");
    const own = await within(alice.services.cursors.createCursor({ document, position: { line: 1, ch: 0 }, status: "editing" }));
    assert.equal(typeof own.publicHandle, "number");
    assert.deepEqual(alice.services.cursors.getOwnCursors(document), [own]);
    assert.deepEqual(alice.services.cursors.getCursors(document), [], "own cursors are not among the others'");
    const expected = { publicHandle: own.publicHandle, document, position: { line: 1, ch: 0 }, status: "editing", owner: "alice" };
    assert.deepEqual(await added, expected);
    assert.deepEqual(bob.services.cursors.getCursors(document), [expected]);

    // A third connection joining later gets the cursors in the join answer.
    const carol = await user(t, "carol");
    assert.deepEqual(await within(carol.services.cursors.join({ document })), { cursors: [expected] });
    assert.deepEqual(carol.services.cursors.getCursors(document), [expected]);

    const updated = nextDispatch(bob.services.cursors.cursorUpdated, 3000, "cursorUpdated");
    assert.equal(await within(alice.services.cursors.updateCursor({ privateHandle: own.privateHandle, newData: { position: { line: 2, ch: 4 } } })), null);
    assert.deepEqual(await updated, { ...expected, position: { line: 2, ch: 4 } });
    const statusUpdated = nextDispatch(bob.services.cursors.cursorUpdated, 3000, "cursorUpdated (status)");
    await within(alice.services.cursors.updateCursor({ privateHandle: own.privateHandle, newData: { status: null } }));
    assert.deepEqual(await statusUpdated, { ...expected, position: { line: 2, ch: 4 }, status: null });
    assert.deepEqual(bob.services.cursors.getCursors(document), [{ ...expected, position: { line: 2, ch: 4 }, status: null }]);

    const removed = nextDispatch(bob.services.cursors.cursorRemoved, 3000, "cursorRemoved");
    const changes = record(bob.services.cursors.cursorsChanged);
    assert.equal(await within(alice.services.cursors.removeCursor({ privateHandle: own.privateHandle })), null);
    assert.deepEqual(await removed, { publicHandle: own.publicHandle, document });
    assert.deepEqual(bob.services.cursors.getCursors(document), []);
    assert.deepEqual(changes.at(-1), { document, cursors: [] });
    assert.deepEqual(alice.services.cursors.getOwnCursors(), []);

    // Leaving, and disconnecting, remove the cursors of that connection.
    const again = await within(alice.services.cursors.createCursor({ document, position: 0, status: "a" }));
    const other = await within(carol.services.cursors.createCursor({ document, position: 9, status: "c" }));
    await waitUntil(() => bob.services.cursors.getCursors(document).length === 2, 3000, "two cursors at bob");
    assert.notEqual(again.publicHandle, other.publicHandle, "public handles are unique within a document");
    await within(alice.services.cursors.leave({ document }));
    await waitUntil(() => bob.services.cursors.getCursors(document).length === 1, 3000, "alice's cursor gone");
    assert.equal(bob.services.cursors.getCursors(document)[0]?.owner, "carol");
    carol.close();
    await waitUntil(() => bob.services.cursors.getCursors(document).length === 0, 3000, "carol's cursor gone");
  });

  it("refusals carry the server's text", async (t) => {
    const anonymous = await connectedClient(t, server);
    await assert.rejects(within(anonymous.services.cursors.join({ document: "d" })), serverError("Not authenticated"));
    const frank = await user(t, "frank");
    const cursors = frank.services.cursors;
    await assert.rejects(within(cursors.createCursor({ document: "d", position: 0, status: null })), serverError("Not joined"));
    await within(cursors.join({ document: "d" }));
    await assert.rejects(within(cursors.join({ document: "d" })), serverError("Already joined"));
    const own = await within(cursors.createCursor({ document: "d", position: 0, status: null }));
    await assert.rejects(
      within(cursors.createCursor({ document: "d", position: 1, status: null, privateHandle: own.privateHandle })),
      serverError("Reused handle"),
    );
    await assert.rejects(within(cursors.updateCursor({ privateHandle: 999, newData: { position: 1 } })), serverError("No such cursor"));
    await assert.rejects(within(cursors.removeCursor({ privateHandle: 999 })), serverError("No such cursor"));
    await assert.rejects(within(cursors.leave({ document: "elsewhere" })), serverError("Not joined"));
    // The limit is 16 cursors per connection.
    for (let i = 1; i < 16; i++) await within(cursors.createCursor({ document: "d", position: i, status: null }));
    await assert.rejects(within(cursors.createCursor({ document: "d", position: 16, status: null })), serverError("Too many cursors"));
    assert.equal(cursors.getOwnCursors("d").length, 16);
  });
});

describe("Messaging on the real server", () => {
  it("register, list, send, and names freed on disconnect", async (t) => {
    const one = await connectedClient(t, server);
    const two = await connectedClient(t, server);
    assert.equal(await within(one.services.messaging.registerParticipant({ name: "m-zoe" })), null);
    await within(one.services.messaging.registerParticipant({ name: "m-adam" }));
    await within(two.services.messaging.registerParticipant({ name: "m-mia" }));
    assert.deepEqual([...one.services.messaging.participants].sort(), ["m-adam", "m-zoe"]);
    const listed = (await within(two.services.messaging.listParticipants())).filter((name) => name.startsWith("m-"));
    assert.deepEqual(listed, ["m-adam", "m-mia", "m-zoe"], "every name on the server, sorted");

    const received = nextDispatch(two.services.messaging.participantMessage, 3000, "the message");
    assert.equal(await within(one.services.messaging.send({ sender: "m-zoe", dest: "m-mia", body: { n: [1, 2] } })), null);
    assert.deepEqual(await received, { type: "message", sender: "m-zoe", dest: "m-mia", body: { n: [1, 2] } });

    await assert.rejects(within(two.services.messaging.registerParticipant({ name: "m-zoe" })), serverError("Name already registered"));
    await assert.rejects(within(two.services.messaging.send({ sender: "m-zoe", dest: "m-mia", body: 1 })), serverError("Invalid sender"));
    await assert.rejects(within(two.services.messaging.send({ sender: "m-mia", dest: "m-nobody", body: 1 })), serverError("Unknown destination"));
    await assert.rejects(within(two.services.messaging.unregisterParticipant({ name: "m-nobody" })), serverError("Unknown participant"));
    await assert.rejects(within(two.services.messaging.unregisterParticipant({ name: "m-zoe" })), serverError("Invalid participant"));
    assert.deepEqual(two.services.messaging.participants, ["m-mia"]);

    await within(one.services.messaging.unregisterParticipant({ name: "m-adam" }));
    assert.deepEqual(one.services.messaging.participants, ["m-zoe"]);
    one.close();
    const deadline = Date.now() + 2000;
    for (;;) {
      const names = (await within(two.services.messaging.listParticipants())).filter((name) => name.startsWith("m-"));
      if (names.length === 1) {
        assert.deepEqual(names, ["m-mia"]);
        break;
      }
      assert.ok(Date.now() < deadline, `names of a closed connection still listed: ${names.join(", ")}`);
      await sleep(20);
    }
    // The freed name can be taken.
    await within(two.services.messaging.registerParticipant({ name: "m-zoe" }));
  });
});
