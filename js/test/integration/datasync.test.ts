/**
 * DataSync against the real server: the backend authorizes (through
 * `SnorkyBackend`), the client acquires, the backend publishes deltas, and
 * the client's collections follow.
 *
 * server.py's `datasync` has the dealers AllTasks (Broadcast), TasksByOwner
 * (Simple, key `owner.id`) and FilteredTasks (Filter), all of model Task.
 * Each test uses its own owner ids, so the tests' deltas do not mix.
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, describe, it } from "node:test";
import { ErrorCode } from "../../src/codes.js";
import { ArrayCollection, CollectionDeltaProcessor, SingleItemCollection } from "../../src/collections.js";
import type { Delta } from "../../src/types.js";
import { connectedClient, recordingSocketClass } from "../support/live.js";
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

interface Task {
  id: number;
  owner: { id: number };
  title: string;
  priority: number;
}

const task = (id: number, owner: number, title: string, priority = 1): Task => ({ id, owner: { id: owner }, title, priority });

/** A model instance, as `transformItem` would make. */
class TaskModel {
  constructor(readonly data: Task) {}
  get label(): string {
    return `#${this.data.id} ${this.data.title}`;
  }
}

describe("DataSync on the real server", () => {
  it("authorize, acquire, publish: deltaReceived, onDelta, and the collections follow", async (t) => {
    const owner = 1;
    const client = await connectedClient(t, server);
    const datasync = client.services.datasync;

    // The page loaded tasks 1 and 2 with its subscription token.
    const token = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
    assert.match(token, /^[a-z0-9]{32}$/);
    const tasks = new ArrayCollection<TaskModel>([new TaskModel(task(1, owner, "one")), new TaskModel(task(2, owner, "two"))], {
      transformItem: (data: Task) => new TaskModel(data),
    });
    const processor = new CollectionDeltaProcessor(
      { Task: tasks },
      { itemsAreEqual: (item: TaskModel, data: Task) => item.data.id === data.id },
    );
    const viaOnDelta: Delta[] = [];
    datasync.onDelta = (delta) => {
      viaOnDelta.push(delta);
      processor.processDelta(delta);
    };
    const viaSignal = record(datasync.deltaReceived);
    const acquired = await within(datasync.acquireSubscription({ token }));
    assert.match(acquired?.offset ?? "", /^\d+$/, "the position it was acquired at");
    assert.deepEqual(datasync.subscriptions, [token]);

    const deltas: Delta[] = [
      { type: "insert", model: "Task", data: task(3, owner, "three") },
      { type: "update", model: "Task", oldData: task(1, owner, "one"), newData: task(1, owner, "one, renamed") },
      { type: "delete", model: "Task", data: task(2, owner, "two") },
    ];
    await server.publishDeltas(deltas);
    // Another owner's task: a different subscription's business.
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(4, owner + 1, "not mine") }]);
    // Ownership changes: the update becomes an insert or a delete for this subscription.
    await server.publishDeltas([
      { type: "update", model: "Task", oldData: task(5, owner + 1, "given to me"), newData: task(5, owner, "given to me") },
      { type: "update", model: "Task", oldData: task(3, owner, "three"), newData: task(3, owner + 1, "three") },
    ]);
    await waitUntil(() => viaSignal.length === 5, 3000, "five deltas");
    await sleep(100);

    const translated: Delta[] = [
      ...deltas,
      { type: "insert", model: "Task", data: task(5, owner, "given to me") },
      { type: "delete", model: "Task", data: task(3, owner, "three") },
    ];
    assert.deepEqual(viaSignal, translated);
    assert.deepEqual(viaOnDelta, translated);
    assert.deepEqual(
      tasks.array.map((item) => item.label),
      ["#1 one, renamed", "#5 given to me"],
    );
    assert.ok(tasks.array.every((item) => item instanceof TaskModel));
  });

  it("one object followed with a SingleItemCollection, and tagged collections", async (t) => {
    const owner = 6;
    // Two views of Task on one page, each from its own connection (deltas do not name their subscription).
    const one = await connectedClient(t, server);
    const mine = await connectedClient(t, server);
    let current: Task | null = task(1001, owner, "followed");
    const processor = new CollectionDeltaProcessor({
      Task: {
        single: new SingleItemCollection<Task>(
          () => current,
          (data) => (current = data),
          () => (current = null),
        ),
        list: new ArrayCollection<Task>([task(1001, owner, "followed")]),
      },
    });
    one.services.datasync.onDelta = (delta) => processor.processDelta({ ...delta, tag: "single" });
    mine.services.datasync.onDelta = (delta) => processor.processDelta(delta, "list");
    const list = (processor.collections["Task"] as Record<string, ArrayCollection<Task>>)["list"]!;
    await within(one.services.datasync.acquireSubscription({ token: await server.authorize([{ dealer: "FilteredTasks", query: ["==", "id", 1001] }]) }));
    await within(mine.services.datasync.acquireSubscription({ token: await server.authorize([{ dealer: "TasksByOwner", query: owner }]) }));

    await server.publishDeltas([
      { type: "update", model: "Task", oldData: task(1001, owner, "followed"), newData: task(1001, owner, "renamed") },
      { type: "insert", model: "Task", data: task(1002, owner, "another") },
    ]);
    await waitUntil(() => current?.title === "renamed" && list.array.length === 2, 3000, "both views updated");
    assert.deepEqual(list.array, [task(1001, owner, "renamed"), task(1002, owner, "another")]);
    await server.publishDeltas([{ type: "delete", model: "Task", data: task(1001, owner, "renamed") }]);
    await waitUntil(() => current === null && list.array.length === 1, 3000, "the object gone from both views");
    assert.deepEqual(list.array, [task(1002, owner, "another")]);
  });

  it("Broadcast and Filter dealers; a delta reaches a subscription once even when several items match", async (t) => {
    const owner = 2;
    const client = await connectedClient(t, server);
    const datasync = client.services.datasync;
    const token = await server.authorize([
      { dealer: "FilteredTasks", query: ["and", ["==", "owner.id", owner], [">", "priority", 2]] },
      { dealer: "TasksByOwner", query: owner },
    ]);
    const received = record(datasync.deltaReceived);
    await within(datasync.acquireSubscription({ token }));
    const urgent = task(10, owner, "urgent", 5);
    await server.publishDeltas([{ type: "insert", model: "Task", data: urgent }]);
    await waitUntil(() => received.length === 1, 3000, "the delta");
    await sleep(100);
    assert.deepEqual(received, [{ type: "insert", model: "Task", data: urgent }], "once, though both items match");

    // A filter-only subscription: the priority moves the task in and out of view.
    const other = await connectedClient(t, server);
    const filtered = await server.authorize([{ dealer: "FilteredTasks", query: [">=", "priority", 3] }]);
    const seen = record(other.services.datasync.deltaReceived);
    await within(other.services.datasync.acquireSubscription({ token: filtered }));
    await server.publishDeltas([
      { type: "update", model: "Task", oldData: task(11, 99, "x", 1), newData: task(11, 99, "x", 3) },
      { type: "update", model: "Task", oldData: task(11, 99, "x", 3), newData: task(11, 99, "y", 4) },
      { type: "update", model: "Task", oldData: task(11, 99, "y", 4), newData: task(11, 99, "y", 2) },
    ]);
    await waitUntil(() => seen.length === 3, 3000, "three translated deltas");
    assert.deepEqual(seen, [
      { type: "insert", model: "Task", data: task(11, 99, "x", 3) },
      { type: "update", model: "Task", oldData: task(11, 99, "x", 3), newData: task(11, 99, "y", 4) },
      { type: "delete", model: "Task", data: task(11, 99, "y", 4) },
    ]);

    // A Broadcast subscription gets every Task delta.
    const everything = await connectedClient(t, server);
    const all = record(everything.services.datasync.deltaReceived);
    await within(everything.services.datasync.acquireSubscription({ token: await server.authorize([{ dealer: "AllTasks", query: null }]) }));
    await server.publishDeltas([{ type: "delete", model: "Task", data: task(12, 77, "anyone's") }]);
    await waitUntil(() => all.length === 1, 3000, "the broadcast delta");
    assert.deepEqual(all, [{ type: "delete", model: "Task", data: task(12, 77, "anyone's") }]);
  });

  it("deltas published between authorization and acquisition arrive on acquire, in order", async (t) => {
    const owner = 3;
    const token = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
    const early = [1, 2, 3, 4].map((id) => ({ type: "insert", model: "Task", data: task(id, owner, `early ${id}`) }));
    for (const delta of early) await server.publishDeltas([delta]);
    const client = await connectedClient(t, server);
    const received = record(client.services.datasync.deltaReceived);
    await within(client.services.datasync.acquireSubscription({ token }));
    await waitUntil(() => received.length === 4, 3000, "the buffered deltas");
    assert.deepEqual(received, early);
  });

  it("refusals carry the server's text; cancel ends the subscription", async (t) => {
    const owner = 4;
    const client = await connectedClient(t, server);
    const other = await connectedClient(t, server);
    const datasync = client.services.datasync;
    const token = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);

    await assert.rejects(within(datasync.acquireSubscription({ token: "0".repeat(32) })), serverError("No such subscription"));
    await assert.rejects(within(datasync.acquireSubscription({ token: 42 as unknown as string })), serverError("token must be string"));
    await within(datasync.acquireSubscription({ token }));
    await assert.rejects(within(datasync.acquireSubscription({ token })), serverError("No such subscription"));
    await assert.rejects(within(other.services.datasync.acquireSubscription({ token })), serverError("No such subscription"));
    await assert.rejects(within(other.services.datasync.cancelSubscription({ token })), serverError("No such subscription"));
    assert.deepEqual(datasync.subscriptions, [token]);
    assert.deepEqual(other.services.datasync.subscriptions, []);

    const received = record(datasync.deltaReceived);
    assert.equal(await within(datasync.cancelSubscription({ token })), null);
    assert.deepEqual(datasync.subscriptions, []);
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(1, owner, "after cancel") }]);
    await sleep(150);
    assert.deepEqual(received, []);
    await assert.rejects(within(datasync.acquireSubscription({ token })), serverError("No such subscription"));

    // The backend's refusals reach the driver with the server's text too.
    await assert.rejects(server.authorize([{ dealer: "NoSuchDealer", query: 1 }]), { message: /No such dealer/ });
    await assert.rejects(server.publishDeltas([{ type: "insert", model: "Nope", data: {} }]), { message: /Unknown model/ });
  });

  it("a closed connection's subscription can be resumed by another connection", async (t) => {
    const owner = 5;
    const token = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
    const { socketClass, sockets } = recordingSocketClass();
    const first = await connectedClient(t, server, {}, socketClass);
    await within(first.services.datasync.acquireSubscription({ token }));
    // Publish only once the server has answered the close. A delta published
    // before that may still be written to the closing socket, which counts as
    // delivered (docs/protocol.md): a client without offsets never sees it.
    const closeAnswered = once(sockets[0], "close");
    first.close();
    await within(closeAnswered, 3000, "the server's answer to the close");
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(1, owner, "while nobody held it") }]);
    // A new page load (say) presents the same token.
    const second = await connectedClient(t, server);
    const delta = nextDispatch(second.services.datasync.deltaReceived, 3000, "the buffered delta");
    const deadline = Date.now() + 2000;
    // The server frees the token promptly after the close (docs/protocol.md: within 100 ms).
    for (;;) {
      try {
        await within(second.services.datasync.acquireSubscription({ token }));
        break;
      } catch (error) {
        assert.ok(Date.now() < deadline, `could not resume: ${String(error)}`);
        await sleep(20);
      }
    }
    assert.deepEqual(await delta, { type: "insert", model: "Task", data: task(1, owner, "while nobody held it") });
  });
});
