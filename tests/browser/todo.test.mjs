/**
 * The todo demo (demos/todo) in Chromium: alice in two tabs (two contexts, one session each) and
 * bob in a third. Changes show up live on the pages that may see them and never reach the others;
 * a todo that leaves a user's view disappears there; the Snorky server is restarted mid-test and
 * the pages recover without a reload, with what changed while it was down; signing out in one tab
 * closes the user's other tab's connection (it goes to the login form). A tick on its way to the
 * server survives other changes arriving, and one the server refuses is undone. Then `run.py` itself:
 * one command, a URL and credentials printed, both servers stopped on SIGTERM.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { eventually, launchBrowser, LIVE_TIMEOUT, login, newPage, REPO_ROOT, screenshotPath } from "./support/browser.mjs";
import { PYTHON, startDjangoDemo } from "./support/django.mjs";
import { freePorts, isListening, startProcess, stopAll, waitForUrl } from "./support/processes.mjs";
import { add, api, deltas, isDone, row, shows, status, USERS } from "./support/todo.mjs";

/** A recovery after a restart waits for the client's reconnection backoff (at most 5 s in the demo). */
const RECOVERY_TIMEOUT = 20_000;

// --- Live sync between users --------------------------------------------------------------------

describe("todo demo: live lists", () => {
  let demo;
  let browser;
  let alice; // two tabs of alice's, in separate contexts (sessions)
  let alice2;
  let bob;
  const unique = randomBytes(3).toString("hex");
  const t = (title) => `${title} ${unique}`;

  before(async () => {
    demo = await startDjangoDemo("demos/todo", { setup: [["demo_users", "--no-samples"]] });
    browser = await launchBrowser();
    [alice, alice2, bob] = await Promise.all(
      ["alice", "alice", "bob"].map(async (user) => {
        const page = await newPage(browser, { baseURL: demo.baseUrl });
        page.user = user;
        await login(page, `${demo.baseUrl}/accounts/login/`, user, USERS[user]);
        await status(page, "live", 10_000);
        return page;
      }),
    );
  });

  after(async () => {
    await browser?.close();
    await demo?.stop();
    await stopAll();
  });

  test("a todo added in one tab appears in the user's other tab, not in another user's page", async () => {
    await add(alice, "mine", t("Buy milk"));
    await shows(alice, "mine", [t("Buy milk")]);
    await shows(alice2, "mine", [t("Buy milk")]);

    await add(bob, "mine", t("Bob's secret"));
    await add(bob, "team", t("Standup at ten"));
    for (const page of [alice, alice2, bob]) await shows(page, "team", [t("Standup at ten")]);
    // Deltas arrive in commit order: alice has seen the later team todo, so the private one would
    // have arrived before it, had it been sent.
    await shows(alice, "mine", [t("Buy milk")]);
    await shows(alice2, "mine", [t("Buy milk")]);
    await shows(bob, "mine", [t("Bob's secret")]);
  });

  test("ticking, editing and deleting show up live", async () => {
    await alice2.locator("#mine li .toggle").first().check();
    await isDone(alice, "mine", t("Buy milk"), true);

    await row(alice, "mine", t("Buy milk")).locator(".title").dblclick();
    const edit = alice.locator("#mine li .edit");
    await edit.fill(t("Buy oat milk"));
    await edit.press("Enter");
    await shows(alice2, "mine", [t("Buy oat milk")]);
    await isDone(alice2, "mine", t("Buy oat milk"), true);

    // Bob ticks a team todo; alice unticks it.
    await row(bob, "team", t("Standup at ten")).locator(".toggle").check();
    await isDone(alice, "team", t("Standup at ten"), true);
    await row(alice2, "team", t("Standup at ten")).locator(".toggle").uncheck();
    await isDone(bob, "team", t("Standup at ten"), false);

    await add(alice, "team", t("Retro notes"));
    await shows(bob, "team", [t("Standup at ten"), t("Retro notes")]);
    await row(bob, "team", t("Retro notes")).locator(".destroy").click();
    for (const page of [alice, alice2, bob]) await shows(page, "team", [t("Standup at ten")]);
  });

  test("sharing moves a todo to everyone's team list; unsharing takes it out of bob's view", async () => {
    await add(alice, "mine", t("Plan the offsite"));
    await shows(alice2, "mine", [t("Buy oat milk"), t("Plan the offsite")]);

    await row(alice2, "mine", t("Plan the offsite")).locator(".share").click();
    for (const page of [alice, alice2, bob]) await shows(page, "team", [t("Standup at ten"), t("Plan the offsite")]);
    await shows(alice, "mine", [t("Buy oat milk")]);
    // Only the owner may unshare: bob's page offers no button for it.
    assert.equal(await row(bob, "team", t("Plan the offsite")).locator(".share").isVisible(), false);
    assert.equal(await row(bob, "team", t("Plan the offsite")).locator(".owner").textContent(), "alice");

    await row(alice, "team", t("Plan the offsite")).locator(".share").click();
    await shows(bob, "team", [t("Standup at ten")]);
    await shows(alice2, "team", [t("Standup at ten")]);
    await shows(alice2, "mine", [t("Buy oat milk"), t("Plan the offsite")]);
    // Bob's page got a delete for it, not an update of a todo it may no longer see.
    const last = deltas(bob).filter((delta) => (delta.data ?? delta.newData).title === t("Plan the offsite")).at(-1);
    assert.equal(last.type, "delete");
  });

  test("giving a todo to bob takes it out of alice's tabs and into bob's list", async () => {
    await row(alice, "mine", t("Plan the offsite")).locator(".give").selectOption({ label: "bob" });
    await shows(alice, "mine", [t("Buy oat milk")]);
    await shows(alice2, "mine", [t("Buy oat milk")]);
    await shows(bob, "mine", [t("Bob's secret"), t("Plan the offsite")]);

    // Bob may edit it now; alice's pages hear nothing more of it.
    const before = deltas(alice).length;
    await row(bob, "mine", t("Plan the offsite")).locator(".toggle").check();
    await isDone(bob, "mine", t("Plan the offsite"), true);
    await add(bob, "team", t("Barrier"));
    await shows(alice, "team", [t("Standup at ten"), t("Barrier")]);
    assert.deepEqual(
      deltas(alice)
        .slice(before)
        .map((delta) => (delta.data ?? delta.newData).title),
      [t("Barrier")],
    );
  });

  test("a tick on its way to the server stays shown while other changes arrive; a refused one is undone", async () => {
    const tab = await newPage(browser, { baseURL: demo.baseUrl });
    tab.user = "bob (a tab of his own)";
    await login(tab, `${demo.baseUrl}/accounts/login/`, "bob", USERS.bob);
    await status(tab, "live", 10_000);
    const secret = row(tab, "mine", t("Bob's secret")).locator(".toggle");
    const oneTodo = "**/api/todos/*/";

    // Bob's tick is held on its way to Django while alice adds a team todo: its delta redraws
    // bob's lists, and the box he ticked stays ticked.
    let release;
    const held = new Promise((resolve) => (release = resolve));
    await tab.route(oneTodo, async (route) => {
      if (route.request().method() === "PATCH") await held;
      await route.continue();
    });
    await secret.check();
    await add(alice, "team", t("While bob's tick is held"));
    await shows(tab, "team", [t("Standup at ten"), t("Barrier"), t("While bob's tick is held")]);
    assert.equal(await secret.isChecked(), true, "the tick on its way is still shown");
    release();
    await isDone(bob, "mine", t("Bob's secret"), true);
    await tab.unroute(oneTodo);

    // A write Django refuses: the box shows the todo as it is again, and the page says why.
    await tab.route(oneTodo, (route) =>
      route.fulfill({ status: 400, contentType: "application/json", body: '{"detail": "Refused by the test"}' }),
    );
    await secret.click();
    await eventually(async () => {
      assert.equal(await tab.locator(".error").textContent(), "Could not save: Refused by the test");
      assert.equal(await secret.isChecked(), true);
    });
    await tab.context().close();

    await row(alice, "team", t("While bob's tick is held")).locator(".destroy").click();
    for (const page of [alice, alice2, bob]) await shows(page, "team", [t("Standup at ten"), t("Barrier")]);
  });

  test("the Snorky server restarts: pages recover without a reload, with the changes made meanwhile", async () => {
    for (const page of [alice, alice2, bob]) await page.evaluate(() => (window.notReloaded = true));

    await demo.stopSnorky();
    for (const page of [alice, alice2, bob]) await status(page, "reconnecting", 10_000);

    // While it is down: bob adds a team todo from his page (it shows there at once), alice adds
    // one to her list and ticks a team todo through the API.
    await add(bob, "team", t("Written while down"));
    await shows(bob, "team", [t("Standup at ten"), t("Barrier"), t("Written while down")]);
    const created = await api(alice2, "POST", "/api/todos/", { title: t("Posted while down") });
    const standup = (await api(alice2, "GET", "/api/todos/")).find((todo) => todo.title === t("Standup at ten"));
    await api(alice2, "PATCH", `/api/todos/${standup.id}/`, { done: true });
    assert.equal(created.shared, false);
    // A page opened meanwhile shows the data (Django answers 503 to the subscription request).
    const late = await newPage(browser, { baseURL: demo.baseUrl });
    late.user = "bob (opened while down)";
    await login(late, `${demo.baseUrl}/accounts/login/`, "bob", USERS.bob);
    await shows(late, "team", [t("Standup at ten"), t("Barrier"), t("Written while down")], 10_000);
    assert.notEqual(await late.locator("#status").getAttribute("data-state"), "live");

    await demo.startSnorky();
    for (const page of [alice, alice2, bob, late]) await status(page, "live", RECOVERY_TIMEOUT);
    for (const page of [alice, alice2]) {
      await shows(page, "team", [t("Standup at ten"), t("Barrier"), t("Written while down")], RECOVERY_TIMEOUT);
      await shows(page, "mine", [t("Buy oat milk"), t("Posted while down")], RECOVERY_TIMEOUT);
    }
    await shows(bob, "mine", [t("Bob's secret"), t("Plan the offsite")]);
    for (const page of [alice, alice2, bob]) {
      await isDone(page, "team", t("Standup at ten"), true, RECOVERY_TIMEOUT);
      assert.equal(await page.evaluate(() => window.notReloaded), true, `${page.user}'s page was reloaded`);
    }

    // Live again.
    await add(bob, "team", t("After the restart"));
    for (const page of [alice, alice2, late]) {
      await shows(page, "team", [t("Standup at ten"), t("Barrier"), t("Written while down"), t("After the restart")]);
    }
    await add(alice2, "mine", t("Also after"));
    await shows(alice, "mine", [t("Buy oat milk"), t("Posted while down"), t("Also after")]);
    await shows(late, "mine", [t("Bob's secret"), t("Plan the offsite")]);
    await late.context().close();
  });

  test("clearing the team's completed todos removes them everywhere", async () => {
    await row(alice, "team", t("Barrier")).locator(".toggle").check();
    await isDone(bob, "team", t("Barrier"), true);
    await bob.locator("#team .clear").click();
    const left = [t("Written while down"), t("After the restart")];
    for (const page of [alice, alice2, bob]) await shows(page, "team", left);
    await shows(alice, "mine", [t("Buy oat milk"), t("Posted while down"), t("Also after")]);
  });

  test("nothing private ever reached the other user's browser, and no page reported an error", async () => {
    const received = (page) => page.frames.join("\n");
    for (const title of [t("Buy milk"), t("Buy oat milk"), t("Posted while down"), t("Also after")]) {
      assert.ok(!received(bob).includes(title), `bob's browser received alice's private ${title}`);
    }
    for (const page of [alice, alice2]) {
      assert.ok(!received(page).includes(t("Bob's secret")), `${page.user}'s browser received bob's private todo`);
      assert.equal(await row(page, "mine", t("Bob's secret")).count(), 0);
    }
    for (const page of [alice, alice2, bob]) {
      // Chromium logs the failed WebSocket reconnection attempts while the server was down.
      const errors = page.errors.filter((error) => !/WebSocket connection to .* failed/.test(error));
      assert.deepEqual(errors, [], `${page.user}'s page reported errors`);
    }
  });

  test("signing out in one tab signs the user's other tab out; other users stay live", async () => {
    await alice.locator("form[action$='/logout/'] button").click();
    // The tab itself goes there twice over: the logout's redirect, and its own live connection
    // closed with 4501 (whichever comes first aborts the other navigation), so wait for where it
    // ends, not for one navigation.
    await eventually(
      async () => {
        assert.match(alice.url(), /\/accounts\/login\//);
        await alice.locator("input[name='username']").waitFor({ timeout: 1_000 });
      },
      { timeoutMs: 10_000, message: "alice's tab at the login form" },
    );
    // alice2's live connection was closed by the server (close code 4501, no reconnection): the
    // page went to the login form by itself.
    await alice2.waitForURL(/\/accounts\/login\//, { timeout: LIVE_TIMEOUT });
    await status(bob, "live");
    await add(bob, "team", t("After alice left"));
    await shows(bob, "team", [t("Written while down"), t("After the restart"), t("After alice left")]);
  });
});

// --- The one command ------------------------------------------------------------------------------

describe("todo demo: run.py", () => {
  let runner;
  let tmp;

  after(async () => {
    await stopAll();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test("starts both servers with sample todos, prints the URL and the credentials, stops on SIGTERM", async () => {
    tmp = mkdtempSync(join(tmpdir(), "snorky-todo-run-"));
    const [http, ws, backend] = await freePorts(3);
    runner = startProcess(
      PYTHON,
      [
        "demos/todo/run.py",
        "--no-browser",
        `--port=${http}`,
        `--ws-port=${ws}`,
        `--backend-port=${backend}`,
        `--db=${join(tmp, "db.sqlite3")}`,
      ],
      { name: "run.py", cwd: REPO_ROOT, env: { DISPLAY: "" } },
    );
    const url = `http://127.0.0.1:${http}/`;
    await runner.waitForOutput(`Snorky todo demo: ${url}`, { timeoutMs: 60_000 });
    await runner.waitForOutput("alice / wonderland");
    await runner.waitForOutput("bob / builder");
    await waitForUrl(`http://127.0.0.1:${ws}/health`, { process: runner, accept: (code) => code === 200 });

    const browser = await launchBrowser();
    try {
      const page = await newPage(browser, { viewport: { width: 1100, height: 470 } });
      page.user = "alice";
      await login(page, url, "alice", USERS.alice);
      await status(page, "live", 10_000);
      await shows(page, "mine", ["Open this page as bob in a private window", "Tick me here, watch the other window", "Water the plants"]);
      await shows(page, "team", ["Write the release notes", "Double-click a todo to edit it", "Review alice's pull request"]);
      const path = screenshotPath("todo.png"); // what a new user sees first (npm run screenshots)
      if (path) await page.screenshot({ path });
      assert.deepEqual(page.errors, []);
    } finally {
      await browser.close();
    }

    const { code } = await runner.stop({ signal: "SIGTERM", timeoutMs: 15_000 });
    assert.equal(code, 0, runner.tail());
    for (const port of [http, ws, backend]) {
      await eventually(async () => assert.equal(await isListening(port), false, `port ${port} still open`), {
        timeoutMs: 5_000,
      });
    }
  });
});
