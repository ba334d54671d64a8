import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ArrayCollection, CollectionDeltaProcessor, SingleItemCollection } from "../../src/collections.js";
import type { Delta } from "../../src/types.js";

interface Task {
  id: number;
  title: string;
}

const insert = (data: Task, model = "Task"): Delta<Task> => ({ type: "insert", model, data });
const update = (oldData: Task, newData: Task, model = "Task"): Delta<Task> => ({ type: "update", model, oldData, newData });
const remove = (data: Task, model = "Task"): Delta<Task> => ({ type: "delete", model, data });

describe("CollectionDeltaProcessor with an ArrayCollection", () => {
  it("applies insert, update and delete in place", () => {
    const tasks: Task[] = [{ id: 1, title: "one" }];
    const processor = new CollectionDeltaProcessor({ Task: new ArrayCollection(tasks) });

    assert.ok(processor.processDelta(insert({ id: 2, title: "two" })));
    assert.deepEqual(tasks, [{ id: 1, title: "one" }, { id: 2, title: "two" }]);

    processor.processDelta(update({ id: 1, title: "one" }, { id: 1, title: "uno" }));
    assert.deepEqual(tasks, [{ id: 1, title: "uno" }, { id: 2, title: "two" }]);

    processor.processDelta(remove({ id: 1, title: "uno" }));
    assert.deepEqual(tasks, [{ id: 2, title: "two" }]);
  });

  it("an insert of an item already there replaces it instead of duplicating", () => {
    const tasks: Task[] = [{ id: 1, title: "one" }];
    const processor = new CollectionDeltaProcessor({ Task: new ArrayCollection(tasks) });
    processor.processDelta(insert({ id: 1, title: "fresher" }));
    assert.deepEqual(tasks, [{ id: 1, title: "fresher" }]);
  });

  it("updates and deletes of unknown items change nothing", () => {
    const tasks: Task[] = [{ id: 1, title: "one" }];
    const collection = new ArrayCollection(tasks);
    let changes = 0;
    collection.changed.add(() => changes++);
    const processor = new CollectionDeltaProcessor({ Task: collection });
    processor.processDelta(update({ id: 9, title: "x" }, { id: 9, title: "y" }));
    processor.processDelta(remove({ id: 9, title: "x" }));
    assert.deepEqual(tasks, [{ id: 1, title: "one" }]);
    assert.equal(changes, 0);
  });

  it("ignores deltas of unknown models and unknown types", () => {
    const tasks: Task[] = [];
    const processor = new CollectionDeltaProcessor({ Task: new ArrayCollection(tasks) });
    assert.equal(processor.processDelta(insert({ id: 1, title: "x" }, "Player")), false);
    assert.equal(processor.processDelta(insert({ id: 1, title: "x" }, "toString")), false);
    assert.equal(processor.processDelta({ type: "upsert", model: "Task", data: {} } as unknown as Delta), false);
    assert.deepEqual(tasks, []);
  });

  it("collections can be added after construction (0.1 style)", () => {
    const processor = new CollectionDeltaProcessor();
    const tasks: Task[] = [];
    processor.collections["Task"] = new ArrayCollection(tasks);
    processor.processDelta(insert({ id: 1, title: "x" }));
    assert.equal(tasks.length, 1);
  });

  it("routes by model and tag", () => {
    const red: Task[] = [];
    const blue: Task[] = [];
    const processor = new CollectionDeltaProcessor({
      Player: { red: new ArrayCollection(red), blue: new ArrayCollection(blue) },
    });
    processor.processDelta({ ...insert({ id: 1, title: "r" }, "Player"), tag: "red" });
    processor.processDelta(insert({ id: 2, title: "b" }, "Player"), "blue");
    assert.deepEqual(red.map((p) => p.id), [1]);
    assert.deepEqual(blue.map((p) => p.id), [2]);

    // A missing or unknown tag is ignored.
    assert.equal(processor.processDelta(insert({ id: 3, title: "?" }, "Player")), false);
    assert.equal(processor.processDelta(insert({ id: 3, title: "?" }, "Player"), "green"), false);
    assert.equal(red.length + blue.length, 2);
  });

  it("itemsAreEqual can be replaced by option, assignment or subclass", () => {
    const byTitle = (item: Task, data: Task) => item.title === data.title;

    const a: Task[] = [{ id: 1, title: "same" }];
    new CollectionDeltaProcessor({ Task: new ArrayCollection(a) }, { itemsAreEqual: byTitle }).processDelta(
      remove({ id: 99, title: "same" }),
    );
    assert.deepEqual(a, []);

    const b: Task[] = [{ id: 1, title: "same" }];
    const assigned = new CollectionDeltaProcessor({ Task: new ArrayCollection(b) });
    assigned.itemsAreEqual = byTitle;
    assigned.processDelta(remove({ id: 99, title: "same" }));
    assert.deepEqual(b, []);

    class ByTitle extends CollectionDeltaProcessor {
      override itemsAreEqual(item: Task, data: Task, delta: Delta): boolean {
        assert.equal(delta.model, "Task");
        return item.title === data.title;
      }
    }
    const c: Task[] = [{ id: 1, title: "same" }];
    new ByTitle({ Task: new ArrayCollection(c) }).processDelta(remove({ id: 99, title: "same" }));
    assert.deepEqual(c, []);
  });
});

