/**
 * Every transport sockjs-client can be forced to in Chromium, against Snorky's SockJS code
 * (`snorky sockjs-echo`), from a page of another origin: the ones Node has too (websocket,
 * xhr-streaming, xhr-polling, eventsource) and the browser-only ones: JSONP polling and the
 * iframe transports (the iframe page loads sockjs-client, answered locally like the page).
 */

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { launchBrowser, newPage, REPO_ROOT } from "./support/browser.mjs";
import { PYTHON } from "./support/django.mjs";
import { freePort, startProcess, stopAll, waitForUrl } from "./support/processes.mjs";

const SOCKJS_CLIENT = join(REPO_ROOT, "tests", "sockjs", "node_modules", "sockjs-client", "dist", "sockjs.min.js");
const TRANSPORTS = [
  "websocket",
  "xhr-streaming",
  "xhr-polling",
  "eventsource",
  "jsonp-polling",
  "iframe-eventsource",
  "iframe-htmlfile",
  "iframe-xhr-polling",
];

describe("sockjs-client in Chromium, transport by transport", () => {
  let server;
  let base;
  let browser;
  let page;
  let app;

  before(async () => {
    assert.ok(existsSync(SOCKJS_CLIENT), "run `npm ci` in tests/sockjs (scripts/setup does) for sockjs-client");
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    server = startProcess(PYTHON, ["-m", "snorky", "sockjs-echo", "--address", `127.0.0.1:${port}`], {
      name: "sockjs-echo",
    });
    await waitForUrl(`${base}/echo/info`, { process: server });
    // The page comes from another origin on loopback (Chromium lets only local pages reach a
    // local server): a page loading sockjs-client, which the iframe page loads too.
    app = createServer((request, response) => {
      if (request.url === "/sockjs.min.js") {
        response.writeHead(200, { "content-type": "application/javascript" });
        response.end(readFileSync(SOCKJS_CLIENT));
      } else {
        response.writeHead(200, { "content-type": "text/html" });
        response.end('<!doctype html><html><body><script src="/sockjs.min.js"></script></body></html>');
      }
    });
    await new Promise((resolve) => app.listen(0, "127.0.0.1", resolve));
    browser = await launchBrowser();
    page = await newPage(browser);
    // The iframe page's script (the server's sockjs_client_url, a CDN by default) is answered
    // locally: the tests use no network.
    await page.context().route("**/sockjs.min.js", (route) =>
      route.fulfill({ path: SOCKJS_CLIENT, contentType: "application/javascript" }),
    );
    await page.goto(`http://127.0.0.1:${app.address().port}/`);
  });

  after(async () => {
    await browser?.close();
    app?.close();
    await stopAll();
  });

  for (const transport of TRANSPORTS) {
    test(`${transport}: opens, echoes, and is closed by the server`, async () => {
      const result = await page.evaluate(
        ({ base, transport }) =>
          new Promise((resolve) => {
            const events = [];
            const timer = setTimeout(() => resolve({ events, error: "timed out" }), 20_000);
            // sockjs-client gives a transport its measured round trip times the transport's
            // round trips to open (under a second on loopback) and then reports "All transports
            // failed"; a loaded machine opening an iframe takes longer, so a fixed allowance.
            const options = { transports: [transport], timeout: 8_000 };
            const echo = new SockJS(`${base}/echo`, null, options);
            echo.onopen = () => {
              events.push(`open ${echo.transport}`);
              echo.send("héllo \u2028 wörld");
            };
            echo.onmessage = (event) => {
              events.push(`message ${event.data}`);
              // Then a session the server closes at once: its close frame and reason arrive.
              const closing = new SockJS(`${base}/close`, null, options);
              closing.onclose = (close) => {
                events.push(`close ${close.code} ${close.reason}`);
                clearTimeout(timer);
                echo.close();
                resolve({ events });
              };
            };
            echo.onclose = (close) => events.push(`echo closed ${close.code} ${close.reason}`);
          }),
        { base, transport },
      );
      assert.deepEqual(result, {
        events: [`open ${transport}`, "message héllo \u2028 wörld", 'close 3000 Go away!'],
      });
    });
  }
});
