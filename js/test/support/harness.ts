/** A client wired to a fresh fake server, both torn down when the test ends. */

import type { TestContext } from "node:test";
import { WebSocket } from "ws";
import { Snorky } from "../../src/client.js";
import type { SnorkyOptions } from "../../src/types.js";
import { FakeServer } from "./fakeServer.js";

export const ALL_SERVICES = {
  pubsub: Snorky.PubSub,
  chat: Snorky.Chat,
  cursors: Snorky.Cursors,
  messaging: Snorky.Messaging,
  datasync: Snorky.DataSync,
};

/** Fast reconnection, so tests take milliseconds. */
export const FAST: SnorkyOptions = { minReconnectDelay: 5, maxReconnectDelay: 20, queueTimeout: 1500 };

/**
 * Makes every backoff delay its ceiling (Math.random just under 1), so a test
 * can act while the client waits to reconnect; full jitter could otherwise
 * draw a delay of 0.
 */
export function maxJitter(t: TestContext): void {
  t.mock.method(Math, "random", () => 0.999);
}

export async function harness(t: TestContext, options: SnorkyOptions = {}) {
  const server = await FakeServer.start();
  const client = new Snorky(WebSocket, server.url, ALL_SERVICES, { ...FAST, ...options });
  t.after(async () => {
    client.close();
    await server.stop();
  });
  return { server, client, s: client.services };
}

/** Like {@link harness}, and waits for the first connection to be open on both ends. */
export async function connected(t: TestContext, options: SnorkyOptions = {}) {
  const h = await harness(t, options);
  await h.server.waitForConnection(1);
  const { waitUntil } = await import("./wait.js");
  await waitUntil(() => h.client.isConnected, 2000, "client connected");
  return h;
}
