import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { backoff, DEFAULT_MAX_DELAY, DEFAULT_MIN_DELAY } from "../../src/backoff.js";
import { CloseCode, lostMessages, shouldReconnect } from "../../src/codes.js";

const almostOne = () => 0.999999;

describe("backoff", () => {
  it("doubles the ceiling per attempt", () => {
    assert.equal(backoff(0, 100, 10_000, almostOne), 99);
    assert.equal(backoff(1, 100, 10_000, almostOne), 199);
    assert.equal(backoff(3, 100, 10_000, almostOne), 799);
  });

  it("never exceeds the maximum, even after many attempts", () => {
    assert.equal(backoff(10, 100, 1000, almostOne), 999);
    assert.equal(backoff(5000, 100, 1000, almostOne), 999);
    assert.ok(Number.isFinite(backoff(5000, 100, 1000)));
  });

  it("draws the whole range (full jitter)", () => {
    assert.equal(backoff(4, 100, 10_000, () => 0), 0);
    assert.equal(backoff(4, 100, 10_000, () => 0.5), 800);
    for (let attempt = 0; attempt < 20; attempt++) {
      const delay = backoff(attempt);
      assert.ok(delay >= 0 && delay <= DEFAULT_MAX_DELAY);
      assert.ok(delay <= DEFAULT_MIN_DELAY * 2 ** attempt);
    }
  });

  it("tolerates odd bounds", () => {
    assert.equal(backoff(0, 0, 0), 0);
    assert.equal(backoff(-3, 100, 50, almostOne), 99);
  });
});

describe("close codes", () => {
  it("reconnects after transient closes", () => {
    for (const code of [CloseCode.normal, CloseCode.goingAway, CloseCode.abnormal, CloseCode.policyViolation,
      CloseCode.messageTooBig, CloseCode.internalError, 4000]) {
      assert.ok(shouldReconnect(code), `code ${code}`);
    }
  });

  it("stops after terminal closes", () => {
    for (const code of [CloseCode.protocolError, CloseCode.unsupportedData, CloseCode.invalidPayload, 4500, 4999]) {
      assert.ok(!shouldReconnect(code), `code ${code}`);
    }
  });

  it("over SockJS, 1002 and the 2000s are transient: unreachable server, interrupted session, failed transports", () => {
    for (const code of [CloseCode.protocolError, 2000, 2007, 2010, CloseCode.goingAway, CloseCode.policyViolation]) {
      assert.ok(shouldReconnect(code, true), `code ${code}`);
    }
    for (const code of [CloseCode.unsupportedData, CloseCode.invalidPayload, 4500]) {
      assert.ok(!shouldReconnect(code, true), `code ${code}`);
    }
  });

  it("only a slow-consumer close loses messages", () => {
    assert.ok(lostMessages(1008));
    assert.ok(!lostMessages(1001));
    assert.ok(!lostMessages(1006));
  });
});
