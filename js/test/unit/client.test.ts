import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { WebSocket } from "ws";
import { Snorky, State } from "../../src/client.js";
import { ErrorCode } from "../../src/codes.js";
import { SnorkyError } from "../../src/errors.js";
import { RPCService } from "../../src/services/base.js";
import type { StateChange } from "../../src/types.js";
import { FakeServer, NO_REPLY, RpcError } from "../support/fakeServer.js";
import { connected, FAST, harness, maxJitter } from "../support/harness.js";
import { nextDispatch, record, sleep, waitUntil, within } from "../support/wait.js";

/** Asserts that `promise` rejects with a SnorkyError of `code` (and `message`, if given). */
async function rejectsWith(promise: Promise<unknown>, code: string, message?: string): Promise<void> {
  await assert.rejects(within(promise, 3000, `rejection with ${code}`), (error: unknown) => {
    assert.ok(error instanceof SnorkyError, `not a SnorkyError: ${String(error)}`);
    assert.equal(error.code, code);
    if (message !== undefined) assert.equal(error.message, message);
    return true;
  });
}

describe("RPC", () => {
  it("resolves with the server's data", async (t) => {
    const { server, s } = await connected(t);
    server.on("messaging", "listParticipants", () => ["alice", "bob"]);
    assert.deepEqual(await within(s.messaging.listParticipants()), ["alice", "bob"]);
    const [request] = server.calls("messaging", "listParticipants");
    assert.deepEqual(request?.message.params, {});
  });

  it("rejects with an Error whose message is the server's text", async (t) => {
    const { server, s } = await connected(t);
    server.on("pubsub", "subscribe", () => {
      throw new RpcError("Already subscribed");
    });
    await rejectsWith(s.pubsub.subscribe({ channel: "news" }), ErrorCode.server, "Already subscribed");
    const error = await s.pubsub.subscribe({ channel: "news" }).catch((e: unknown) => e);
    assert.ok(error instanceof Error);
    assert.equal((error as Error).message, "Already subscribed");
  });

  it("sends envelopes with distinct, increasing callIds and matches replies by callId", async (t) => {
    const { server, s } = await connected(t);
    // Answer the first call last: replies are matched by callId, not by order.
    const held: Array<() => void> = [];
    server.on("pubsub", "publish", (params, request) => {
      if (params.message === "first") {
        held.push(() =>
          server.current.send({ service: "pubsub", message: { type: "response", callId: request.message.callId, data: "one" } }),
        );
        return NO_REPLY;
      }
      return params.message;
    });
    const first = s.pubsub.publish({ channel: "c", message: "first" });
    const second = s.pubsub.publish({ channel: "c", message: "second" });
    assert.equal(await within(second), "second");
    held.forEach((send) => send());
    assert.equal(await within(first), "one");

    await within(s.chat.read({ channel: "c" }));
    const ids = server.received.map((r) => r.message.callId);
    assert.ok(ids.every((id) => typeof id === "number"));
    assert.deepEqual([...ids].sort((a, b) => a - b), ids);
    assert.equal(new Set(ids).size, ids.length);
    assert.deepEqual(server.received[0], {
      connection: 0,
      service: "pubsub",
      message: { command: "publish", params: { channel: "c", message: "first" }, callId: ids[0] },
    });
  });

  it("ignores bad frames and replies it cannot match, and keeps working", async (t) => {
    const { server, client, s } = await connected(t);
    server.on("pubsub", "publish", () => NO_REPLY);
    const hanging = s.pubsub.publish({ channel: "c", message: 1 });
    await server.waitForFrame((r) => r.message.command === "publish");
    const callId = server.received[0]?.message.callId;
    for (const frame of [
      "not json",
      "[1, 2]",
      JSON.stringify({ message: { type: "message" } }),
      JSON.stringify({ service: "nope", message: { type: "message" } }),
      JSON.stringify({ service: "toString", message: { type: "message" } }),
      JSON.stringify({ service: "pubsub", message: "text" }),
      JSON.stringify({ service: "pubsub", message: { type: "response", callId: 12345, data: 1 } }),
      // Right callId, wrong service: not our reply.
      JSON.stringify({ service: "chat", message: { type: "response", callId, data: "wrong" } }),
    ]) {
      server.current.send(frame);
    }
    server.push("pubsub", { type: "response", callId, data: "right" });
    assert.equal(await within(hanging), "right");
    assert.equal(client.state, State.Connected);
  });

  it("custom services: call(), addRPCMethods and notificationReceived", async (t) => {
    class Votes extends RPCService {
      declare vote: (params: { option: number }) => Promise<unknown>;
    }
    Votes.addRPCMethods(["vote"]);
    assert.throws(() => Votes.addRPCMethods(["call"]), /already exists/);

    const server = await FakeServer.start();
    const client = new Snorky(WebSocket, server.url, { votes: Votes }, FAST);
    t.after(async () => {
      client.close();
      await server.stop();
    });
    server.on("votes", "vote", (params) => params.option * 10);
    server.on("votes", "tally", () => ({ total: 3 }));
    assert.equal(await within(client.services.votes.vote({ option: 2 })), 20);
    assert.deepEqual(await within(client.services.votes.call("tally")), { total: 3 });
    assert.deepEqual(await within(client.services.votes.rpcCall("tally", {})), { total: 3 });
    const pushed = nextDispatch(client.services.votes.notificationReceived);
    server.push("votes", { type: "tallyChanged", total: 4 });
    assert.deepEqual(await pushed, { type: "tallyChanged", total: 4 });
  });

  it("params that are not JSON reject without sending anything", async (t) => {
    const { server, s } = await connected(t);
    const circular: Record<string, unknown> = {};
    circular["self"] = circular;
    await rejectsWith(s.pubsub.publish({ channel: "c", message: circular as never }), ErrorCode.invalidParams);
    await within(s.pubsub.publish({ channel: "c", message: 1 }));
    assert.equal(server.received.length, 1);
  });
});

