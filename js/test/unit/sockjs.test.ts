/**
 * The client with a SockJS class: the token rides in the URL's query (which
 * sockjs-client keeps on every request), and SockJS close codes that are
 * transient there (1002, 2000-2999) lead to a reconnection, where over
 * WebSocket 1002 is terminal. A stand-in socket class plays SockJS.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type WebSocketLike, Snorky, State } from "../../src/client.js";
import { FAST } from "../support/harness.js";
import { waitUntil } from "../support/wait.js";

class FakeSocket implements WebSocketLike {
  static opened: FakeSocket[] = [];
  onopen: ((event: any) => void) | null = null;
  onmessage: ((event: any) => void) | null = null;
  onclose: ((event: any) => void) | null = null;
  onerror: ((event: any) => void) | null = null;
  readonly sent: string[] = [];

  constructor(readonly url: string) {
    FakeSocket.opened.push(this);
    setTimeout(() => this.onopen?.({}), 0);
  }

  send(data: string): void {
    this.sent.push(data);
  }

  close(): void {
    setTimeout(() => this.onclose?.({ code: 1000, reason: "Normal closure" }), 0);
  }
}

async function clientOn(address: string) {
  FakeSocket.opened = [];
  const client = new Snorky(FakeSocket, address, {}, { ...FAST, token: "tok en" });
  await waitUntil(() => client.isConnected, 2000, "connected");
  return client;
}

describe("a SockJS socket class", () => {
  it("gets the token in the query of an http(s) or relative URL", async () => {
    const client = await clientOn("http://example.test:5001/sockjs");
    assert.equal(FakeSocket.opened[0]?.url, "http://example.test:5001/sockjs?token=tok%20en");
    client.close();
  });

  for (const [code, reason] of [
    [1002, "Cannot connect to server"],
    [1002, "Connection interrupted"],
    [2000, "All transports failed"],
    [2007, "Transport timed out"],
  ] as const) {
    it(`reconnects after SockJS's ${code} "${reason}"`, async () => {
      const client = await clientOn("/sockjs");
      FakeSocket.opened[0]?.onclose?.({ code, reason });
      await waitUntil(() => FakeSocket.opened.length === 2 && client.isConnected, 2000, "the reconnection");
      client.close();
    });
  }

  it("over WebSocket, 1002 still stops the client", async () => {
    const client = await clientOn("ws://example.test:5001/ws");
    FakeSocket.opened[0]?.onclose?.({ code: 1002, reason: "protocol error" });
    await waitUntil(() => client.state === State.Disconnected, 2000, "disconnected");
    assert.equal(FakeSocket.opened.length, 1);
    client.close();
  });
});
