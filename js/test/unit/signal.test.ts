import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Signal } from "../../src/signal.js";

describe("Signal", () => {
  it("calls listeners in order with the value", () => {
    const signal = new Signal<number>();
    const calls: string[] = [];
    signal.add((v) => calls.push(`a${v}`));
    signal.add((v) => calls.push(`b${v}`));
    signal.dispatch(1);
    signal.dispatch(2);
    assert.deepEqual(calls, ["a1", "b1", "a2", "b2"]);
  });

  it("addOnce listeners run once", () => {
    const signal = new Signal<void>();
    let count = 0;
    signal.addOnce(() => count++);
    signal.dispatch();
    signal.dispatch();
    assert.equal(count, 1);
    assert.equal(signal.listenerCount, 0);
  });

  it("remove detaches by function and context; add returns a remover", () => {
    const signal = new Signal<void>();
    let count = 0;
    const listener = () => count++;
    const context = {};
    signal.add(listener);
    signal.add(listener, context);
    signal.remove(listener);
    signal.dispatch();
    assert.equal(count, 1);
    const off = signal.add(() => count++);
    off();
    signal.dispatch();
    assert.equal(count, 2);
  });

  it("binds the context as this, and ignores duplicate adds", () => {
    const signal = new Signal<number>();
    const target = {
      total: 0,
      add(this: { total: number }, v: number) {
        this.total += v;
      },
    };
    signal.add(target.add, target);
    signal.add(target.add, target);
    signal.dispatch(5);
    assert.equal(target.total, 5);
  });

  it("a throwing listener does not stop the others", (t) => {
    const errors = t.mock.method(console, "error", () => {});
    const signal = new Signal<void>();
    let reached = false;
    signal.add(() => {
      throw new Error("boom");
    });
    signal.add(() => {
      reached = true;
    });
    signal.dispatch();
    assert.ok(reached);
    assert.equal(errors.mock.callCount(), 1);
  });

  it("listeners added or removed during a dispatch take effect on the next", () => {
    const signal = new Signal<void>();
    const calls: string[] = [];
    const second = () => calls.push("second");
    signal.add(() => {
      calls.push("first");
      signal.remove(second);
      signal.add(() => calls.push("late"));
    });
    signal.add(second);
    signal.dispatch();
    assert.deepEqual(calls, ["first", "second"]);
    signal.dispatch();
    assert.deepEqual(calls, ["first", "second", "first", "late"]);
  });

  it("rejects non-function listeners", () => {
    assert.throws(() => new Signal().add(42 as never), TypeError);
  });
});
