/**
 * The client's reference usage snippet ("What a user writes": every service,
 * a connection token, PubSub, DataSync with `fetchWithSubscription`), run
 * unchanged but for the server address, against the real server, with the
 * files that ship in the Django app (`python/snorky_django/static/snorky/`):
 * the browser bundle in a fresh global scope, as a <script> would load it,
 * and the ES module.
 * (`npm run check-bundle` fails when those files are stale.)
 *
 * A small HTTP server plays the web application: `/api/tasks/` answers the
 * tasks and, asked with `X-Snorky: Subscribe`, a real subscription token that
 * it gets from the Snorky backend.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, it, type TestContext } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import vm from "node:vm";
import { WebSocket } from "ws";
import type { Snorky as SnorkyClass } from "../../src/client.js";
import { startHttpServer } from "../support/httpServer.js";
import { RealServer } from "../support/realServer.js";
import { waitUntil, within } from "../support/wait.js";

const SHIPPED = fileURLToPath(new URL("../../../../python/snorky_django/static/snorky/", import.meta.url));

// The reference usage snippet, verbatim ("What a user writes").
const README_SNIPPET = `
var snorky = new Snorky(WebSocket, "ws://localhost:5001/ws", {
  pubsub: Snorky.PubSub, datasync: Snorky.DataSync, chat: Snorky.Chat,
  cursors: Snorky.Cursors, messaging: Snorky.Messaging
}, {token: connectionToken});          // options optional

var pubsub = snorky.services.pubsub;
pubsub.subscribe({channel: "messages"}).then(function () { /* confirmed */ });
pubsub.messagePublished.add(function (m) { console.log(m.message); });
pubsub.publish({channel: "messages", message: "hi"});

var deltaProcessor = new Snorky.DataSync.CollectionDeltaProcessor();
snorky.services.datasync.onDelta = function (delta) { deltaProcessor.processDelta(delta); };
const {data, subscriptionToken} = await Snorky.fetchWithSubscription("/api/tasks/");
deltaProcessor.collections["Task"] = new Snorky.DataSync.ArrayCollection(data, {
  transformItem: item => item });
