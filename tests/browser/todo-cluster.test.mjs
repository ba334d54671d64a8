/**
 * The todo demo (demos/todo) on two `manage.py snorky` nodes sharing a Redis (`SNORKY_BROKER`),
 * in Chromium. Pages and Django reach the nodes through load balancers (support/cluster.mjs:
 * round robin, no sticky sessions, the next node when one refuses), so alice's two pages are on
 * different nodes, and bob's on one of them. What one page changes shows on the page of the other
 * node, and only what bob may see reaches bob. Then the node of one of alice's pages is killed
 * with SIGKILL: the page moves to the other node, resumes its subscription there (by offset,
 * without fetching its data again, without a reload) and ends with the database's state,
 * including what the others changed meanwhile.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { launchBrowser, login, newPage, REPO_ROOT } from "./support/browser.mjs";
import { Balancer, startRedis } from "./support/cluster.mjs";
import { DjangoDemo } from "./support/django.mjs";
import { stopAll } from "./support/processes.mjs";
import { add, api, isDone, row, shows, status, USERS } from "./support/todo.mjs";

/**
 * Moving to the other node: the reconnection's backoff (at most 5 s in the demo), then the
 * acquisition waits for the killed node to be known dead (the node timeout, 15 s by default).
 */
const MOVE_TIMEOUT = 40_000;

