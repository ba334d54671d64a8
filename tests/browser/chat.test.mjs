/**
 * The chat demo (demos/chat) in Chromium, signed in through Django's login: joining, presence that
 * appears and disappears, messages, read receipts across two tabs of one user, and remote cursors
 * that move in the shared notes.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { eventually, launchBrowser, login, newPage, screenshotPath } from "./support/browser.mjs";
import { startDjangoDemo } from "./support/django.mjs";
import { stopAll } from "./support/processes.mjs";

/** As demos/chat/chat/management/commands/demo_users.py creates them. */
const PASSWORDS = { alice: "wonderland", bob: "builder", carol: "christmas" };

let demo;
let browser;
const pages = [];

before(async () => {
  demo = await startDjangoDemo("demos/chat", { setup: [["demo_users"]] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await demo?.stop();
  await stopAll();
});

/** Watches a page for errors as newPage does (for tabs opened in an existing context). */
function watchErrors(page) {
  page.errors = [];
  page.on("pageerror", (error) => page.errors.push(`pageerror: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") page.errors.push(`console.error: ${message.text()}`);
  });
  return page;
}

/** The chat page once it has joined every room: `username` signed in, in a context of its own. */
async function openChat(username) {
  const page = await newPage(browser, { viewport: { width: 1280, height: 720 } });
  await login(page, `${demo.baseUrl}/login/`, username, PASSWORDS[username]);
  return ready(page);
}

/** A second tab of the same browser context: the same user, the same session. */
async function openTab(page) {
  const tab = watchErrors(await page.context().newPage());
  await tab.goto(`${demo.baseUrl}/`);
  return ready(tab);
}

async function ready(page) {
  await page.locator("body[data-ready]").waitFor();
  page.identity = await page.evaluate(() => JSON.parse(document.getElementById("demo-data").textContent).me);
  pages.push(page);
  return page;
}

async function close(page) {
  assert.deepEqual(page.errors, [], "no errors in the page");
  pages.splice(pages.indexOf(page), 1);
  await page.close();
}

async function members(page) {
  return page.locator("#members li[data-user]").evaluateAll((items) => items.map((item) => item.dataset.user));
}

/** The room's log lines of one kind, without their times: "Bob joined", "Carol: Lunch at noon?". */
async function logTexts(page, kind) {
  return page.locator(`#log li.${kind}`).evaluateAll((items) =>
    items.map((item) => {
      const who = item.querySelector(".who")?.textContent;
      const body = item.querySelector(".body")?.textContent;
      if (body !== undefined) return `${who}: ${body}`;
      const copy = item.cloneNode(true);
      copy.querySelector("time")?.remove();
      return copy.textContent.trim();
    }),
  );
}

async function unread(page, room) {
  return Number(await page.locator(`#rooms button[data-room="${room}"]`).getAttribute("data-unread"));
}

async function say(page, text) {
  await page.locator("#message").fill(text);
  await page.locator("#message").press("Enter");
}

async function remoteCursor(page, owner) {
  const cursor = page.locator(`#cursors .remote-cursor[data-user="${owner}"]`);
  if ((await cursor.count()) !== 1) throw new Error(`${await cursor.count()} cursors of ${owner}`);
  return cursor.evaluate((element) => ({
    position: Number(element.dataset.position),
    left: parseFloat(element.style.left),
    top: parseFloat(element.style.top),
    name: element.textContent,
  }));
}

let alice;
let aliceTab;
let bob;
let carol;

test("join: the page joins every room, online, with its user present", async () => {
  alice = await openChat("alice");
  assert.equal(await alice.locator("#status").getAttribute("data-state"), "connected");
  assert.deepEqual(await members(alice), [alice.identity]);
  assert.equal(await alice.locator("#members").innerText(), "Alice (you)");
  assert.equal(await alice.locator("#leave").innerText(), "Leave");
  assert.equal(await alice.locator("#room-title").innerText(), "# General");
});

test("presence: a second user appears when they join and disappears when they leave", async () => {
  bob = await openChat("bob");
  await eventually(async () => assert.deepEqual(await members(alice), [alice.identity, bob.identity]), {
    message: "Bob is listed on Alice's page",
  });
  await eventually(async () => assert.deepEqual(await logTexts(alice, "presence"), ["Bob joined"]), {
    message: "Alice's log says Bob joined",
  });
  assert.deepEqual(await members(bob), [bob.identity, alice.identity], "the joiner sees who was there");
  assert.deepEqual(await logTexts(bob, "presence"), [], "no presence is sent about oneself");

  // Leaving the room with the button, then joining it again.
  await bob.locator("#leave").click();
  await eventually(async () => assert.deepEqual(await members(alice), [alice.identity]), {
    message: "Bob left Alice's list",
  });
  await eventually(async () => assert.equal((await logTexts(alice, "presence")).at(-1), "Bob left"));
  assert.equal(await bob.locator("#leave").innerText(), "Join");
  assert.ok(await bob.locator("#message").isDisabled(), "no writing in a room one has left");
  await bob.locator("#leave").click();
  await eventually(async () => assert.deepEqual(await members(alice), [alice.identity, bob.identity]));

  // Closing the page: the server notices the disconnection.
  await close(bob);
  await eventually(async () => assert.deepEqual(await members(alice), [alice.identity]), {
    message: "Bob's closed page took him out of Alice's list",
  });
  await eventually(async () => assert.equal((await logTexts(alice, "presence")).at(-1), "Bob left"));
});

test("messages and read receipts: reading a room in one tab marks it read in the user's other tab", async () => {
  aliceTab = await openTab(alice);
  assert.deepEqual(await members(alice), [alice.identity], "two tabs of one user are one member");
  assert.deepEqual(await logTexts(alice, "presence"), ["Bob joined", "Bob left", "Bob joined", "Bob left"]);
  for (const page of [alice, aliceTab]) await page.locator('#rooms button[data-room="random"]').click();

  carol = await openChat("carol");
  await say(carol, "Lunch at noon?");
  await eventually(async () => assert.deepEqual(await logTexts(carol, "message"), ["Carol (you): Lunch at noon?"]), {
    message: "the sender gets her own message",
  });
  for (const page of [alice, aliceTab]) {
    await eventually(async () => assert.equal(await unread(page, "general"), 1), {
      message: "each of Alice's tabs counts Carol's message unread in General",
    });
    assert.equal(await page.locator('#rooms button[data-room="general"] .badge').innerText(), "1");
    assert.deepEqual(await logTexts(page, "message"), [], "Random shows no message");
  }

  // Alice opens General in one tab: read there, and the read receipt clears the other tab.
  await alice.locator('#rooms button[data-room="general"]').click();
  assert.deepEqual(await logTexts(alice, "message"), ["Carol: Lunch at noon?"]);
  assert.equal(await alice.locator("#log li.message.unread").count(), 0);
  assert.equal(await unread(alice, "general"), 0);
  await eventually(async () => assert.equal(await unread(aliceTab, "general"), 0), {
    message: "the read receipt reached Alice's other tab",
  });
  assert.ok(await aliceTab.locator('#rooms button[data-room="general"] .badge').isHidden());
  await aliceTab.locator('#rooms button[data-room="general"]').click();
  assert.equal(await aliceTab.locator("#log li.message.unread").count(), 0, "already read in the other tab");

  // A message that arrives in the room on screen is read at once, in both tabs.
  await say(carol, "Or at one");
  for (const page of [alice, aliceTab]) {
    await eventually(async () => assert.equal((await logTexts(page, "message")).length, 2));
    assert.equal(await unread(page, "general"), 0);
  }

  // The other direction; a message of one's own is never unread in one's other tabs.
  await aliceTab.locator('#rooms button[data-room="random"]').click();
  await say(alice, "Noon is fine");
  await eventually(async () => assert.equal((await logTexts(carol, "message")).at(-1), "Alice: Noon is fine"));
  await eventually(async () => assert.equal((await logTexts(alice, "message")).at(-1), "Alice (you): Noon is fine"));
  assert.equal(await unread(aliceTab, "general"), 0);
  await aliceTab.locator('#rooms button[data-room="general"]').click();
  assert.equal((await logTexts(aliceTab, "message")).at(-1), "Alice (you): Noon is fine");
});

test("cursors: a participant's caret is shown in the shared notes, and moves with it", async () => {
  bob = await openChat("bob");
  const notes = bob.locator("#notes-text");
  const firstLine = (await notes.inputValue()).split("\n")[0];

  await notes.click();
  await bob.keyboard.press("Control+Home");
  for (let i = 0; i < 3; i++) await bob.keyboard.press("ArrowRight");
  const start = await eventually(
    async () => {
      const cursor = await remoteCursor(alice, bob.identity);
      assert.equal(cursor.position, 3);
      return cursor;
    },
    { message: "Bob's caret is drawn at 3 on Alice's page" },
  );
  assert.equal(start.name, "Bob");

  await bob.keyboard.press("End");
  const end = await eventually(async () => {
    const cursor = await remoteCursor(alice, bob.identity);
    assert.equal(cursor.position, firstLine.length);
    return cursor;
  });
  assert.ok(end.left > start.left, `the caret moved right (${start.left} → ${end.left})`);
  assert.equal(end.top, start.top);

  await bob.keyboard.press("ArrowDown");
  await eventually(async () => {
    const cursor = await remoteCursor(alice, bob.identity);
    assert.ok(cursor.top > end.top, `the caret moved down (${end.top} → ${cursor.top})`);
    return cursor;
  });

  // Typing: the text reaches the others (saved by Django, published), the caret follows it.
  await bob.keyboard.press("ArrowUp");
  await bob.keyboard.press("End");
  await bob.keyboard.type(", 3 pm");
  const text = await notes.inputValue();
  assert.equal(text.split("\n")[0], `${firstLine}, 3 pm`);
  await eventually(async () => assert.equal(await alice.locator("#notes-text").inputValue(), text), {
    message: "Bob's text reached Alice",
  });
  await eventually(async () => assert.equal((await remoteCursor(alice, bob.identity)).position, firstLine.length + 6));
  assert.equal((await remoteCursor(alice, bob.identity)).top, end.top);

  // Alice's two tabs are two cursors on Bob's page; each moves on its own.
  await alice.locator("#notes-text").click();
  await alice.keyboard.press("Control+End");
  await aliceTab.locator("#notes-text").click();
  await aliceTab.keyboard.press("Control+Home");
  await eventually(async () => {
    const positions = await bob
      .locator(`#cursors .remote-cursor[data-user="${alice.identity}"]`)
      .evaluateAll((elements) => elements.map((element) => Number(element.dataset.position)).sort((a, b) => a - b));
    assert.deepEqual(positions, [0, text.length]);
  });

  // Leaving: the caret goes away.
  await close(bob);
  const bobsCursors = alice.locator(`#cursors .remote-cursor[data-user="${bob.identity}"]`);
  await eventually(async () => assert.equal(await bobsCursors.count(), 0), {
    message: "Bob's caret went away with his page",
  });
  assert.equal(await alice.locator(`#cursors .remote-cursor[data-user="${alice.identity}"]`).count(), 1);
  for (const page of pages) assert.deepEqual(page.errors, [], "no errors in the pages");
});

test("reconnection: after Snorky restarts, rooms, members and cursors come back without a reload", async () => {
  bob = await openChat("bob");
  await bob.locator("#notes-text").click();
  await bob.keyboard.press("Control+Home");
  for (let i = 0; i < 5; i++) await bob.keyboard.press("ArrowRight");
  await eventually(async () => assert.equal((await remoteCursor(alice, bob.identity)).position, 5));

  await demo.restartSnorky();
  // Back within the client's backoff; a reconnection gets a fresh connection token from Django.
  const reconnected = { timeoutMs: 20_000 };
  for (const page of [alice, bob]) {
    await eventually(async () => assert.equal(await page.locator("#status").getAttribute("data-state"), "connected"), {
      ...reconnected,
      message: "the page reconnected",
    });
  }
  await eventually(async () => assert.deepEqual(new Set(await members(alice)), new Set([alice.identity, bob.identity, carol.identity])), {
    ...reconnected,
    message: "the members are back on Alice's page",
  });
  await eventually(async () => assert.equal((await remoteCursor(alice, bob.identity)).position, 5), {
    ...reconnected,
    message: "Bob's cursor was recreated where it was",
  });
  await say(bob, "Still here after the restart");
  await eventually(async () => assert.equal((await logTexts(alice, "message")).at(-1), "Bob: Still here after the restart"));
  await bob.locator("#notes-text").focus(); // the caret where it was, at 5
  await bob.keyboard.press("End");
  const lineEnd = (await bob.locator("#notes-text").inputValue()).indexOf("\n");
  await eventually(async () => assert.equal((await remoteCursor(alice, bob.identity)).position, lineEnd), {
    message: "Bob's cursor moves again after the restart",
  });

  // The browser logged the refused connection attempts while the server was down; nothing else.
  for (const page of pages) {
    const errors = page.errors.filter((error) => !/WebSocket connection to .* failed/.test(error));
    assert.deepEqual(errors, [], "no errors in the page but the refused reconnections");
    page.errors.length = 0;
  }
});

test("screenshot for the docs (SNORKY_SCREENSHOTS=1)", { skip: !process.env.SNORKY_SCREENSHOTS }, async () => {
  // A fresh page of Alice's (no test history in its log), a conversation, an unread room, and
  // the others' carets in the notes.
  for (const page of [alice, aliceTab, carol]) await close(page);
  alice = await openChat("alice");
  carol = await openChat("carol");
  await eventually(async () => assert.deepEqual(await logTexts(alice, "presence"), ["Carol joined"]));
  const conversation = [
    [bob, "Pushed the fix for the reconnect bug"],
    [carol, "Nice! I'll review it after lunch"],
    [bob, "The release checklist is in the notes"],
  ];
  for (const [index, [page, text]] of conversation.entries()) {
    await say(page, text);
    await eventually(async () => assert.equal((await logTexts(alice, "message")).length, index + 1));
  }
  await bob.locator('#rooms button[data-room="snorky"]').click();
  await say(bob, "Draft of the 0.2 announcement is in the notes here");
  await bob.locator('#rooms button[data-room="general"]').click();
  await carol.locator("#notes-text").click();
  await carol.keyboard.press("Control+End");
  await carol.keyboard.type("- cake for the release");
  await bob.locator("#notes-text").click();
  await bob.keyboard.press("Control+Home");
  await bob.keyboard.press("ArrowDown");
  await bob.keyboard.press("End");
  await alice.locator("#message").fill("On my way!");
  await eventually(async () => {
    assert.equal(await alice.locator("#cursors .remote-cursor:not(.idle)").count(), 2);
    assert.equal(await unread(alice, "snorky"), 1);
    assert.match(await alice.locator("#notes-text").inputValue(), /cake for the release$/);
  });
  await alice.waitForTimeout(300); // the carets' short move transition
  await alice.screenshot({ path: screenshotPath("chat.png") });
  for (const page of pages) assert.deepEqual(page.errors, [], "no errors in the pages");
});
