/**
 * The client's half of the shared protocol transcripts
 * (`tests/fixtures/protocol/`, format in its README): the scripted fake
 * server plays the server's frames, and the client must send what each
 * transcript says for the matching API call and surface what it receives.
 * The Rust and Python tests replay the same files against a real server.
 *
 * Also here: the client's close-code table against `close-codes.json`, which
 * the Rust tests check against the server's.
 */

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, it, type TestContext } from "node:test";
import { WebSocket } from "ws";
import { Snorky, State } from "../../src/client.js";
import { CloseCode, ErrorCode, lostMessages, shouldReconnect } from "../../src/codes.js";
import { SnorkyError } from "../../src/errors.js";
import type { RPCService } from "../../src/services/base.js";
import type { Signal } from "../../src/signal.js";
import type { PushMessage } from "../../src/types.js";
import { type FakeConnection, FakeServer, NO_REPLY, type Received } from "../support/fakeServer.js";
import { nextDispatch, waitUntil, within } from "../support/wait.js";

const FIXTURES = new URL("../../../../tests/fixtures/protocol/", import.meta.url);

type Json = any;

interface Transcript {
  title: string;
  server: { frontend?: Array<{ kind: string; name: string }>; backend?: unknown[] };
  exchanges: Array<{ name: string; steps: Json[] }>;
}

interface CloseCodes {
  server: Array<{ code: number; name: string }>;
  client: Array<{ code: number; reconnect: boolean; lostMessages: boolean }>;
  reserved: { from: number; to: number };
}

function readJson<T>(name: string): T {
  return JSON.parse(readFileSync(new URL(name, FIXTURES), "utf8")) as T;
}

const TRANSCRIPTS: Array<[string, Transcript]> = readdirSync(new URL("transcripts/", FIXTURES))
  .filter((file) => file.endsWith(".json"))
  .sort()
  .map((file) => [file, readJson<Transcript>(`transcripts/${file}`)]);

const CLOSE_CODES = readJson<CloseCodes>("close-codes.json");

/** The client's service class for each kind of frontend service. */
const CLASSES: Record<string, typeof Snorky.PubSub | typeof Snorky.Chat | typeof Snorky.Cursors | typeof Snorky.Messaging | typeof Snorky.DataSync> = {
  pubsub: Snorky.PubSub,
  chat: Snorky.Chat,
  cursors: Snorky.Cursors,
  messaging: Snorky.Messaging,
  datasync: Snorky.DataSync,
};

/** For each kind, the signal a push of each type reaches, and what it carries. */
const PUSH_SIGNALS: Record<string, Record<string, (service: any, message: Json) => [Signal<unknown>, Json]>> = {
  pubsub: { message: (s, m) => [s.messagePublished, m] },
  chat: {
    message: (s, m) => [s.messageReceived, m],
    presence: (s, m) => [s.presenceReceived, m],
    read: (s, m) => [s.readReceived, m],
  },
  cursors: {
    cursorAdded: (s, m) => [s.cursorAdded, m.cursor],
    cursorUpdated: (s, m) => [s.cursorUpdated, m.cursor],
    cursorRemoved: (s, m) => [s.cursorRemoved, m.cursor],
  },
  messaging: { message: (s, m) => [s.participantMessage, m] },
  datasync: { delta: (s, m) => [s.deltaReceived, m.delta] },
};

/**
 * What an API call resolves with, when it is not the reply's `data` itself:
 * `cursors.createCursor` resolves with the cursor it created, carrying the
 * public handle the server answered.
 */
const SURFACED: Record<string, Record<string, (data: Json, params: Json) => Json>> = {
  cursors: { createCursor: (data, params) => ({ ...params, publicHandle: data }) },
};

/**
 * Values for the transcripts' notations. Playing the server, the replayer
 * makes up a concrete value for each (and remembers the named ones), then
 * checks the client surfaces exactly that value.
 */
class Values {
  private readonly remembered = new Map<string, Json>();
  private counter = 1000;

  /** A concrete value for `pattern` (recursively). */
  make(pattern: Json): Json {
    if (Array.isArray(pattern)) return pattern.map((item) => this.make(item));
    if (pattern !== null && typeof pattern === "object") {
      return Object.fromEntries(Object.entries(pattern).map(([key, value]) => [key, this.make(value)]));
    }
    if (typeof pattern !== "string" || !pattern.startsWith("$")) return pattern;
    if (pattern.startsWith("$$")) return pattern.slice(1);
    const colon = pattern.indexOf(":");
    const kind = colon < 0 ? pattern.slice(1) : pattern.slice(1, colon);
    const name = colon < 0 ? "" : pattern.slice(colon + 1);
    if (kind === "ref") {
      assert.ok(this.remembered.has(name), `nothing remembered as ${name}`);
      return this.remembered.get(name);
    }
    if (kind === "prefix") return `${name}(details)`;
    // One server's offsets: position N is "N".
    if (kind === "offset") return name;
    const n = ++this.counter;
    const value = { any: `any-${n}`, timestamp: "2026-05-01T12:34:56.789+00:00", token: `t${String(n).padStart(31, "0")}`, int: n }[kind];
    assert.ok(value !== undefined, `unknown notation ${pattern}`);
    if (name) this.remembered.set(name, value);
    return value;
  }
}

