/**
 * The client over SockJS: the real sockjs-client (from tests/sockjs, where
 * `scripts/setup` installs it) against the real server's `/sockjs`, forced to
 * each transport sockjs-client offers in Node. Calls, deliveries, identity,
 * and reconnection with resume behave as over WebSocket.
 */

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it, type TestContext } from "node:test";
import { type WebSocketClass, type WebSocketLike, Snorky, State } from "../../src/client.js";
import { CloseCode } from "../../src/codes.js";
import type { Delta } from "../../src/types.js";
import { Gate, LIVE, SERVICES } from "../support/live.js";
import { RealServer } from "../support/realServer.js";
import { nextDispatch, record, waitUntil, within } from "../support/wait.js";

const SOCKJS_DIR = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../../../tests/sockjs");
const SOCKJS_ROOT = existsSync(resolve(SOCKJS_DIR, "package.json")) ? SOCKJS_DIR : resolve(SOCKJS_DIR, "../../tests/sockjs");

/** sockjs-client's constructor: `new SockJS(url, protocols, options)`. */
type SockJSConstructor = new (url: string, protocols: null, options: { transports: string[] }) => WebSocketLike & {
  transport: string | null;
};

function loadSockJS(): SockJSConstructor {
  const manifest = resolve(SOCKJS_ROOT, "package.json");
  if (!existsSync(resolve(SOCKJS_ROOT, "node_modules", "sockjs-client"))) {
    throw new Error(`sockjs-client is not installed: run \`npm ci\` in ${SOCKJS_ROOT} (scripts/setup does)`);
  }
  return createRequire(manifest)("sockjs-client") as SockJSConstructor;
}

/** The transports sockjs-client can use in Node (the others need a DOM). */
const NODE_TRANSPORTS = ["websocket", "xhr-streaming", "xhr-polling", "eventsource"];

/** A socket class that forces `transport`, and remembers its sockets. */
function forced(SockJS: SockJSConstructor, transport: string, opened: Array<{ transport: string | null }>) {
  return class {
    constructor(url: string) {
      const socket = new SockJS(url, null, { transports: [transport] });
      opened.push(socket);
      return socket;
    }
  } as unknown as WebSocketClass;
}

let server: RealServer;
let SockJS: SockJSConstructor;
let sockjsUrl: string;
before(async () => {
  SockJS = loadSockJS();
  server = await RealServer.start();
  sockjsUrl = `http://127.0.0.1:${server.info.frontend_port}/sockjs`;
});
after(async () => {
  await server?.close();
});

function sockjsClient(t: TestContext, transport: string, options = {}) {
  const sockets: Array<{ transport: string | null }> = [];
  const client = new Snorky(forced(SockJS, transport, sockets), sockjsUrl, SERVICES, { ...LIVE, ...options });
  t.after(() => client.close());
  return { client, sockets };
}

describe("the client over SockJS (sockjs-client in Node)", () => {
  for (const transport of NODE_TRANSPORTS) {
    it(`${transport}: calls, deliveries and identity`, async (t) => {
      const token = await server.token(`sockjs-${transport}`);
      const { client, sockets } = sockjsClient(t, transport, { token });
      await waitUntil(() => client.isConnected, 5000, `a SockJS connection over ${transport}`);
      assert.equal(sockets[0]?.transport, transport);
      const { pubsub, chat, calc } = client.services;
      await within(pubsub.subscribe({ channel: `news-${transport}` }));
      const delivered = nextDispatch(pubsub.messagePublished, 3000, "a delivery");
      await server.publish(`news-${transport}`, { headline: "über SockJS \u2028 ok" });
      assert.deepEqual((await delivered).message, { headline: "über SockJS \u2028 ok" });
      // The token's identity reached the server: Chat knows who joined.
      const joined = await within(chat.join({ channel: `room-${transport}` }), 3000, "join");
      assert.deepEqual(joined.members, [`sockjs-${transport}`]);
      assert.equal(await within(calc.call("add", { a: 2, b: 3 })), 5);
    });
  }

  it("reconnects through SockJS after a restart and resumes DataSync without a gap", async (t) => {
    const owner = 7;
    const gate = new Gate();
    const token = await server.token("sockjs-resume");
    const { client, sockets } = sockjsClient(t, "xhr-streaming", { token: gate.tokenSource(token) });
    await waitUntil(() => client.isConnected, 5000, "the first connection");
    const { datasync, pubsub } = client.services;
    const received: Delta[] = [];
    datasync.onDelta = (delta) => received.push(delta);
    const resyncs = record(datasync.resyncNeeded);
    const subscription = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
    await within(datasync.acquireSubscription({ token: subscription }));
    await within(pubsub.subscribe({ channel: "after-restart" }));
    const task = (id: number, title: string) => ({ id, owner: { id: owner }, title });
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(1, "before") }]);
    await waitUntil(() => received.length === 1, 3000, "the first delta");

    gate.close();
    const closed = nextDispatch(client.disconnected, 10_000, "the disconnection");
    await server.stop();
    assert.equal((await closed).code, CloseCode.goingAway);
    await server.start();
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(2, "while away") }]);
    assert.equal(client.state, State.Connecting);
    const restored = nextDispatch(client.restored, 10_000, "restored");
    gate.open();
    await restored;
    assert.ok(sockets.length >= 2, "a new SockJS socket was opened");
    await waitUntil(() => received.length === 2, 3000, "the delta published while away");
    assert.deepEqual(
      received.map((delta) => (delta as { data: { title: string } }).data.title),
      ["before", "while away"],
    );
    assert.equal(resyncs.length, 0);
    const delivered = nextDispatch(pubsub.messagePublished, 3000, "a delivery after the restart");
    await server.publish("after-restart", 1);
    assert.equal((await delivered).message, 1);
  });

  it("keeps trying while the server is down (sockjs-client reports 1002), and comes back", async (t) => {
    const { client } = sockjsClient(t, "xhr-polling");
    await waitUntil(() => client.isConnected, 5000, "the first connection");
    await server.stop();
    // While it is down, /info fails: sockjs-client closes with 1002 "Cannot connect to server".
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(client.state, State.Connecting);
    await server.start();
    await waitUntil(() => client.isConnected, 10_000, "the reconnection");
  });
});
