/**
 * Pages in a Chromium without WebSocket (`window.WebSocket` removed before any script runs), which
 * therefore reach Snorky through SockJS: sockjs-client comes from the npm package (tests/sockjs),
 * never from the network.
 */

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";

import { newPage, REPO_ROOT } from "./browser.mjs";

const SOCKJS_CLIENT = join(REPO_ROOT, "tests", "sockjs", "node_modules", "sockjs-client", "dist", "sockjs.min.js");

/** A page whose browser has no WebSocket, and that gets sockjs-client from the npm package. */
export async function pageWithoutWebSocket(browser, options = {}) {
  assert.ok(existsSync(SOCKJS_CLIENT), "run `npm ci` in tests/sockjs (scripts/setup does) for sockjs-client");
  const page = await newPage(browser, options);
  const context = page.context();
  await context.addInitScript(() => {
    delete window.WebSocket;
  });
  // The demos' SOCKJS_CLIENT_URL (a CDN by default) is answered locally: the tests use no network.
  await context.route("**/sockjs.min.js", (route) =>
    route.fulfill({ path: SOCKJS_CLIENT, contentType: "application/javascript" }),
  );
  page.sockjsRequests = [];
  page.on("request", (request) => {
    if (new URL(request.url()).pathname.startsWith("/sockjs/")) page.sockjsRequests.push(request.url());
  });
  return page;
}

/** Checks that the page talked to Snorky through SockJS's HTTP transports, never a WebSocket. */
export async function assertOverSockJS(page) {
  assert.equal(await page.evaluate(() => typeof window.WebSocket), "undefined");
  assert.equal(await page.evaluate(() => typeof window.SockJS), "function");
  assert.ok(
    page.sockjsRequests.some((url) => /\/sockjs\/[^/]+\/[^/]+\/(xhr_streaming|xhr|eventsource)/.test(url)),
    `the page used a SockJS transport: ${page.sockjsRequests.slice(0, 5).join(", ")}`,
  );
  assert.deepEqual(page.frames, [], "no WebSocket frames");
}
