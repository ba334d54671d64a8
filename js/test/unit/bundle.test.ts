/**
 * The shipped bundles: size budget, reproducibility, and that the browser
 * bundle defines `window.Snorky` and runs the README snippet unchanged.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import vm from "node:vm";
import { gzipSync } from "node:zlib";
import { WebSocket } from "ws";
import type { Snorky as SnorkyClass } from "../../src/client.js";
import { FakeServer } from "../support/fakeServer.js";
import { startHttpServer, subscribableTasks } from "../support/httpServer.js";
import { waitUntil, within } from "../support/wait.js";

const BUDGET = 12 * 1024;

type Files = Record<string, Uint8Array>;

async function build(): Promise<Files> {
  const module = await import(new URL("../../../build.mjs", import.meta.url).href);
  return module.buildBundles();
}

function text(files: Files, name: string): string {
  const contents = files[name];
  assert.ok(contents, `${name} was not built`);
  return Buffer.from(contents).toString("utf8");
}

/** Loads the browser bundle in a fresh global scope, as a <script> would. */
function loadBrowserBundle(files: Files, globals: Record<string, unknown> = {}): typeof SnorkyClass {
  const window: Record<string, unknown> = { console, setTimeout, clearTimeout, fetch, Headers, ...globals };
  vm.createContext(window);
  vm.runInContext(text(files, "snorky.min.js"), window, { filename: "snorky.min.js" });
  return window["Snorky"] as typeof SnorkyClass;
}

// The README snippet, verbatim but for the server address (the test's server
// is on a free port) and the lines at the end that hand its objects to the test.
const README_SNIPPET = `
var snorky = new Snorky(WebSocket, "ws://localhost:5001/ws", {
  pubsub: Snorky.PubSub, datasync: Snorky.DataSync, chat: Snorky.Chat,
  cursors: Snorky.Cursors, messaging: Snorky.Messaging
}, {token: connectionToken});          // options optional; token goes into the URL as ?token=
var pubsub = snorky.services.pubsub;
pubsub.subscribe({channel: "messages"}).then(function () { /* confirmed */ });
pubsub.messagePublished.add(function (m) { console.log(m.message); });
pubsub.publish({channel: "messages", message: "hi"});
var deltaProcessor = new Snorky.DataSync.CollectionDeltaProcessor();
snorky.services.datasync.onDelta = function (delta) { deltaProcessor.processDelta(delta); };
const {data, subscriptionToken} = await Snorky.fetchWithSubscription("/api/tasks/");
deltaProcessor.collections["Task"] = new Snorky.DataSync.ArrayCollection(data, { transformItem: item => item });
await snorky.services.datasync.acquireSubscription({token: subscriptionToken});
`;

describe("bundles", () => {
  it(`the minified browser bundle stays under ${BUDGET / 1024} KB gzipped`, async (t) => {
    const files = await build();
    const minified = files["snorky.min.js"];
    assert.ok(minified);
    const gzipped = gzipSync(minified, { level: 9 }).length;
    t.diagnostic(`snorky.min.js: ${minified.length} bytes, ${gzipped} bytes gzipped (budget ${BUDGET})`);
    assert.ok(gzipped < BUDGET, `${gzipped} bytes gzipped is over the budget of ${BUDGET}`);
  });

  it("builds the same bytes twice, with relative source paths", async () => {
    const first = await build();
    const second = await build();
    assert.deepEqual(Object.keys(first).sort(), [
      "react.mjs",
      "react.mjs.map",
      "snorky.min.js",
      "snorky.min.js.map",
      "snorky.mjs",
      "snorky.mjs.map",
    ]);
    for (const name of Object.keys(first)) {
      assert.ok(Buffer.from(first[name]!).equals(Buffer.from(second[name]!)), `${name} differs between builds`);
    }
    for (const name of ["snorky.min.js.map", "snorky.mjs.map", "react.mjs.map"]) {
      const map = JSON.parse(text(first, name)) as { sources: string[]; sourcesContent: string[] };
      assert.ok(map.sources.every((source) => source.startsWith("../src/")), map.sources.join(", "));
      assert.equal(map.sourcesContent.length, map.sources.length);
    }
    assert.match(text(first, "snorky.min.js"), /\/\/# sourceMappingURL=snorky\.min\.js\.map\n$/);
  });

  it("the browser bundle defines Snorky with every static member", async () => {
    const Snorky = loadBrowserBundle(await build());
    assert.equal(typeof Snorky, "function");
    for (const name of ["PubSub", "DataSync", "Chat", "Cursors", "Messaging", "fetchWithSubscription"] as const) {
      assert.equal(typeof Snorky[name], "function", name);
    }
    for (const name of ["CollectionDeltaProcessor", "ArrayCollection", "SingleItemCollection"] as const) {
      assert.equal(typeof Snorky.DataSync[name], "function", name);
    }
  });

  it("the ES module exports Snorky as default and by name", async (t) => {
    const files = await build();
    const dir = mkdtempSync(join(tmpdir(), "snorky-esm-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, "snorky.mjs"), files["snorky.mjs"]!);
    const module = await import(pathToFileURL(join(dir, "snorky.mjs")).href);
    assert.equal(module.default, module.Snorky);
    assert.equal(module.Snorky.DataSync.ArrayCollection, module.ArrayCollection);
    assert.equal(typeof module.Signal, "function");
    assert.equal(module.State.Connected, "connected");
  });

  it("the README snippet runs unchanged on the browser bundle", async (t) => {
    const server = await FakeServer.start();
    const http = await startHttpServer(subscribableTasks([{ id: 1, title: "write docs" }], "tok42"));
    t.after(async () => {
      await server.stop();
      await http.stop();
    });
    // The real server echoes a publish to subscribers; the fake does it for this channel.
    server.on("pubsub", "publish", (params) => {
      server.push("pubsub", { type: "message", channel: params.channel, message: params.message });
      return null;
    });

    const logged: unknown[] = [];
    const pageFetch = (url: string, init?: RequestInit) => fetch(new URL(url, http.base), init);
    const Snorky = loadBrowserBundle(await build(), { fetch: pageFetch });
    const body = README_SNIPPET.replace("ws://localhost:5001/ws", server.url) + "\nreturn {snorky, deltaProcessor};";
    const AsyncFunction = (async () => {}).constructor as new (...args: string[]) => (...values: unknown[]) => Promise<any>;
    const run = new AsyncFunction("Snorky", "WebSocket", "connectionToken", "console", body);
    const { snorky, deltaProcessor } = await within(
      run(Snorky, WebSocket, "jwt.token", { log: (value: unknown) => logged.push(value) }),
      3000,
      "the snippet",
    );
    t.after(() => snorky.close());

    assert.equal(server.current.url, "/ws?token=jwt.token");
    await waitUntil(() => logged.includes("hi"), 2000, "the published message");
    assert.deepEqual(server.calls("datasync", "acquireSubscription")[0]?.message.params, { token: "tok42", offsets: true });
    assert.equal(http.requests[0]?.headers["x-snorky"], "Subscribe");

    server.push("datasync", { type: "delta", delta: { type: "insert", model: "Task", data: { id: 2, title: "ship" } } });
    const tasks = deltaProcessor.collections["Task"].array as Array<{ id: number }>;
    await waitUntil(() => tasks.length === 2, 2000, "the delta applied");
    assert.deepEqual(tasks.map((task) => task.id), [1, 2]);
  });
});
