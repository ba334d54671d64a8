/**
 * Resuming by offset on another node: two server processes share a real
 * `redis-server`, and the client reaches them through a TCP proxy that plays
 * the load balancer. Its connection to the first node goes (cut without a close
 * frame mid-batch, or the node killed with SIGKILL); it reconnects through the
 * proxy, which now leads to the second node, and resumes after the last delta it
 * applied: every delta applied exactly once, in order, and no resync. When
 * Redis restarts without its data, the client is told to resync.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { WebSocket } from "ws";
import { Snorky } from "../../src/client.js";
import { ArrayCollection, CollectionDeltaProcessor } from "../../src/collections.js";
import { DataSync } from "../../src/services/datasync.js";
import type { Delta } from "../../src/types.js";
import { LIVE } from "../support/live.js";
import { CutProxy } from "../support/proxy.js";
import { RealServer } from "../support/realServer.js";
import { Redis } from "../support/redis.js";
import { nextDispatch, record, waitUntil, within } from "../support/wait.js";

let redis: Redis;
before(async () => {
  redis = await Redis.start();
});
after(() => {
  redis?.close();
});

/** A node on the test's Redis; a short node timeout, so that a killed node is known dead quickly. */
async function node(name: string): Promise<RealServer> {
  const options = [`broker=${JSON.stringify(redis.url)}`, `node_name=${JSON.stringify(name)}`, "node_timeout=3"];
  return RealServer.start({ args: options.flatMap((option) => ["--option", option]) });
}

interface Scenario {
  /** What happens to the first node's connection after 50 deltas. */
  loss: (first: RealServer, proxy: CutProxy) => void;
  total: number;
}

async function resumesOnAnotherNode(t: { after: (fn: () => unknown) => void }, scenario: Scenario): Promise<void> {
  const owner = 7002;
  const first = await node("first");
  t.after(() => first.close());
  const second = await node("second");
  t.after(() => second.close());
  const proxy = await CutProxy.start(first.info.frontend_port);
  t.after(() => proxy.close());
  const client = new Snorky(WebSocket, proxy.wsUrl, { datasync: DataSync }, LIVE);
  t.after(() => client.close());
  await waitUntil(() => client.isConnected, 5000, "the connection");
  const datasync = client.services.datasync;

  const tasks = new ArrayCollection<{ id: number }>();
  const processor = new CollectionDeltaProcessor({ Task: tasks });
  let applied = 0;
  let lost = false;
  const target = (delta: Delta) => {
    applied++;
    processor.processDelta(delta);
    if (applied === 50 && !lost) {
      lost = true;
      proxy.retarget(second.info.frontend_port);
      scenario.loss(first, proxy);
    }
  };
  const resyncs = record(datasync.resyncNeeded);
  // Authorized through the second node, acquired on the first.
  const token = await second.authorize([{ dealer: "TasksByOwner", query: owner }]);
  await within(datasync.acquireSubscription({ token }, target));
  const deltas = Array.from({ length: scenario.total }, (_, i) => ({ type: "insert", model: "Task", data: { id: i + 1, owner: { id: owner } } }));
  await second.publishDeltas(deltas);
  await waitUntil(() => tasks.array.length === scenario.total, 30_000, "every delta");
  await new Promise((resolve) => setTimeout(resolve, 200));

  assert.ok(lost, "the first node's connection went");
  assert.equal(applied, scenario.total, "each delta applied once");
  assert.deepEqual(
    tasks.array.map((task) => task.id),
    Array.from({ length: scenario.total }, (_, i) => i + 1),
    "in order",
  );
  assert.deepEqual(resyncs, []);
  assert.deepEqual(datasync.subscriptions, [token]);
  // And it lives on the second node now: a new delta arrives.
  await second.publishDeltas([{ type: "insert", model: "Task", data: { id: scenario.total + 1, owner: { id: owner } } }]);
  await waitUntil(() => tasks.array.length === scenario.total + 1, 10_000, "the next delta");
}

describe("resuming by offset on another node", () => {
  it("the connection to one node cut mid-batch: the client resumes on the other, every delta once, in order", async (t) => {
    await resumesOnAnotherNode(t, { total: 10_000, loss: (_first, proxy) => proxy.cut() });
  });

  it("the node killed with SIGKILL mid-batch: the client resumes on the other once it is known dead", async (t) => {
    await resumesOnAnotherNode(t, {
      total: 3_000,
      loss: (first, proxy) => {
        first.kill();
        proxy.cut();
      },
    });
  });

  it("Redis restarted without its data: the client is told to resync, and resyncs", async (t) => {
    const first = await node("first");
    t.after(() => first.close());
    const client = new Snorky(WebSocket, first.wsUrl, { datasync: DataSync }, LIVE);
    t.after(() => client.close());
    await waitUntil(() => client.isConnected, 5000, "the connection");
    const datasync = client.services.datasync;
    const tasks = new ArrayCollection<{ id: number }>();
    const processor = new CollectionDeltaProcessor({ Task: tasks });
    const token = await first.authorize([{ dealer: "AllTasks", query: null }]);
    await within(datasync.acquireSubscription({ token }, processor));
    await first.publishDeltas([{ type: "insert", model: "Task", data: { id: 1 } }]);
    await waitUntil(() => tasks.array.length === 1, 10_000, "the first delta");
    const resync = nextDispatch(datasync.resyncNeeded, 30_000, "resyncNeeded");
    const disconnections = record(client.disconnected);

    await redis.restart();
    // The node cannot know what it missed: it closes the connection with 1008; the client
    // acquires again, the subscription is gone, and the application must fetch its data.
    assert.equal(await resync, token);
    assert.equal(disconnections[0]?.code, 1008);
    assert.deepEqual(datasync.subscriptions, []);
    // A new token works once the node is back on Redis.
    const deadline = Date.now() + 30_000;
    let fresh: string | null = null;
    while (fresh === null) {
      assert.ok(Date.now() < deadline, "an authorization through the restarted Redis within 30 s");
      fresh = await first.authorize([{ dealer: "AllTasks", query: null }]).catch(() => null);
      if (fresh === null) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const again = new ArrayCollection<{ id: number }>();
    await within(datasync.acquireSubscription({ token: fresh }, new CollectionDeltaProcessor({ Task: again })));
    await first.publishDeltas([{ type: "insert", model: "Task", data: { id: 2 } }]);
    await waitUntil(() => again.array.length === 1, 10_000, "a delta after the restart");
  });
});