/** A value as JSON carries it (what the wire can tell apart). */
function wire(value: unknown): Json {
  return JSON.parse(JSON.stringify(value ?? null));
}

interface Pending {
  outcome: Promise<{ data?: unknown; error?: unknown }>;
  callId: number;
  /** What the call resolves with, given the reply's data. */
  surfaced: (data: Json) => Json;
  /** Checks the client's state after a successful reply. */
  check: ((data: Json) => void) | undefined;
}

interface ClientState {
  client: Snorky;
  connection: FakeConnection;
  /** Transcript callId (as JSON) -> the call the client made for it. */
  calls: Map<string, Pending>;
}

/**
 * Whether the client makes this `send` step through its API. Frames written
 * by hand (`"handmade": true`: malformed frames, callIds of other types),
 * raw text or binary frames and padded frames are the server's business. Any
 * other frame must be one the client produces: a request to a frontend
 * service, exactly `{command, params, callId}` with a numeric callId.
 */
function byClient(step: Json, frontend: Set<string>): boolean {
  if (step.send === undefined || step.frame === undefined || step.handmade || step.pad_to !== undefined) return false;
  const where = `send ${JSON.stringify(step)}`;
  const { service, message } = step.frame;
  assert.ok(frontend.has(service), `${where}: not a frontend service; mark the step "handmade"`);
  assert.deepEqual(Object.keys(message).sort(), ["callId", "command", "params"], `${where}: not a client's request; mark it "handmade"`);
  assert.equal(typeof message.command, "string", where);
  assert.ok(message.params !== null && typeof message.params === "object" && !Array.isArray(message.params), where);
  assert.equal(typeof message.callId, "number", `${where}: the client's callIds are numbers; mark it "handmade"`);
  return true;
}

/** Whether `value` is in `list`, comparing as JSON. */
function has(list: unknown[], value: unknown): boolean {
  return list.some((item) => JSON.stringify(wire(item)) === JSON.stringify(wire(value)));
}

/**
 * The client's state after a successful reply or a push, checked against
 * what the frame says: a format change the client does not follow (a renamed
 * field, another status value) shows up here even where the frame itself is
 * only passed on.
 */
const STATE: Record<string, { reply?: Record<string, (s: any, params: Json, data: Json) => void>; push?: Record<string, (s: any, message: Json) => void> }> = {
  pubsub: { reply: { subscribe: (s, p) => assert.ok(has(s.subscriptions, p.channel), "subscriptions has the channel") } },
  chat: {
    reply: { join: (s, p, d) => assert.deepEqual(s.getMembers(p.channel), d.members, "getMembers is the join's members") },
    push: {
      presence: (s, m) => {
        assert.ok(["joined", "left"].includes(m.status), `the client knows presence "joined" and "left", not ${m.status}`);
        if (!has(s.channels, m.channel)) return;
        assert.equal(s.getMembers(m.channel).includes(m.from), m.status === "joined", `getMembers after ${m.from} ${m.status}`);
      },
    },
  },
  cursors: {
    reply: {
      join: (s, p, d) => assert.deepEqual(wire(s.getCursors(p.document)), wire(d.cursors), "getCursors is the join's cursors"),
      createCursor: (s, p) => assert.ok(has(s.getOwnCursors(p.document).map((c: Json) => c.privateHandle), p.privateHandle), "own cursor kept"),
    },
    push: {
      cursorAdded: (s, m) => assert.ok(has(s.getCursors(m.cursor.document), m.cursor), "getCursors has the new cursor"),
      cursorUpdated: (s, m) => assert.ok(has(s.getCursors(m.cursor.document), m.cursor), "getCursors has the moved cursor"),
      cursorRemoved: (s, m) =>
        assert.ok(!s.getCursors(m.cursor.document).some((c: Json) => c.publicHandle === m.cursor.publicHandle), "getCursors lost the cursor"),
    },
  },
  messaging: { reply: { registerParticipant: (s, p) => assert.ok(s.participants.includes(p.name), "participants has the name") } },
  datasync: {
    reply: {
      acquireSubscription: (s, p, d) => {
        assert.ok(s.subscriptions.includes(p.token), "subscriptions has the token");
        if (d !== null) assert.ok(s.offsetOf(p.token) !== null, "the client keeps an offset for the subscription");
      },
    },
    push: {
      delta: (s, m) => {
        if (m.subscription !== undefined) assert.equal(s.offsetOf(m.subscription), m.offset, "the client keeps the delta's offset");
      },
    },
  },
};

