/**
 * The deployment of deploy/ and the README's "Deploy" section, tested: nginx in front with TLS,
 * Django under gunicorn, `manage.py snorky` behind `/ws` and `/sockjs/` (support/deploy.mjs starts
 * them). Chromium drives the todo demo over HTTPS: the page opens its WebSocket as wss:// on the
 * page's own origin, and changes show up live; a browser without WebSocket gets them through
 * SockJS via nginx. The README shows exactly the files the test uses. A wrong
 * ALLOWED_ORIGINS gets the handshake refused, with a log line naming the origin and the setting.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { after, before, describe, test } from "node:test";

import { eventually, launchBrowser, login, newPage, REPO_ROOT } from "./support/browser.mjs";
import { NGINX_SITE, startDeployment, SYSTEMD_UNIT, unitCommand } from "./support/deploy.mjs";
import { stopAll } from "./support/processes.mjs";
import { assertOverSockJS, pageWithoutWebSocket } from "./support/sockjs.mjs";

const USERS = { alice: "wonderland", bob: "builder" };
/** The demo's client waits at most 5 s between reconnection attempts. */
const RECOVERY_TIMEOUT = 20_000;

const status = (page, state, timeoutMs = 10_000) => page.locator(`#status[data-state="${state}"]`).waitFor({ timeout: timeoutMs });
const titles = (page, list) => page.locator(`#${list} .items li .title`).allTextContents();
const shows = (page, list, expected, timeoutMs = 5_000) =>
  eventually(async () => assert.deepEqual(await titles(page, list), expected), { timeoutMs, message: `${page.user}'s ${list} list` });

async function add(page, list, title) {
  const input = page.locator(`#${list} .new-todo`);
  await input.fill(title);
  await input.press("Enter");
}

/** Chromium errors other than the WebSocket attempts refused or cut on purpose. */
const unexpectedErrors = (page) => page.errors.filter((error) => !/WebSocket connection to .* failed/.test(error));

