/**
 * The DataSync facade with offsets (docs/protocol.md, "Offsets") against the
 * scripted fake server: it opts in, keeps the last offset applied per
 * subscription, resumes with it after any reconnection, routes each delta to
 * its own subscription's target, and resyncs when the server cannot resume.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ArrayCollection, CollectionDeltaProcessor } from "../../src/collections.js";
import type { Delta } from "../../src/types.js";
import { RpcError } from "../support/fakeServer.js";
import { connected } from "../support/harness.js";
import { nextDispatch, record, sleep, waitUntil, within } from "../support/wait.js";

const insert = (id: number): Delta => ({ type: "insert", model: "Task", data: { id } });
const opted = (subscription: string, offset: string, delta: Delta) => ({ type: "delta", delta, subscription, offset });

describe("DataSync offsets", () => {
  it("opts in, and keeps the offset of the reply until a delta says more", async (t) => {
    const { server, s } = await connected(t);
    server.on("datasync", "acquireSubscription", () => ({ offset: "7" }));
    assert.deepEqual(await within(s.datasync.acquireSubscription({ token: "a" })), { offset: "7" });
    assert.deepEqual(server.calls("datasync", "acquireSubscription")[0]?.message.params, { token: "a", offsets: true });
    assert.equal(s.datasync.offsetOf("a"), "7");
    const applied = nextDispatch(s.datasync.subscriptionDelta, 2000, "subscriptionDelta");
    server.push("datasync", opted("a", "8", insert(1)));
    assert.deepEqual(await applied, { subscription: "a", offset: "8", delta: insert(1) });
    assert.equal(s.datasync.offsetOf("a"), "8");
  });

  it("a delta that came before the reply (what the subscription missed) is newer than the reply's offset", async (t) => {
    const { server, s } = await connected(t);
    server.on("datasync", "acquireSubscription", (params) => {
      server.push("datasync", opted(params.token, "5", insert(5)));
      return { offset: "4" };
    });
    await within(s.datasync.acquireSubscription({ token: "a" }));
    assert.equal(s.datasync.offsetOf("a"), "5");
  });

  it("routes each delta to its own subscription's target: two views of one model", async (t) => {
    const { server, s } = await connected(t);
    server.on("datasync", "acquireSubscription", () => ({ offset: "0" }));
    const mine = new ArrayCollection();
    const everything = new ArrayCollection();
    const seen: Array<[Delta, string]> = [];
    await within(s.datasync.acquireSubscription({ token: "mine" }, new CollectionDeltaProcessor({ Task: mine })));
    await within(s.datasync.acquireSubscription({ token: "all" }, new CollectionDeltaProcessor({ Task: everything })));
    await within(s.datasync.acquireSubscription({ token: "fn" }, (delta, subscription) => seen.push([delta, subscription])));
    const all = record(s.datasync.deltaReceived);
    server.push("datasync", opted("all", "1", insert(1)));
    server.push("datasync", opted("mine", "2", insert(2)));
    server.push("datasync", opted("all", "2", insert(2)));
    server.push("datasync", opted("fn", "2", insert(2)));
    await waitUntil(() => all.length === 4, 2000, "four deltas");
    assert.deepEqual(mine.array, [{ id: 2 }]);
    assert.deepEqual(everything.array, [{ id: 1 }, { id: 2 }]);
    assert.deepEqual(seen, [[insert(2), "fn"]]);
  });

  it("resumes every subscription after the last offset it applied, after any reconnection", async (t) => {
    const { server, client, s } = await connected(t);
    server.on("datasync", "acquireSubscription", () => ({ offset: "10" }));
    await within(s.datasync.acquireSubscription({ token: "a" }));
    await within(s.datasync.acquireSubscription({ token: "b" }));
    await within(s.datasync.acquireSubscription({ token: "quiet" }));
    server.push("datasync", opted("a", "11", insert(1)));
    server.push("datasync", opted("b", "11", insert(1)));
    server.push("datasync", opted("a", "12", insert(2)));
    await waitUntil(() => s.datasync.offsetOf("a") === "12", 2000, "the deltas");
    const restored = nextDispatch(client.restored, 3000, "restored");
    // Dropped by the network: no close frame.
    server.current.terminate();
    await server.waitForConnection(2);
    await restored;
    const resumes = server.calls("datasync", "acquireSubscription", 1).map((r) => r.message.params);
    assert.deepEqual(resumes, [
      { token: "a", offsets: true, after: "12" },
      { token: "b", offsets: true, after: "11" },
      { token: "quiet", offsets: true, after: "10" },
    ]);
  });

  it("a close with 1008 resumes subscriptions with an offset instead of resyncing them", async (t) => {
    const { server, client, s } = await connected(t);
    server.on("datasync", "acquireSubscription", () => ({ offset: "3" }));
    await within(s.datasync.acquireSubscription({ token: "a" }));
    const resyncs = record(s.datasync.resyncNeeded);
    const restored = nextDispatch(client.restored, 3000, "restored");
    server.current.close(1008, "fell behind");
    await restored;
    assert.deepEqual(server.calls("datasync", "acquireSubscription", 1)[0]?.message.params, { token: "a", offsets: true, after: "3" });
    assert.deepEqual(resyncs, []);
    assert.deepEqual(s.datasync.subscriptions, ["a"]);
  });

  it("resyncNeeded when the server cannot resume from the offset", async (t) => {
    const { server, s } = await connected(t);
    server.on("datasync", "acquireSubscription", () => ({ offset: "3" }));
    await within(s.datasync.acquireSubscription({ token: "old" }));
    await within(s.datasync.acquireSubscription({ token: "fine" }));
    server.on("datasync", "acquireSubscription", (params) => {
      if (params.token === "old") throw new RpcError("Offset not retained");
      return { offset: "3" };
    });
    const resync = nextDispatch(s.datasync.resyncNeeded, 3000, "resyncNeeded");
    server.current.close(1001);
    assert.equal(await resync, "old");
    await sleep(20);
    assert.deepEqual(s.datasync.subscriptions, ["fine"]);
    assert.equal(s.datasync.offsetOf("old"), null);
  });

  it("a resume the server cannot serve for now (Service unavailable) is tried again later, not resynced", async (t) => {
    const { server, client, s } = await connected(t);
    server.on("datasync", "acquireSubscription", () => ({ offset: "3" }));
    await within(s.datasync.acquireSubscription({ token: "a" }));
    let refusals = 2;
    server.on("datasync", "acquireSubscription", () => {
      if (refusals-- > 0) throw new RpcError("Service unavailable");
      return { offset: "3" };
    });
    const resyncs = record(s.datasync.resyncNeeded);
    const restored = nextDispatch(client.restored, 3000, "restored");
    server.current.close(1001);
    await restored;
    // Refused twice, after 1 s and 2 s: the third attempt, 3 s later, resumes it.
    await waitUntil(() => server.calls("datasync", "acquireSubscription", 1).length === 3, 6000, "three attempts");
    const attempts = server.calls("datasync", "acquireSubscription", 1).map((r) => r.message.params);
    assert.deepEqual(attempts, Array(3).fill({ token: "a", offsets: true, after: "3" }));
    await sleep(50);
    assert.deepEqual(resyncs, []);
    assert.deepEqual(s.datasync.subscriptions, ["a"]);
    // A cancelled subscription is not tried again.
    refusals = 1;
    server.current.close(1001);
    await server.waitForConnection(3);
    await waitUntil(() => server.calls("datasync", "acquireSubscription", 2).length === 1, 3000, "the refused resume");
    await within(s.datasync.cancelSubscription({ token: "a" }).catch(() => null));
    await sleep(1200);
    assert.equal(server.calls("datasync", "acquireSubscription", 2).length, 1, "no retry after the cancel");
  });

  it("with offsets turned off it speaks 0.1: no offsets sent, 1008 resyncs", async (t) => {
    const { server, s } = await connected(t);
    s.datasync.offsets = false;
    await within(s.datasync.acquireSubscription({ token: "a" }));
    assert.deepEqual(server.calls("datasync", "acquireSubscription")[0]?.message.params, { token: "a" });
    const resync = nextDispatch(s.datasync.resyncNeeded, 3000, "resyncNeeded");
    server.current.close(1008);
    assert.equal(await resync, "a");
  });

  it("a refused acquire keeps nothing, and a cancel forgets the offset", async (t) => {
    const { server, s } = await connected(t);
    server.on("datasync", "acquireSubscription", (params) => {
      if (params.token === "bad") throw new RpcError("No such subscription");
      return { offset: "1" };
    });
    await assert.rejects(s.datasync.acquireSubscription({ token: "bad" }), { message: "No such subscription" });
    assert.equal(s.datasync.offsetOf("bad"), null);
    await within(s.datasync.acquireSubscription({ token: "good" }));
    await within(s.datasync.cancelSubscription({ token: "good" }));
    assert.equal(s.datasync.offsetOf("good"), null);
    assert.deepEqual(s.datasync.subscriptions, []);
  });

  it("a token passed bare instead of {token} is refused with a message saying what to pass", async (t) => {
    const { server, s } = await connected(t);
    const bare = s.datasync.acquireSubscription("a" as unknown as { token: string });
    await assert.rejects(bare, (error: unknown) => {
      assert.ok(error instanceof TypeError);
      assert.match(error.message, /acquireSubscription takes \{token: "\.\.\."\}/);
      return true;
    });
    assert.deepEqual(server.calls("datasync", "acquireSubscription"), [], "nothing sent");
    assert.deepEqual(s.datasync.subscriptions, []);
  });
});