describe("connection", () => {
  it("goes Connecting -> Connected with one stateChanged per change, and dispatches connected", async (t) => {
    const server = await FakeServer.start();
    const client = new Snorky(WebSocket, server.url, {}, FAST);
    t.after(async () => {
      client.close();
      await server.stop();
    });
    assert.equal(client.state, State.Connecting);
    assert.equal(client.state, "connecting");
    const changes = record(client.stateChanged);
    await within(new Promise<void>((resolve) => client.connected.addOnce(resolve)), 2000, "connected");
    assert.equal(client.state, State.Connected);
    assert.deepEqual(changes, [{ oldState: "connecting", newState: "connected" }]);
  });

  it("puts the token in the URL, and asks a token function again for each attempt", async (t) => {
    const server = await FakeServer.start();
    t.after(() => server.stop());
    const plain = new Snorky(WebSocket, server.url, {}, { token: "a b&c" });
    t.after(() => plain.close());
    assert.equal((await server.waitForConnection(1)).url, "/ws?token=a%20b%26c");

    const withQuery = new Snorky(WebSocket, `${server.url}?v=1`, {}, { token: "t" });
    t.after(() => withQuery.close());
    assert.equal((await server.waitForConnection(2)).url, "/ws?v=1&token=t");

    const anonymous = new Snorky(WebSocket, server.url, {});
    t.after(() => anonymous.close());
    assert.equal((await server.waitForConnection(3)).url, "/ws");

    let issued = 0;
    const refreshing = new Snorky(WebSocket, server.url, {}, { ...FAST, token: async () => `fresh${++issued}` });
    t.after(() => refreshing.close());
    assert.equal((await server.waitForConnection(4)).url, "/ws?token=fresh1");
    server.current.close(1001);
    assert.equal((await server.waitForConnection(5)).url, "/ws?token=fresh2");
  });

  it("a failing token function counts as a failed attempt", async (t) => {
    const server = await FakeServer.start();
    t.after(() => server.stop());
    let calls = 0;
    const client = new Snorky(WebSocket, server.url, {}, {
      ...FAST,
      token: () => {
        if (++calls < 3) throw new Error("auth server down");
        return "ok";
      },
    });
    t.after(() => client.close());
    assert.equal((await server.waitForConnection(1)).url, "/ws?token=ok");
    assert.equal(calls, 3);
  });

  it("accepts Snorky 0.1's boolean debug argument", async (t) => {
    const debug = t.mock.method(console, "debug", () => {});
    const server = await FakeServer.start();
    const client = new Snorky(WebSocket, server.url, {}, true);
    t.after(async () => {
      client.close();
      await server.stop();
    });
    await nextDispatch(client.connected);
    assert.ok(debug.mock.callCount() > 0);
  });

  it("queues calls made before the connection opens", async (t) => {
    const { server, s } = await harness(t);
    server.on("messaging", "listParticipants", () => ["queued"]);
    const result = s.messaging.listParticipants();
    assert.deepEqual(await within(result), ["queued"]);
  });

  it("rejects calls in flight when the connection drops, with code disconnected", async (t) => {
    const { server, client, s } = await connected(t);
    server.on("pubsub", "publish", () => NO_REPLY);
    const disconnected = nextDispatch(client.disconnected);
    const call = s.pubsub.publish({ channel: "c", message: 1 });
    await server.waitForFrame((r) => r.message.command === "publish");
    server.current.close(1001, "restart");
    await rejectsWith(call, ErrorCode.disconnected);
    assert.deepEqual(await disconnected, { code: 1001, reason: "restart" });
  });

  it("calls made while disconnected wait for the reconnection", async (t) => {
    maxJitter(t);
    const { server, client, s } = await connected(t, { minReconnectDelay: 100, maxReconnectDelay: 100 });
    server.on("messaging", "listParticipants", () => ["later"]);
    const connecting = nextDispatch(client.stateChanged);
    server.current.close(1001);
    assert.equal((await connecting).newState, State.Connecting);
    const call = s.messaging.listParticipants();
    assert.deepEqual(await within(call, 3000), ["later"]);
    assert.equal(server.calls("messaging", "listParticipants", 1).length, 1);
  });

  it("a call waits at most queueTimeout for the connection", async (t) => {
    const server = await FakeServer.start();
    const port = server.port;
    await server.stop();
    const client = new Snorky(WebSocket, `ws://127.0.0.1:${port}/ws`, { pubsub: Snorky.PubSub }, {
      ...FAST,
      queueTimeout: 50,
    });
    t.after(() => client.close());
    await rejectsWith(client.services.pubsub.publish({ channel: "c", message: 1 }), ErrorCode.timeout);
    assert.equal(client.state, State.Connecting);
  });

  it("with reconnect off, a dropped client is Disconnected and calls reject at once", async (t) => {
    const { server, client, s } = await connected(t, { reconnect: false });
    const states = record(client.stateChanged);
    server.current.close(1001);
    await waitUntil(() => client.state === State.Disconnected, 2000, "disconnected");
    assert.deepEqual(states, [{ oldState: "connected", newState: "disconnected" }]);
    await rejectsWith(s.pubsub.publish({ channel: "c", message: 1 }), ErrorCode.notConnected);
    await sleep(50);
    assert.equal(server.connections.length, 1);

    // connect() starts again.
    client.connect();
    await server.waitForConnection(2);
    await within(s.pubsub.publish({ channel: "c", message: 2 }));
  });

  it("the initial connection failing with reconnect off rejects the queued calls", async (t) => {
    const server = await FakeServer.start();
    const port = server.port;
    await server.stop();
    const client = new Snorky(WebSocket, `ws://127.0.0.1:${port}/ws`, { pubsub: Snorky.PubSub }, { reconnect: false });
    t.after(() => client.close());
    await rejectsWith(client.services.pubsub.subscribe({ channel: "c" }), ErrorCode.notConnected);
    assert.equal(client.state, State.Disconnected);
  });

  it("an address the socket class refuses stops the client at once, saying why, instead of retrying", async (t) => {
    const errors: unknown[][] = [];
    const original = console.error;
    console.error = (...args: unknown[]) => errors.push(args);
    t.after(() => {
      console.error = original;
    });
    // ws refuses an ftp address, as a browser's WebSocket refuses a bad URL and SockJS a ws:// one.
    const client = new Snorky(WebSocket, "ftp://127.0.0.1:9/ws?x", { pubsub: Snorky.PubSub }, FAST);
    t.after(() => client.close());
    await rejectsWith(client.services.pubsub.subscribe({ channel: "c" }), ErrorCode.notConnected);
    assert.equal(client.state, State.Disconnected);
    assert.equal(errors.length, 1);
    assert.match(String(errors[0]?.[0]), /cannot open a connection to "ftp:\/\/127\.0\.0\.1:9\/ws\?x".*not reconnecting/);
    await sleep(60);
    assert.equal(errors.length, 1, "no second attempt");
  });

  it("does not reconnect after a terminal close code", async (t) => {
    const { server, client } = await connected(t);
    server.current.close(1002, "protocol error");
    await waitUntil(() => client.state === State.Disconnected, 2000, "disconnected");
    await sleep(60);
    assert.equal(server.connections.length, 1);
  });

  it("gives up after maxReconnectAttempts", async (t) => {
    const server = await FakeServer.start();
    const client = new Snorky(WebSocket, server.url, {}, { ...FAST, maxReconnectAttempts: 2 });
    t.after(() => client.close());
    await nextDispatch(client.connected);
    const states: StateChange[] = record(client.stateChanged);
    await server.stop();
    await waitUntil(() => client.state === State.Disconnected, 3000, "giving up");
    // Connected -> Connecting (attempt 1, attempt 2 fail) -> Disconnected.
    assert.deepEqual(
      states.map((s) => s.newState),
      ["connecting", "disconnected"],
    );
  });

  it("close() rejects pending and queued calls, is final, and dispatches disconnected once", async (t) => {
    const { server, client, s } = await connected(t);
    server.on("pubsub", "publish", () => NO_REPLY);
    const pending = s.pubsub.publish({ channel: "c", message: 1 });
    await server.waitForFrame((r) => r.message.command === "publish");
    const disconnects = record(client.disconnected);
    const states = record(client.stateChanged);
    client.close();
    client.close();
    await rejectsWith(pending, ErrorCode.closed);
    await rejectsWith(s.pubsub.publish({ channel: "c", message: 2 }), ErrorCode.closed);
    assert.equal(client.state, State.Closed);
    assert.deepEqual(states, [{ oldState: "connected", newState: "closed" }]);
    assert.deepEqual(disconnects, [{ code: 1000, reason: "closed by the client" }]);
    assert.throws(() => client.connect(), SnorkyError);
    await sleep(50);
    assert.equal(server.connections.length, 1);
  });

  it("close() while waiting to reconnect cancels the reconnection and the queue", async (t) => {
    maxJitter(t);
    const { server, client, s } = await connected(t, { minReconnectDelay: 200, maxReconnectDelay: 200 });
    const connecting = nextDispatch(client.stateChanged);
    server.current.close(1001);
    assert.equal((await connecting).newState, State.Connecting);
    const queued = s.pubsub.subscribe({ channel: "c" });
    client.disconnect(); // 0.1's name
    await rejectsWith(queued, ErrorCode.closed);
    await sleep(300);
    assert.equal(server.connections.length, 1);
  });

  it("close() during the opening handshake ends quietly", async (t) => {
    const server = await FakeServer.start();
    t.after(() => server.stop());
    const errors = t.mock.method(console, "error", () => {});
    const client = new Snorky(WebSocket, server.url, { pubsub: Snorky.PubSub }, FAST);
    const disconnects = record(client.disconnected);
    const queued = client.services.pubsub.subscribe({ channel: "c" });
    client.close();
    await rejectsWith(queued, ErrorCode.closed);
    await sleep(60);
    assert.equal(client.state, State.Closed);
    assert.deepEqual(disconnects, []);
    assert.equal(errors.mock.callCount(), 0);
    assert.equal(server.received.length, 0);
  });

  it("a listener of disconnected may close the client", async (t) => {
    const { server, client } = await connected(t);
    client.disconnected.addOnce(() => client.close());
    server.current.close(1001);
    await waitUntil(() => client.state === State.Closed, 2000, "closed");
    await sleep(60);
    assert.equal(server.connections.length, 1);
  });
});
