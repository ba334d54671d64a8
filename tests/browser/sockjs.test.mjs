/**
 * The demos in a Chromium without WebSocket (`window.WebSocket` removed before any script runs):
 * the pages load sockjs-client (the npm package, tests/sockjs) and reach Snorky through `/sockjs`.
 * The chat demo's presence, messages and cursors work, and the todo demo's list updates live.
 */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { eventually, launchBrowser, login } from "./support/browser.mjs";
import { startDjangoDemo } from "./support/django.mjs";
import { stopAll } from "./support/processes.mjs";
import { assertOverSockJS, pageWithoutWebSocket } from "./support/sockjs.mjs";

describe("chat demo over SockJS", () => {
  const PASSWORDS = { alice: "wonderland", bob: "builder" };
  let demo;
  let browser;
  let alice;
  let bob;

  before(async () => {
    demo = await startDjangoDemo("demos/chat", { setup: [["demo_users"]] });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await demo?.stop();
    await stopAll();
  });

  async function openChat(username) {
    const page = await pageWithoutWebSocket(browser, { viewport: { width: 1280, height: 720 } });
    await login(page, `${demo.baseUrl}/login/`, username, PASSWORDS[username]);
    await page.locator("body[data-ready]").waitFor();
    page.identity = await page.evaluate(() => JSON.parse(document.getElementById("demo-data").textContent).me);
    return page;
  }

  const members = (page) =>
    page.locator("#members li[data-user]").evaluateAll((items) => items.map((item) => item.dataset.user));
  const messages = (page) =>
    page.locator("#log li.message").evaluateAll((items) =>
      items.map((item) => `${item.querySelector(".who")?.textContent}: ${item.querySelector(".body")?.textContent}`),
    );

  test("presence, messages and cursors", async () => {
    alice = await openChat("alice");
    assert.equal(await alice.locator("#status").getAttribute("data-state"), "connected");
    bob = await openChat("bob");
    await eventually(async () => assert.deepEqual(await members(alice), [alice.identity, bob.identity]), {
      message: "Bob is listed on Alice's page",
    });

    await bob.locator("#message").fill("Hello over SockJS");
    await bob.locator("#message").press("Enter");
    await eventually(async () => assert.deepEqual(await messages(alice), ["Bob: Hello over SockJS"]), {
      message: "Bob's message on Alice's page",
    });

    await bob.locator("#notes-text").click();
    await bob.keyboard.press("Control+Home");
    for (let i = 0; i < 4; i++) await bob.keyboard.press("ArrowRight");
    await eventually(
      async () => {
        const cursor = alice.locator(`#cursors .remote-cursor[data-user="${bob.identity}"]`);
        assert.equal(await cursor.count(), 1);
        assert.equal(Number(await cursor.getAttribute("data-position")), 4);
      },
      { message: "Bob's caret drawn at 4 on Alice's page" },
    );

    // Bob's page closes: the server notices through SockJS too.
    await bob.close();
    await eventually(async () => assert.deepEqual(await members(alice), [alice.identity]), {
      message: "Bob left Alice's list",
      timeoutMs: 10_000,
    });
    await assertOverSockJS(alice);
    assert.deepEqual(alice.errors, [], "no errors in the page");
  });
});

describe("todo demo over SockJS", () => {
  let demo;
  let browser;

  before(async () => {
    demo = await startDjangoDemo("demos/todo", { setup: [["demo_users", "--no-samples"]] });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await demo?.stop();
    await stopAll();
  });

  test("a todo added in one page appears in the other", async () => {
    const [one, two] = await Promise.all(
      [0, 1].map(async () => {
        const page = await pageWithoutWebSocket(browser, { baseURL: demo.baseUrl });
        await login(page, `${demo.baseUrl}/accounts/login/`, "alice", "wonderland");
        await page.locator('#status[data-state="live"]').waitFor({ timeout: 10_000 });
        return page;
      }),
    );
    const title = `Over SockJS ${Date.now()}`;
    await one.locator("#mine .new-todo").fill(title);
    await one.locator("#mine .new-todo").press("Enter");
    await eventually(async () => assert.deepEqual(await two.locator("#mine .items li .title").allTextContents(), [title]), {
      message: "the other page's list",
    });
    await assertOverSockJS(two);
    assert.deepEqual(two.errors, [], "no errors in the page");
  });
});