await snorky.services.datasync.acquireSubscription({token: subscriptionToken});
`;

const OWNER = 42;
const TASKS = [{ id: 1, owner: { id: OWNER }, title: "write docs" }];

let server: RealServer;
before(async () => {
  server = await RealServer.start();
});
after(async () => {
  await server?.close();
});

/** The web application: its task list, subscribable. */
async function webApp(t: TestContext) {
  const http = await startHttpServer((request, response) => {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    const answer = () => {
      response.writeHead(200, headers);
      response.end(JSON.stringify(TASKS));
    };
    if (request.headers["x-snorky"] !== "Subscribe") return answer();
    server.authorize([{ dealer: "TasksByOwner", query: OWNER }]).then(
      (token) => {
        headers["X-Subscription-Token"] = token;
        answer();
      },
      (error: Error) => {
        response.writeHead(500);
        response.end(String(error));
      },
    );
  });
  t.after(() => http.stop());
  return http;
}

type Run = (pageFetch: typeof globalThis.fetch, Snorky: (base: typeof SnorkyClass) => typeof SnorkyClass) => Promise<{
  snorky: SnorkyClass;
  deltaProcessor: any;
}>;

/** Runs the snippet, then checks that everything it set up works against the real server. */
async function runSnippet(t: TestContext, run: Run, logged: unknown[]) {
  const http = await webApp(t);
  const realFetch = globalThis.fetch;
  const pageFetch = ((url: string, init?: RequestInit) => realFetch(new URL(url, http.base), init)) as typeof fetch;
  // Every client the snippet makes is closed when the test ends, even if the snippet fails
  // halfway: a client left reconnecting would keep this test process alive.
  const clients: SnorkyClass[] = [];
  t.after(() => clients.forEach((client) => client.close()));
  const tracked = (base: typeof SnorkyClass) =>
    class extends base {
      constructor(...args: ConstructorParameters<typeof SnorkyClass>) {
        super(...args);
        clients.push(this);
      }
    } as typeof SnorkyClass;
  const { snorky, deltaProcessor } = await within(run(pageFetch, tracked), 5000, "the snippet");
  assert.equal(clients.length, 1);

  await waitUntil(() => logged.includes("hi"), 3000, "the message the snippet published");
  assert.equal(http.requests[0]?.headers["x-snorky"], "Subscribe");
  const tasks = deltaProcessor.collections["Task"].array as Array<{ id: number }>;
  // A copy: the bundle's arrays come from another realm (the vm context).
  const copy = () => JSON.parse(JSON.stringify(tasks));
  assert.deepEqual(copy(), TASKS);

  // The subscription is live: a task created by the web application shows up.
  const created = { id: 2, owner: { id: OWNER }, title: "ship it" };
  await server.publishDeltas([{ type: "insert", model: "Task", data: created }]);
  await waitUntil(() => tasks.length === 2, 3000, "the delta applied to the collection");
  assert.deepEqual(copy(), [...TASKS, created]);

  // The connection token gave the connection its identity.
  const chat = (snorky.services as Record<string, any>)["chat"];
  const joined = await within(chat.join({ channel: "readme" }));
  assert.deepEqual(JSON.parse(JSON.stringify(joined)), { members: ["reader"] });
}

describe("the README snippet on the real server", () => {
  it("runs unchanged on the shipped browser bundle (snorky.min.js)", async (t) => {
    const connectionToken = await server.token("reader");
    const logged: unknown[] = [];
    await runSnippet(
      t,
      async (pageFetch, tracked) => {
        const window: Record<string, unknown> = { console, setTimeout, clearTimeout, fetch: pageFetch, Headers };
        vm.createContext(window);
        vm.runInContext(readFileSync(`${SHIPPED}snorky.min.js`, "utf8"), window, { filename: "snorky.min.js" });
        const Snorky = window["Snorky"] as typeof SnorkyClass;
        assert.equal(typeof Snorky, "function", "the bundle defines window.Snorky");
        window["Snorky"] = tracked(Snorky);
        // Evaluated in the page's global scope, like an inline <script type="module">.
        window["__snippet"] = { WebSocket, connectionToken, console: { log: (value: unknown) => logged.push(value) } };
        const body = README_SNIPPET.replace("ws://localhost:5001/ws", server.wsUrl);
        const script = `(async ({WebSocket, connectionToken, console}) => {${body}\nreturn {snorky, deltaProcessor};})(__snippet)`;
        return vm.runInContext(script, window, { filename: "readme-snippet.js" });
      },
      logged,
    );
  });

  it("runs unchanged on the shipped ES module (snorky.mjs)", async (t) => {
    const connectionToken = await server.token("reader");
    const logged: unknown[] = [];
    const module = await import(pathToFileURL(`${SHIPPED}snorky.mjs`).href);
    await runSnippet(
      t,
      async (pageFetch, tracked) => {
        const body = README_SNIPPET.replace("ws://localhost:5001/ws", server.wsUrl) + "\nreturn {snorky, deltaProcessor};";
        const AsyncFunction = (async () => {}).constructor as new (...args: string[]) => (...values: unknown[]) => Promise<any>;
        // `fetch` is the page's: relative URLs resolve against the web application.
        const Snorky = tracked(module.default as typeof SnorkyClass);
        const originalFetch = globalThis.fetch;
        globalThis.fetch = pageFetch;
        try {
          const run = new AsyncFunction("Snorky", "WebSocket", "connectionToken", "console", body);
          return await run(Snorky, WebSocket, connectionToken, { log: (value: unknown) => logged.push(value) });
        } finally {
          globalThis.fetch = originalFetch;
        }
      },
      logged,
    );
  });
});