describe("the documented files", () => {
  const readme = readFileSync(resolve(REPO_ROOT, "README.md"), "utf8");

  for (const [file, language] of [
    [NGINX_SITE, "nginx"],
    [SYSTEMD_UNIT, "ini"],
  ]) {
    const name = file.slice(REPO_ROOT.length + 1);
    test(`README.md shows ${name} byte for byte`, () => {
      const shown = `<!-- ${name} -->\n\`\`\`${language}\n${readFileSync(file, "utf8")}\`\`\`\n`;
      assert.ok(readme.includes(shown), `README.md must show ${name} as it is, after the marker <!-- ${name} -->`);
    });
  }

  test("the systemd unit runs manage.py snorky on the address nginx proxies /ws to", () => {
    const command = unitCommand(readFileSync(SYSTEMD_UNIT, "utf8"));
    assert.deepEqual(command, ["manage.py", "snorky", "--frontend-address", "127.0.0.1:5001"]);
    assert.match(readFileSync(NGINX_SITE, "utf8"), /upstream snorky \{\n\s+server 127\.0\.0\.1:5001;/);
  });
});

describe("deployment: nginx with TLS, gunicorn, manage.py snorky", () => {
  let deployment;
  let browser;

  before(async () => {
    deployment = await startDeployment();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await deployment?.stop();
    await stopAll();
  });

  /** A signed-in page over HTTPS; `page.sockets` lists the URLs of the WebSockets it opened. */
  async function signedIn(user) {
    const page = await newPage(browser, { baseURL: deployment.origin, ignoreHTTPSErrors: true });
    page.user = user;
    page.sockets = [];
    page.on("websocket", (socket) => page.sockets.push(socket.url()));
    await login(page, `${deployment.origin}/accounts/login/`, user, USERS[user]);
    return page;
  }

  test("nginx redirects HTTP to HTTPS, serves the static files, and exposes neither /backend nor Snorky's /health", async () => {
    const redirect = await fetch(`${deployment.httpUrl}/accounts/login/`, { redirect: "manual" });
    assert.equal(redirect.status, 301);
    assert.equal(redirect.headers.get("location"), "https://127.0.0.1/accounts/login/");

    const client = await deployment.get("/static/snorky/snorky.min.js");
    assert.equal(client.status, 200);
    assert.match(client.headers["server"], /^nginx/);
    assert.match(client.headers["content-type"], /javascript/);
    assert.match(client.headers["cache-control"], /max-age=3600/);
    const shipped = readFileSync(resolve(REPO_ROOT, "python/snorky_django/static/snorky/snorky.min.js"), "utf8");
    assert.equal(client.body, shipped);

    // Only /ws (and /sockjs/) reach Snorky; everything else is Django's, which knows no /backend.
    for (const path of ["/backend", "/health", "/metrics"]) {
      const response = await deployment.get(path, { headers: { "X-Backend-Key": deployment.env.SNORKY_API_KEY } });
      assert.equal(response.status, 404, `${path} answered ${response.status}`);
      assert.doesNotMatch(response.body, /"status"|snorky_connections/);
    }
  });

  test("/sockjs/ goes to manage.py snorky, not to Django", async () => {
    // Django's pages carry its security middleware's headers; Snorky's answers do not.
    const django = await deployment.get("/accounts/login/");
    assert.equal(django.headers["x-frame-options"], "DENY");
    const sockjs = await deployment.get("/sockjs/info");
    assert.equal(sockjs.headers["x-frame-options"], undefined, `/sockjs/info answered by Django: ${sockjs.status}`);
    assert.equal(sockjs.status, 200, `/sockjs/info: HTTP ${sockjs.status}`);
    const info = JSON.parse(sockjs.body);
    assert.equal(info.websocket, true, "nginx passes the upgrade, so SockJS offers its websocket transport");
    assert.equal(typeof info.entropy, "number");
  });

  test("the page connects with wss:// on its own origin, and changes show up live between users", async () => {
    const [alice, bob] = await Promise.all([signedIn("alice"), signedIn("bob")]);
    for (const page of [alice, bob]) {
      await status(page, "live");
      assert.equal(new URL(page.url()).origin, deployment.origin);
      assert.ok(page.sockets.length >= 1, `${page.user}'s page opened no WebSocket`);
      for (const url of page.sockets) assert.equal(`${new URL(url).protocol}//${new URL(url).host}${new URL(url).pathname}`, `wss://127.0.0.1:${deployment.ports.https}/ws`);
    }

    await add(alice, "team", "Deployed over TLS");
    await shows(bob, "team", ["Deployed over TLS"]);
    await add(bob, "mine", "Bob's own");
    await shows(bob, "mine", ["Bob's own"]);
    await add(alice, "mine", "Alice's own");
    await shows(alice, "mine", ["Alice's own"]);
    await shows(bob, "mine", ["Bob's own"]);
    assert.ok(!bob.frames.join("\n").includes("Alice's own"), "bob's browser received alice's private todo");
    for (const page of [alice, bob]) assert.deepEqual(unexpectedErrors(page), [], `${page.user}'s page reported errors`);
    await Promise.all([alice.context().close(), bob.context().close()]);

    // nginx logs a WebSocket when it closes: without its query string, which holds the token.
    const log = await eventually(() => {
      const text = readFileSync(deployment.wsLog, "utf8");
      assert.match(text, /"GET \/ws" 101 /);
      return text;
    });
    assert.doesNotMatch(log, /token/);
  });

  test("a browser without WebSocket gets the live list through SockJS via nginx", async () => {
    const alice = await pageWithoutWebSocket(browser, { baseURL: deployment.origin, ignoreHTTPSErrors: true });
    alice.user = "alice";
    await login(alice, `${deployment.origin}/accounts/login/`, "alice", USERS.alice);
    const bob = await signedIn("bob");
    await Promise.all([status(alice, "live"), status(bob, "live")]);
    await assertOverSockJS(alice);
    assert.ok(
      alice.sockjsRequests.every((url) => new URL(url).origin === deployment.origin),
      `SockJS requests leave the page's origin: ${alice.sockjsRequests.slice(0, 3).join(", ")}`,
    );

    // Other tests share the team list: check that the new titles arrive, not the whole list.
    const gets = (page, title) =>
      eventually(async () => assert.ok((await titles(page, "team")).includes(title)), { timeoutMs: 5_000, message: `${page.user} sees ${title}` });
    await add(bob, "team", "Through a proxy that strips Upgrade");
    await gets(alice, "Through a proxy that strips Upgrade");
    await add(alice, "team", "Polling back");
    await gets(bob, "Polling back");
    for (const page of [alice, bob]) assert.deepEqual(unexpectedErrors(page), [], `${page.user}'s page reported errors`);
    await Promise.all([alice.context().close(), bob.context().close()]);

    // nginx logs SockJS's requests without their query strings, which hold the token.
    const log = await eventually(() => {
      const text = readFileSync(deployment.sockjsLog, "utf8");
      assert.match(text, /"POST \/sockjs\/[^" ]+\/xhr_send" 204 /);
      return text;
    });
    assert.doesNotMatch(log, /token/);
  });

  test("a wrong ALLOWED_ORIGINS: the handshake is refused, and the log names the origin and the setting", async () => {
    const page = await signedIn("alice");
    await status(page, "live");

    await deployment.stopSnorky();
    const right = deployment.env.SNORKY_ALLOWED_ORIGINS;
    deployment.env.SNORKY_ALLOWED_ORIGINS = "https://elsewhere.example";
    await deployment.startSnorky();
    try {
      const [line] = await deployment.snorky.waitForOutput(/^.*refused a WebSocket from origin.*$/m, { timeoutMs: RECOVERY_TIMEOUT });
      assert.ok(line.includes(`"${deployment.origin}"`), line);
      assert.ok(line.includes('SNORKY["ALLOWED_ORIGINS"]'), line);
      await status(page, "reconnecting");
      // The refusal reached the browser as HTTP 403 through nginx.
      assert.ok(page.errors.some((error) => /WebSocket connection to 'wss:\/\/127\.0\.0\.1:\d+\/ws.*' failed/.test(error)), page.errors.join("\n"));
    } finally {
      await deployment.stopSnorky();
      deployment.env.SNORKY_ALLOWED_ORIGINS = right;
      await deployment.startSnorky();
    }
    await status(page, "live", RECOVERY_TIMEOUT);
    assert.deepEqual(unexpectedErrors(page), []);
  });
});
