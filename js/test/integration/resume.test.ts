/**
 * Resuming by offset against the real server: the client's connection goes
 * through a TCP proxy that the test cuts (both sockets destroyed, no close
 * frame) while a 20,000-delta batch is in flight. The client reconnects by
 * itself, resumes after the last delta it applied, and ends with every delta
 * applied exactly once, in order, whatever the server had written into the
 * dead connection.
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
import { record, waitUntil, within } from "../support/wait.js";

let server: RealServer;
before(async () => {
  server = await RealServer.start();
});
after(async () => {
  await server?.close();
});

describe("resuming by offset on the real server", () => {
  it("a connection cut without a close frame mid-batch: every delta applied exactly once, in order", async (t) => {
    const TOTAL = 20_000;
    const owner = 7001;
    const proxy = await CutProxy.start(server.info.frontend_port);
    t.after(() => proxy.close());
    const client = new Snorky(WebSocket, proxy.wsUrl, { datasync: DataSync }, LIVE);
    t.after(() => client.close());
    await waitUntil(() => client.isConnected, 5000, "the connection");
    const datasync = client.services.datasync;

    const tasks = new ArrayCollection<{ id: number }>();
    let applied = 0;
    let cut = false;
    const processor = new CollectionDeltaProcessor({ Task: tasks });
    const target = (delta: Delta) => {
      applied++;
      processor.processDelta(delta);
      if (applied === 50 && !cut) {
        cut = true;
        // Mid-batch, with thousands of deltas written into the connection and not yet read.
        proxy.cut();
      }
    };
    const resyncs = record(datasync.resyncNeeded);
    const disconnections = record(client.disconnected);
    const token = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
    await within(datasync.acquireSubscription({ token }, target));

    const deltas = Array.from({ length: TOTAL }, (_, i) => ({ type: "insert", model: "Task", data: { id: i + 1, owner: { id: owner } } }));
    await server.publishDeltas(deltas);
    await waitUntil(() => tasks.array.length === TOTAL, 30_000, "every delta");
    // Nothing arrives twice after the last one either.
    await new Promise((resolve) => setTimeout(resolve, 200));

    assert.ok(cut, "the connection was cut");
    assert.equal(disconnections[0]?.code, 1006, "no close frame");
    assert.equal(applied, TOTAL, "each delta applied once");
    assert.deepEqual(
      tasks.array.map((task) => task.id),
      Array.from({ length: TOTAL }, (_, i) => i + 1),
      "in order",
    );
    assert.deepEqual(resyncs, []);
    assert.deepEqual(datasync.subscriptions, [token]);
    assert.ok(datasync.offsetOf(token), "the offset of the last delta is kept");
  });
});
