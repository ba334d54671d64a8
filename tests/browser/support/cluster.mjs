/**
 * Several Snorky nodes for the browser tests: a `redis-server` they share, and a TCP load balancer
 * in front of them.
 *
 * - `startRedis()` → `{url, port, process, stop()}`: Debian's `redis-server` on a free loopback
 *   port, keeping nothing on disk (a temporary directory, removed by `stop()`).
 * - `new Balancer(name, targets)` then `await balancer.listen()`: a TCP load balancer on a free port
 *   of 127.0.0.1 that hands each new connection to the next target in turn (round robin, no sticky
 *   sessions) and, when a target refuses the connection (its node is down), to the one after it,
 *   as nginx does with `proxy_next_upstream error`. `connections` lists every connection it passed
 *   on, `{target, closed}` (`target`: the index in `targets`), in the order they came; `close()`
 *   stops it and cuts what it carries.
 */

import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { freePort, startProcess } from "./processes.mjs";

/** Starts `redis-server` on a free port; resolves once it accepts connections. */
export async function startRedis({ timeoutMs = 10_000 } = {}) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "snorky-redis-"));
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir];
  const process = startProcess("redis-server", args, { name: "redis-server" });
  await process.waitForOutput("Ready to accept connections", { timeoutMs });
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    process,
    async stop() {
      await process.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export class Balancer {
  /** `targets`: the ports of 127.0.0.1 it balances over. */
  constructor(name, targets) {
    this.name = name;
    this.targets = targets;
    this.next = 0;
    this.connections = [];
    this.sockets = new Set();
    this.server = createServer((client) => this.accept(client));
  }

  /** Listens on a free port (`port`); resolves with it. */
  listen() {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(0, "127.0.0.1", () => {
        this.port = this.server.address().port;
        resolve(this.port);
      });
    });
  }

  accept(client) {
    this.sockets.add(client);
    client.on("close", () => this.sockets.delete(client));
    client.on("error", () => client.destroy());
    client.pause();
    const first = this.next;
    this.next = (this.next + 1) % this.targets.length;
    this.tryTarget(client, first, this.targets.length);
  }

  /** Connects `client` to target `index`, or to the next ones (`left` tries) when refused. */
  tryTarget(client, index, left) {
    if (left === 0 || client.destroyed) {
      client.destroy();
      return;
    }
    const upstream = connect(this.targets[index], "127.0.0.1");
    upstream.once("error", () => {
      upstream.destroy();
      this.tryTarget(client, (index + 1) % this.targets.length, left - 1);
    });
    upstream.once("connect", () => {
      upstream.removeAllListeners("error");
      const connection = { target: index, closed: false };
      this.connections.push(connection);
      this.sockets.add(upstream);
      const close = () => {
        connection.closed = true;
        client.destroy();
        upstream.destroy();
      };
      for (const socket of [client, upstream]) {
        socket.on("close", close);
        socket.on("error", close);
      }
      upstream.on("close", () => this.sockets.delete(upstream));
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  }

  /** The connections open right now. */
  open() {
    return this.connections.filter((connection) => !connection.closed);
  }

  close() {
    for (const socket of this.sockets) socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
