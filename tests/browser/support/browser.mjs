/**
 * Chromium for the browser tests: Debian's `/usr/bin/chromium` driven by playwright-core, which
 * downloads no browser of its own. Also: a login helper for Django's login form, a recorder of the
 * WebSocket frames a page receives, bounded polling, and screenshots for the docs.
 */

import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

/** The repository's root. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The browser: `$CHROMIUM` or Debian's `chromium` package. */
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** How long a page change made elsewhere may take to show (ms): "within a second", plus slack. */
export const LIVE_TIMEOUT = Number(process.env.SNORKY_LIVE_TIMEOUT || 2_000);

/**
 * Launches Chromium headless. `chromium.launch` gives every browser a fresh temporary profile
 * (user-data dir), deleted when it closes.
 */
export function launchBrowser({ args = [], timeoutMs = 30_000 } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", ...args],
    timeout: timeoutMs,
  });
}

/**
 * A page in a new browser context (its own cookies: one context per signed-in user or tab that
 * must not share a session). `options` go to `browser.newContext` (`baseURL`, `viewport`...).
 *
 * The page gets `page.errors`, the uncaught exceptions and console errors it reported, and
 * `page.frames`, the text of every WebSocket frame it received (see {@link recordWebSocketFrames}).
 * Actions and waits default to a 10 s timeout.
 */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 }, ...options });
  context.setDefaultTimeout(10_000);
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (error) => page.errors.push(`pageerror: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") page.errors.push(`console.error: ${message.text()}`);
  });
  page.frames = recordWebSocketFrames(page);
  return page;
}

/** Records the text of every WebSocket frame `page` receives from now on; returns the array. */
export function recordWebSocketFrames(page) {
  const frames = [];
  page.on("websocket", (socket) => {
    socket.on("framereceived", ({ payload }) => frames.push(String(payload)));
  });
  return frames;
}

/**
 * Signs in through a Django login form (`django.contrib.auth.views.LoginView`'s fields): opens
 * `loginUrl`, fills `username` and `password`, submits, and waits until the page has left the
 * login URL. Fails, with the page's error text, when the form comes back.
 */
export async function login(page, loginUrl, username, password, { timeoutMs = 10_000 } = {}) {
  await page.goto(loginUrl, { timeout: timeoutMs });
  await page.locator('input[name="username"]').fill(username, { timeout: timeoutMs });
  await page.locator('input[name="password"]').fill(password, { timeout: timeoutMs });
  const loginPath = new URL(page.url()).pathname;
  await Promise.all([
    page.waitForURL((url) => url.pathname !== loginPath, { timeout: timeoutMs }).catch(async () => {
      const text = await page.locator("body").innerText().catch(() => "");
      throw new Error(`login as ${username} failed: still on ${page.url()}\n${text.slice(0, 500)}`);
    }),
    page.locator('form [type="submit"]').first().click({ timeout: timeoutMs }),
  ]);
}

/**
 * Calls `check` (which may be async and should throw, an assertion say) until it passes, for at
 * most `timeoutMs`; then throws its last error. Resolves with what `check` returned.
 */
export async function eventually(check, { timeoutMs = LIVE_TIMEOUT, intervalMs = 25, message } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() >= deadline) {
        if (message) error.message = `${message} (after ${timeoutMs} ms): ${error.message}`;
        throw error;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * Where to save a screenshot for the docs: `docs/<name>` when SNORKY_SCREENSHOTS is set
 * (`npm run screenshots`), else null (the tests take none).
 */
export function screenshotPath(name) {
  if (!process.env.SNORKY_SCREENSHOTS) return null;
  const path = resolve(REPO_ROOT, "docs", name);
  mkdirSync(dirname(path), { recursive: true });
  return path;
}