async function replay(t: TestContext, transcript: Transcript, steps: Json[]): Promise<void> {
  // Slow reconnection, so a close can be checked before the client tries again.
  t.mock.method(Math, "random", () => 0.999);
  const kinds = new Map((transcript.server.frontend ?? []).map((spec) => [spec.name, spec.kind]));
  const services = Object.fromEntries([...kinds].filter(([, kind]) => kind in CLASSES).map(([name, kind]) => [name, CLASSES[kind]!]));
  const server = await FakeServer.start();
  const clients = new Map<string, ClientState>();
  t.after(async () => {
    for (const { client } of clients.values()) client.close();
    await server.stop();
  });
  // The replayer answers every call itself, in the transcript's order.
  const frontend = new Set(kinds.keys());
  for (const step of steps) {
    if (byClient(step, frontend)) server.on(step.frame.service, step.frame.message.command, () => NO_REPLY);
  }
  const values = new Values();
  const consumed = new Set<Received>();
  let replayedSends = 0;

  for (const [index, step] of steps.entries()) {
    const where = `step ${index + 1} ${JSON.stringify(step)}`;
    if (step.connect !== undefined) {
      if (step.refused !== undefined || step.query !== undefined) continue;
      const token = step.identity !== undefined ? `token-for-${step.identity}` : step.token !== undefined ? "a-token" : undefined;
      const count = server.connections.length + 1;
      const client = new Snorky(WebSocket, server.url, services, {
        token,
        minReconnectDelay: 10_000,
        maxReconnectDelay: 10_000,
        queueTimeout: 2000,
      });
      const connection = await server.waitForConnection(count);
      await waitUntil(() => client.isConnected, 2000, `${where}: connected`);
      assert.equal(connection.url, token === undefined ? "/ws" : `/ws?token=${token}`, `${where}: the URL carries the token`);
      clients.set(step.connect, { client, connection, calls: new Map() });
    } else if (step.send !== undefined) {
      const state = clients.get(step.send);
      if (!state || !byClient(step, frontend)) continue;
      const { service: name, message } = step.frame;
      const params = values.make(message.params);
      const service = (state.client.services as Record<string, RPCService & Record<string, unknown>>)[name]!;
      if (kinds.get(name) === "datasync" && message.command === "acquireSubscription") {
        // The client opts in to offsets by itself; a transcript without `offsets` is a 0.1
        // client's, which the client speaks with its opt-in turned off.
        service["offsets"] = "offsets" in message.params;
      }
      const method = service[message.command];
      const promise: Promise<unknown> =
        typeof method === "function" && !["call", "rpcCall"].includes(message.command)
          ? (method as (p: unknown) => Promise<unknown>).call(service, params)
          : service.call(message.command, params);
      const outcome = promise.then(
        (data) => ({ data }),
        (error: unknown) => ({ error }),
      );
      const sent = await server.waitForFrame(
        (r) => r.connection === state.connection.index && !consumed.has(r),
        2000,
        `${where}: the client's frame`,
      );
      consumed.add(sent);
      replayedSends++;
      assert.equal(sent.service, name, `${where}: service`);
      assert.equal(sent.message.command, message.command, `${where}: command`);
      assert.deepEqual(wire(sent.message.params), wire(params), `${where}: params`);
      assert.equal(typeof sent.message.callId, "number", `${where}: a numeric callId`);
      const kind = kinds.get(name)!;
      const adapt = SURFACED[kind]?.[message.command];
      const surfaced = adapt ? (data: Json) => adapt(data, params) : (data: Json) => data;
      const stateCheck = STATE[kind]?.reply?.[message.command];
      const check = stateCheck ? (data: Json) => stateCheck(service, params, data) : undefined;
      state.calls.set(JSON.stringify(message.callId), { outcome, callId: sent.message.callId, surfaced, check });
    } else if (step.recv !== undefined) {
      const state = clients.get(step.recv);
      const frame = values.make(step.frame);
      if (!state) continue;
      const message = frame.message;
      if (message.type === "response" || message.type === "error") {
        const pending = "callId" in message ? state.calls.get(JSON.stringify(message.callId)) : undefined;
        if (!pending) continue;
        state.connection.send({ service: frame.service, message: { ...message, callId: pending.callId } });
        const result = await within(pending.outcome, 2000, `${where}: the call settles`);
        if (message.type === "response") {
          assert.ok(!("error" in result), `${where}: the call failed: ${String(result.error)}`);
          assert.deepEqual(wire(result.data), wire(pending.surfaced(message.data)), `${where}: the call resolves with data`);
          pending.check?.(message.data);
        } else {
          const error = result.error;
          assert.ok(error instanceof SnorkyError, `${where}: rejected with a SnorkyError, not ${String(error)}`);
          assert.equal(error.code, ErrorCode.server, where);
          assert.equal(error.message, message.message, `${where}: the error text`);
        }
      } else {
        const service = (state.client.services as Record<string, RPCService>)[frame.service];
        assert.ok(service, `${where}: the client has service ${frame.service}`);
        const kind = kinds.get(frame.service)!;
        const typed = PUSH_SIGNALS[kind]?.[message.type]?.(service, message);
        const notified = nextDispatch(service.notificationReceived, 2000, `${where}: notificationReceived`);
        const specific = typed ? nextDispatch(typed[0], 2000, `${where}: the ${message.type} signal`) : undefined;
        state.connection.send(frame);
        assert.deepEqual(wire((await notified) as PushMessage), wire(message), `${where}: notificationReceived`);
        assert.ok(typed, `${where}: the client has a signal for ${kind} ${message.type}`);
        assert.deepEqual(wire(await specific), wire(typed[1]), `${where}: the ${message.type} signal`);
        STATE[kind]?.push?.[message.type]?.(service, message);
      }
    } else if (step.closed !== undefined) {
      const state = clients.get(step.closed);
      if (!state) continue;
      const disconnected = nextDispatch(state.client.disconnected, 2000, `${where}: disconnected`);
      state.connection.close(step.code);
      const info = await disconnected;
      assert.equal(info.code, step.code, `${where}: the close code the client saw`);
      const expected = CLOSE_CODES.client.find((entry) => entry.code === step.code);
      assert.ok(expected, `${where}: close-codes.json lists ${step.code}`);
      assert.equal(state.client.state, expected.reconnect ? State.Connecting : State.Disconnected, `${where}: reconnects?`);
      state.client.close();
      clients.delete(step.closed);
    } else if (step.close !== undefined) {
      const state = clients.get(step.close);
      if (!state) continue;
      const closed = new Promise<number>((resolve) => state.connection.socket.once("close", (code: number) => resolve(code)));
      state.client.close();
      assert.equal(await within(closed, 2000, `${where}: the close`), CloseCode.normal, `${where}: the client closes with 1000`);
      clients.delete(step.close);
    } else if (step.http !== undefined) {
      // The server's business; only the values it names matter to later steps.
      values.make(step.answer ?? null);
    }
  }
  // The client sent exactly the frames of the replayed steps: nothing more.
  assert.equal(server.received.length, replayedSends, `frames the client sent: ${JSON.stringify(server.received)}`);
}

