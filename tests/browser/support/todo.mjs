/**
 * Reading and driving the todo demo's page (demos/todo) in the browser tests: its two lists
 * ("mine" and "team"), its status, the deltas it received, and its API with a page's session.
 */

import assert from "node:assert/strict";

import { eventually, LIVE_TIMEOUT } from "./browser.mjs";

/** The demo's users (`manage.py demo_users`) and their passwords. */
export const USERS = { alice: "wonderland", bob: "builder" };

export const rows = (page, list) => page.locator(`#${list} .items li`);
export const row = (page, list, title) =>
  rows(page, list).filter({ has: page.locator(".title", { hasText: new RegExp(`^${escape(title)}$`) }) });
const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** The titles in `list` ("mine" or "team"), in order. */
export const titles = (page, list) => page.locator(`#${list} .items li .title`).allTextContents();

/** Waits until `list` on `page` holds exactly `expected` (titles, in order). */
export function shows(page, list, expected, timeoutMs = LIVE_TIMEOUT) {
  return eventually(async () => assert.deepEqual(await titles(page, list), expected), {
    timeoutMs,
    message: `${page.user}'s ${list} list`,
  });
}

export async function add(page, list, title) {
  const input = page.locator(`#${list} .new-todo`);
  await input.fill(title);
  await input.press("Enter");
}

/** Whether the todo titled `title` is ticked on `page`, waited for until it is `done`. */
export function isDone(page, list, title, done, timeoutMs = LIVE_TIMEOUT) {
  return eventually(
    async () => {
      const item = row(page, list, title);
      assert.equal(await item.count(), 1, `${title} is listed once`);
      assert.equal(await item.locator(".toggle").isChecked(), done);
      assert.equal(await item.evaluate((li) => li.classList.contains("done")), done);
    },
    { timeoutMs, message: `${page.user}: ${title} done=${done}` },
  );
}

export const status = (page, state, timeoutMs = LIVE_TIMEOUT) =>
  page.locator(`#status[data-state="${state}"]`).waitFor({ timeout: timeoutMs });

/** Every Todo delta the page received, as parsed objects. */
export function deltas(page) {
  return page.frames
    .map((frame) => JSON.parse(frame))
    .filter((envelope) => envelope.service === "datasync" && envelope.message?.type === "delta")
    .map((envelope) => envelope.message.delta);
}

/** Calls the API with a page's session (its context's cookies), as a script would. */
export async function api(page, method, path, data) {
  const cookies = await page.context().cookies();
  const csrf = cookies.find((cookie) => cookie.name === "csrftoken")?.value ?? "";
  const response = await page.request.fetch(path, {
    method,
    data,
    headers: { "X-CSRFToken": csrf },
    timeout: 10_000,
  });
  assert.ok(response.ok(), `${method} ${path}: HTTP ${response.status()} ${await response.text()}`);
  return response.status() === 204 ? null : response.json();
}
