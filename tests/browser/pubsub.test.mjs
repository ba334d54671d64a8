/**
 * The PubSub demo (demos/pubsub: Snorky 0.1's README example) in Chromium: a message published
 * from one page is received in another, through the shipped client; so is what the web
 * application publishes through the backend.
 */

import assert from "node:assert/strict";
import { resolve } from "node:path";
import { after, before, test } from "node:test";

import { eventually, launchBrowser, LIVE_TIMEOUT, newPage, REPO_ROOT, screenshotPath } from "./support/browser.mjs";
import { PYTHON } from "./support/django.mjs";
import { freePorts, startProcess, stopAll, waitForUrl } from "./support/processes.mjs";

/** Seconds between the demo's own publications through the backend ("The server says: it is ..."). */
const ANNOUNCE_EVERY = 2;
const FROM_SERVER = /^The server says: it is \d\d:\d\d:\d\d$/;

let demo;
let baseUrl;
let browser;

before(async () => {
  const [http, ws, backend] = await freePorts(3);
  baseUrl = `http://127.0.0.1:${http}`;
  const ports = ["--http-port", http, "--ws-port", ws, "--backend-port", backend];
  const args = ["--no-browser", ...ports, "--announce-every", ANNOUNCE_EVERY].map(String);
  demo = startProcess(PYTHON, [resolve(REPO_ROOT, "demos/pubsub/run.py"), ...args], { name: "demos/pubsub/run.py" });
  await waitForUrl(`${baseUrl}/`, { process: demo, accept: (status) => status === 200 });
  await waitForUrl(`http://127.0.0.1:${ws}/health`, { process: demo, accept: (status) => status === 200 });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  const result = await demo?.stop({ signal: "SIGINT" });
  await stopAll();
  if (result) assert.equal(result.code, 0, demo.error("did not stop cleanly on SIGINT").message);
});

/** The board in a browser context of its own, once its subscription is confirmed. */
async function openBoard() {
  const page = await newPage(browser, { viewport: { width: 900, height: 470 } });
  await page.goto(`${baseUrl}/`);
  await page.locator("#status.live").waitFor();
  return page;
}

async function send(page, text) {
  await page.locator("#message").fill(text);
  await page.locator("#message").press("Enter");
}

/** The messages the page shows, those the browsers sent (`fromServer: false`) or the backend's. */
async function messages(page, { fromServer = false } = {}) {
  const texts = await page.locator("#messages li").allInnerTexts();
  return texts.filter((text) => FROM_SERVER.test(text) === fromServer);
}

test("a message published from one page is received in another", async () => {
  const first = await openBoard();
  const second = await openBoard();
  assert.equal(await first.evaluate(() => typeof Snorky.PubSub), "function", "the page uses the shipped client");

  await send(first, "Hello from the first page");
  await eventually(async () => assert.deepEqual(await messages(second), ["Hello from the first page"]), {
    message: "the second page received the first page's message",
  });
  // The publisher is subscribed too, so it gets its own message back.
  await eventually(async () => assert.deepEqual(await messages(first), ["Hello from the first page"]));
  assert.equal(await first.locator("#message").inputValue(), "", "the input is cleared after sending");

  await send(second, "And hello back");
  for (const page of [first, second]) {
    await eventually(async () => assert.deepEqual(await messages(page), ["Hello from the first page", "And hello back"]));
  }

  // A page opened later gets what is published from now on (PubSub keeps no history).
  const third = await openBoard();
  await send(third, "Late, but here");
  await eventually(async () => assert.equal((await messages(first)).at(-1), "Late, but here"), { timeoutMs: LIVE_TIMEOUT });
  assert.deepEqual(await messages(third), ["Late, but here"]);

  // What the web application publishes through the backend (HTTP, with the API key) arrives too.
  await eventually(async () => assert.ok((await messages(third, { fromServer: true })).length >= 1), {
    timeoutMs: ANNOUNCE_EVERY * 1000 + LIVE_TIMEOUT,
    message: "a page received the backend's publication",
  });

  const path = screenshotPath("pubsub.png");
  if (path) {
    await send(first, "Open this page in two tabs: what you send in one appears in both");
    await eventually(async () => assert.equal((await messages(second)).length, 4));
    await eventually(async () => assert.ok((await messages(second, { fromServer: true })).length >= 1), {
      timeoutMs: ANNOUNCE_EVERY * 1000 + LIVE_TIMEOUT,
    });
    await second.screenshot({ path });
  }
  for (const page of [first, second, third]) assert.deepEqual(page.errors, [], "no errors in the page");
});