describe("ArrayCollection", () => {
  class TaskModel {
    constructor(readonly id: number, readonly title: string) {}
    get shout(): string {
      return this.title.toUpperCase();
    }
  }

  it("transformItem turns inserted and updated data into items", () => {
    const tasks: TaskModel[] = [];
    const collection = new ArrayCollection<TaskModel>(tasks, {
      transformItem: (data: Task) => new TaskModel(data.id, data.title),
    });
    const processor = new CollectionDeltaProcessor({ Task: collection });
    processor.processDelta(insert({ id: 1, title: "one" }));
    processor.processDelta(update({ id: 1, title: "one" }, { id: 1, title: "uno" }));
    assert.ok(tasks[0] instanceof TaskModel);
    assert.equal(tasks[0]?.shout, "UNO");
  });

  it("dispatches changed after each change", () => {
    const collection = new ArrayCollection<Task>();
    const sizes: number[] = [];
    collection.changed.add(() => sizes.push(collection.array.length));
    const processor = new CollectionDeltaProcessor({ Task: collection });
    processor.processDelta(insert({ id: 1, title: "a" }));
    processor.processDelta(insert({ id: 2, title: "b" }));
    processor.processDelta(remove({ id: 1, title: "a" }));
    assert.deepEqual(sizes, [1, 2, 1]);
  });
});

describe("SingleItemCollection", () => {
  it("reads and writes one object through handlers", () => {
    let task: Task | null = { id: 1, title: "one" };
    const processor = new CollectionDeltaProcessor({
      Task: new SingleItemCollection<Task>(
        () => task,
        (t) => {
          task = t;
        },
        () => {
          task = null;
        },
      ),
    });

    processor.processDelta(update({ id: 2, title: "other" }, { id: 2, title: "other!" }));
    assert.deepEqual(task, { id: 1, title: "one" });

    processor.processDelta(update({ id: 1, title: "one" }, { id: 1, title: "uno" }));
    assert.deepEqual(task, { id: 1, title: "uno" });

    processor.processDelta(remove({ id: 2, title: "other" }));
    assert.notEqual(task, null);
    processor.processDelta(remove({ id: 1, title: "uno" }));
    assert.equal(task, null);

    processor.processDelta(insert({ id: 1, title: "back" }));
    assert.deepEqual(task, { id: 1, title: "back" });
  });

  it("has a default remove handler that does nothing", () => {
    const task: Task = { id: 1, title: "one" };
    const collection = new SingleItemCollection<Task>(
      () => task,
      () => {},
    );
    new CollectionDeltaProcessor({ Task: collection }).processDelta(remove(task));
  });
});