describe("todo demo: two nodes sharing a Redis", () => {
  let redis;
  let demo;
  let browser;
  let frontend; // the pages' load balancer (WebSocket)
  let backend; // Django's (backend HTTP)
  let nodes;
  let alice; // alice's two pages, on different nodes
  let alice2;
  let bob;
  const subscribes = new Map(); // page -> how many times it fetched its data with a new token
  const unique = randomBytes(3).toString("hex");
  const t = (title) => `${title} ${unique}`;

  /** Opens a page of `user`, waits until it is live; `page.node` is the node its WebSocket reached. */
  async function openPage(user, name = user) {
    const before = frontend.connections.length;
    const page = await newPage(browser, { baseURL: demo.baseUrl });
    page.user = name;
    subscribes.set(page, 0);
    page.on("request", (request) => {
      if (request.headers()["x-snorky"] === "Subscribe") subscribes.set(page, subscribes.get(page) + 1);
    });
    await login(page, `${demo.baseUrl}/accounts/login/`, user, USERS[user]);
    await status(page, "live", 10_000);
    const mine = frontend.connections.slice(before).filter((connection) => !connection.closed);
    assert.equal(mine.length, 1, `${name}'s page has one connection`);
    assert.equal(subscribes.get(page), 1, `${name}'s page fetched its data with a token once`);
    page.connection = mine[0];
    return page;
  }

  before(async () => {
    redis = await startRedis();
    frontend = new Balancer("frontend", []);
    backend = new Balancer("backend", []);
    await Promise.all([frontend.listen(), backend.listen()]);
    demo = new DjangoDemo(`${REPO_ROOT}/demos/todo`, {
      SNORKY_BROKER: redis.url,
      SNORKY_PUBLIC_URL: `ws://127.0.0.1:${frontend.port}/ws`,
      SNORKY_BACKEND_URL: `http://127.0.0.1:${backend.port}/backend`,
    }, 60_000);
    await demo.manage("migrate", "--noinput", "-v", "0");
    nodes = [await demo.startNode("first"), await demo.startNode("second")];
    frontend.targets = nodes.map((node) => node.ports.ws);
    backend.targets = nodes.map((node) => node.ports.backend);
    for (const node of nodes) assert.ok(node.process.output.includes(`Broker: ${redis.url}`), node.process.tail());
    await demo.manage("demo_users", "--no-samples");
    await demo.startDjango();
    browser = await launchBrowser();
    alice = await openPage("alice");
    alice2 = await openPage("alice", "alice (second page)");
    bob = await openPage("bob");
  });

  after(async () => {
    await browser?.close();
    await demo?.stop();
    await Promise.all([frontend?.close(), backend?.close()]);
    await redis?.stop();
    await stopAll();
  });

  test("alice's two pages are on different nodes", () => {
    assert.notEqual(alice.connection.target, alice2.connection.target);
    assert.deepEqual(new Set(frontend.open().map((connection) => connection.target)), new Set([0, 1]));
  });

  test("what a page on one node changes shows on the other node's page; bob sees only his share", async () => {
    await add(alice, "mine", t("Buy milk"));
    await shows(alice2, "mine", [t("Buy milk")]);
    await add(alice2, "team", t("Standup at ten"));
    for (const page of [alice, bob]) await shows(page, "team", [t("Standup at ten")]);

    await row(alice2, "mine", t("Buy milk")).locator(".title").dblclick();
    const edit = alice2.locator("#mine li .edit");
    await edit.fill(t("Buy oat milk"));
    await edit.press("Enter");
    await shows(alice, "mine", [t("Buy oat milk")]);
    await row(alice, "mine", t("Buy oat milk")).locator(".toggle").check();
    await isDone(alice2, "mine", t("Buy oat milk"), true);

    await add(bob, "mine", t("Bob's secret"));
    await row(bob, "team", t("Standup at ten")).locator(".toggle").check();
    for (const page of [alice, alice2]) await isDone(page, "team", t("Standup at ten"), true);
    await row(alice, "team", t("Standup at ten")).locator(".destroy").click();
    for (const page of [alice2, bob]) await shows(page, "team", []);
    await shows(bob, "mine", [t("Bob's secret")]);
    await shows(alice2, "mine", [t("Buy oat milk")]);

    for (const title of [t("Buy milk"), t("Buy oat milk")]) {
      assert.ok(!bob.frames.join("\n").includes(title), `bob's browser received alice's private ${title}`);
    }
    for (const page of [alice, alice2]) {
      assert.ok(!page.frames.join("\n").includes(t("Bob's secret")), `${page.user} received bob's private todo`);
    }
  });

  test("a page whose node is killed moves to the other node and ends with the database's state", async () => {
    const killed = alice2.connection.target;
    const survivor = 1 - killed;
    for (const page of [alice, alice2, bob]) await page.evaluate(() => (window.notReloaded = true));
    const fetched = subscribes.get(alice2);
    const before = frontend.connections.length;

    await nodes[killed].process.stop({ signal: "SIGKILL" });
    // Meanwhile, the others change things: alice's other page (on the surviving node) and the API.
    assert.equal(alice.connection.target, survivor);
    await add(alice, "team", t("Written meanwhile"));
    const posted = await api(alice, "POST", "/api/todos/", { title: t("Posted meanwhile") });
    await api(alice, "PATCH", `/api/todos/${posted.id}/`, { done: true });

    // The database's state, as alice may see it: her list and the team's, by id.
    const todos = await api(alice, "GET", "/api/todos/");
    const mine = todos.filter((todo) => !todo.shared).map((todo) => todo.title);
    const team = todos.filter((todo) => todo.shared).map((todo) => todo.title);
    assert.deepEqual(mine, [t("Buy oat milk"), t("Posted meanwhile")]);
    assert.deepEqual(team, [t("Written meanwhile")]);
    const killedAt = Date.now();
    await status(alice2, "live", MOVE_TIMEOUT);
    await shows(alice2, "mine", mine, MOVE_TIMEOUT);
    await shows(alice2, "team", team, MOVE_TIMEOUT);
    await isDone(alice2, "mine", t("Posted meanwhile"), true, MOVE_TIMEOUT);
    console.log(`alice's page held the database's state ${Date.now() - killedAt} ms after the kill`);

    const moved = frontend.connections.slice(before).filter((connection) => !connection.closed);
    assert.deepEqual(moved.map((connection) => connection.target), [survivor], "alice's page moved to the survivor");
    assert.equal(subscribes.get(alice2), fetched, "alice's page resumed its subscription: it fetched nothing again");
    for (const page of [alice, alice2, bob]) {
      assert.equal(await page.evaluate(() => window.notReloaded), true, `${page.user}'s page was reloaded`);
    }

    // Live again, both ways.
    await add(alice2, "mine", t("After the move"));
    await shows(alice, "mine", [t("Buy oat milk"), t("Posted meanwhile"), t("After the move")]);
    await add(bob, "team", t("Bob after the move"));
    await shows(alice2, "team", [t("Written meanwhile"), t("Bob after the move")]);
    await shows(bob, "mine", [t("Bob's secret")]);
    const errors = alice2.errors.filter((error) => !/WebSocket connection to .* failed/.test(error));
    assert.deepEqual(errors, [], "alice's moved page reported errors");
  });
});