describe("protocol transcripts (the client's half)", () => {
  for (const [file, transcript] of TRANSCRIPTS) {
    describe(`${file}: ${transcript.title}`, () => {
      const frontend = new Set((transcript.server.frontend ?? []).map((spec) => spec.name));
      for (const exchange of transcript.exchanges) {
        // Exchanges without a call or a connection of the client (handshake refusals,
        // backend HTTP) are the server's half only.
        const clientPart = exchange.steps.some(
          (step) => (step.connect !== undefined && step.refused === undefined) || byClient(step, frontend),
        );
        if (clientPart) it(exchange.name, (t) => replay(t, transcript, exchange.steps));
        else it.skip(`${exchange.name} (the server's half only)`);
      }
    });
  }
});

describe("close codes (close-codes.json)", () => {
  it("names every code the server sends in CloseCode", () => {
    for (const { code, name } of CLOSE_CODES.server) {
      const key = name.toLowerCase().replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
      assert.equal((CloseCode as Record<string, number>)[key], code, `CloseCode.${key}`);
    }
  });

  it("reconnects, or not, and reports lost messages as the table says", () => {
    for (const { code, reconnect, lostMessages: lost } of CLOSE_CODES.client) {
      assert.equal(shouldReconnect(code), reconnect, `shouldReconnect(${code})`);
      assert.equal(lostMessages(code), lost, `lostMessages(${code})`);
    }
    for (const { code } of CLOSE_CODES.server) {
      assert.ok(CLOSE_CODES.client.some((entry) => entry.code === code), `the client's table has ${code}`);
    }
  });

  it("does not reconnect after any code of the reserved range, and does just outside it", () => {
    const { from, to } = CLOSE_CODES.reserved;
    for (let code = from; code <= to; code++) assert.equal(shouldReconnect(code), false, `${code}`);
    assert.equal(shouldReconnect(from - 1), true);
    assert.equal(shouldReconnect(to + 1), true);
  });
});
