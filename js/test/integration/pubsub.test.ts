/**
 * PubSub, RPC and a service written in Python, against the real server
 * (`server.py`, one per test file; channels are unique per test).
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { WebSocket } from "ws";
import { Snorky, State } from "../../src/client.js";
import { ErrorCode } from "../../src/codes.js";
import { RPCService } from "../../src/services/base.js";
import { connectedClient, liveClient } from "../support/live.js";
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

describe("PubSub on the real server", () => {
  it("delivers what a client, the backend and the server's process publish", async (t) => {
    const alice = await connectedClient(t, server);
    const bob = await connectedClient(t, server);
    const received = record(alice.services.pubsub.messagePublished);

    assert.equal(await within(alice.services.pubsub.subscribe({ channel: "news" })), null);
    assert.deepEqual(alice.services.pubsub.subscriptions, ["news"]);
    assert.equal(await within(bob.services.pubsub.publish({ channel: "news", message: { title: "from bob" } })), null);
    await server.publish("news", { title: "from the backend" });
    assert.equal(await server.publishLocal("news", "from the server's process"), 1);

    await waitUntil(() => received.length === 3, 3000, "three deliveries");
    assert.deepEqual(received, [
      { type: "message", channel: "news", message: { title: "from bob" } },
      { type: "message", channel: "news", message: { title: "from the backend" } },
      { type: "message", channel: "news", message: "from the server's process" },
    ]);
  });

  it("delivers to the publisher when subscribed, in publish order", async (t) => {
    const client = await connectedClient(t, server);
    const pubsub = client.services.pubsub;
    const received = record(pubsub.messagePublished);
    await within(pubsub.subscribe({ channel: "own" }));
    await within(Promise.all(Array.from({ length: 20 }, (_, i) => pubsub.publish({ channel: "own", message: i }))));
    await waitUntil(() => received.length === 20, 3000, "20 deliveries");
    assert.deepEqual(
      received.map((m) => m.message),
      Array.from({ length: 20 }, (_, i) => i),
    );
  });

  it("rejects with the server's exact error text, and the connection carries on", async (t) => {
    const client = await connectedClient(t, server);
    const pubsub = client.services.pubsub;
    await within(pubsub.subscribe({ channel: "twice" }));
    await assert.rejects(within(pubsub.subscribe({ channel: "twice" })), serverError("Already subscribed"));
    await assert.rejects(within(pubsub.unsubscribe({ channel: "never" })), serverError("Not subscribed"));
    // server.py's PubSub refuses channels starting with "readonly" (a Python can_publish hook).
    await assert.rejects(
      within(pubsub.publish({ channel: "readonly-news", message: 1 })),
      serverError("Not authorized"),
    );
    // Params the server does not accept: refused by the server, not by the client.
    await assert.rejects(within(pubsub.call("subscribe", {})), serverError("Invalid params"));
    await assert.rejects(within(pubsub.call("subscribe", { channel: 1, extra: true })), serverError("Invalid params"));
    await assert.rejects(within(pubsub.call("explode", {})), serverError("Unknown command"));

    assert.equal(client.state, State.Connected);
    assert.deepEqual(pubsub.subscriptions, ["twice"]);
    const delivered = nextDispatch(pubsub.messagePublished, 3000, "a delivery after the errors");
    await within(pubsub.publish({ channel: "twice", message: "still here" }));
    assert.equal((await delivered).message, "still here");
  });

  it("compares channels as JSON values, and stops delivering after unsubscribe", async (t) => {
    const client = await connectedClient(t, server);
    const pubsub = client.services.pubsub;
    const received = record(pubsub.messagePublished);
    await within(pubsub.subscribe({ channel: { room: 7, kind: "chat" } }));
    await within(pubsub.subscribe({ channel: ["list", 1] }));
    await assert.rejects(within(pubsub.subscribe({ channel: { kind: "chat", room: 7 } })), serverError("Already subscribed"));

    await server.publish({ kind: "chat", room: 7 }, "by value");
    await server.publish(["list", 1], "arrays too");
    await waitUntil(() => received.length === 2, 3000, "two deliveries");
    assert.deepEqual(received.map((m) => m.message), ["by value", "arrays too"]);

    await within(pubsub.unsubscribe({ channel: { kind: "chat", room: 7 } }));
    assert.deepEqual(pubsub.subscriptions, [["list", 1]]);
    await server.publish({ room: 7, kind: "chat" }, "too late");
    await server.publish(["list", 1], "sentinel");
    // Deliveries keep publish order: once the sentinel is here, the other would have been too.
    await waitUntil(() => received.length >= 3, 3000, "the sentinel");
    assert.deepEqual(received.map((m) => m.message), ["by value", "arrays too", "sentinel"]);
  });

  it("a closed client's subscriptions go away on the server", async (t) => {
    const leaving = await connectedClient(t, server);
    await within(leaving.services.pubsub.subscribe({ channel: "leaving" }));
    assert.equal(await server.publishLocal("leaving", 1), 1);
    leaving.close();
    assert.equal(leaving.state, State.Closed);
    const deadline = Date.now() + 2000;
    while ((await server.publishLocal("leaving", 2)) !== 0) {
      assert.ok(Date.now() < deadline, "the subscription outlived the connection");
      await sleep(20);
    }
  });
});

describe("RPC on the real server", () => {
  it("matches replies to calls by callId, with many calls in flight", async (t) => {
    const client = await connectedClient(t, server);
    const calc = client.services.calc;
    const calls = Array.from({ length: 60 }, (_, i) =>
      i % 3 === 2
        ? calc.call("refuse", { text: `no ${i}` }).then(
            () => `resolved ${i}`,
            (error: Error) => error.message,
          )
        : calc.call<number>("add", { a: i, b: 1000 }),
    );
    const results = await within(Promise.all(calls), 5000, "60 answers");
    assert.deepEqual(
      results,
      Array.from({ length: 60 }, (_, i) => (i % 3 === 2 ? `no ${i}` : i + 1000)),
    );
  });

  it("reaches a Python RPCService: results, errors, pushes, async and deferred commands", async (t) => {
    const client = await connectedClient(t, server);
    const calc = client.services.calc;
    assert.equal(await within(calc.call("add", { a: 2, b: 3 })), 5);
    assert.deepEqual(await within(calc.call("echo", { value: { nested: [1, "two", null, true] } })), {
      nested: [1, "two", null, true],
    });
    assert.equal(await within(calc.call("echo", {})), null);
    assert.deepEqual(await within(calc.call("later", { value: 7 })), { later: 7 });
    assert.deepEqual(await within(calc.call("deferred", { value: "x" })), { deferred: "x" });

    // RPCError text, signature checks, and an exception (whose details stay in the server's log).
    await assert.rejects(within(calc.call("refuse", { text: "You shall not pass" })), serverError("You shall not pass"));
    await assert.rejects(within(calc.call("add", { a: 1 })), serverError("Invalid params"));
    await assert.rejects(within(calc.call("add", { a: 1, b: "2" })), serverError("Invalid params"));
    await assert.rejects(within(calc.call("add", { a: 1, b: 2, c: 3 })), serverError("Invalid params"));
    await assert.rejects(within(calc.call("crash", {})), serverError("Internal error"));
    await assert.rejects(within(calc.call("nope", {})), serverError("Unknown command"));

    // A message pushed with send_message_to arrives before the reply that follows it.
    const pushed = record(calc.notificationReceived);
    assert.equal(await within(calc.call("push", { message: { hello: "js" } })), true);
    assert.deepEqual(pushed, [{ type: "pushed", message: { hello: "js" } }]);

    // The anonymous connection, as the Python service sees it.
    assert.deepEqual(await within(calc.call("whoami", {})), { identity: null, info: null });
  });

  it("methods added with addRPCMethods call the Python service", async (t) => {
    class Calculator extends RPCService {
      declare add: (params: { a: number; b: number }) => Promise<number>;
      declare echo: (params: { value: unknown }) => Promise<unknown>;
    }
    Calculator.addRPCMethods(["add", "echo"]);
    const client = new Snorky(WebSocket, server.wsUrl, { calc: Calculator });
    t.after(() => client.close());
    assert.equal(await within(client.services.calc.add({ a: 40, b: 2 })), 42);
    assert.equal(await within(client.services.calc.echo({ value: "hi" })), "hi");
  });

  it("the server sees the identity of a connection token", async (t) => {
    const token = await server.token("alice", { info: { name: "Alice" } });
    const client = await connectedClient(t, server, { token });
    assert.deepEqual(await within(client.services.calc.call("whoami", {})), {
      identity: "alice",
      info: { name: "Alice" },
    });
  });

  it("a refused token fails the handshake; the client gives up after maxReconnectAttempts", async (t) => {
    const client = liveClient(t, server, { token: "not.a.jwt", maxReconnectAttempts: 2, minReconnectDelay: 5, maxReconnectDelay: 10 });
    const connected = record(client.connected);
    await waitUntil(() => client.state === State.Disconnected, 5000, "the client to give up");
    assert.equal(connected.length, 0);
    await assert.rejects(client.services.pubsub.subscribe({ channel: "x" }), { code: ErrorCode.notConnected });
  });

  it("a token source is asked again after a refused handshake", async (t) => {
    const valid = await server.token("retry");
    const asked: string[] = [];
    const client = liveClient(t, server, {
      // The first token is refused (HTTP 401 at the handshake); the next one is good.
      token: async () => {
        asked.push(asked.length === 0 ? "expired.or.forged" : valid);
        return asked.at(-1)!;
      },
    });
    await waitUntil(() => client.isConnected, 5000, "the connection with the second token");
    assert.equal(asked.length, 2);
    assert.deepEqual(await within(client.services.calc.call("whoami", {})), { identity: "retry", info: null });
  });
});
