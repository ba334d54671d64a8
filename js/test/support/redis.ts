/**
 * A real `redis-server` (Debian's package, which `scripts/setup` installs) for
 * the tests of several nodes: started on a free loopback port, keeping no data
 * on disk, killed when the test ends (or when this process exits).
 */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A free loopback port (free when asked; the server binds it right after). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** Whether something answers `PING` with `+PONG` on `port`. */
function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("error", () => done(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.once("data", (data) => done(data.toString().startsWith("+PONG")));
  });
}

export class Redis {
  private child: ChildProcess | null = null;

  private constructor(
    private readonly dir: string,
    /** The port it listens on (127.0.0.1). */
    readonly port: number,
  ) {}

  /** Starts one and waits (at most 10 s) until it answers. */
  static async start(): Promise<Redis> {
    const redis = new Redis(mkdtempSync(join(tmpdir(), "snorky-redis-")), await freePort());
    await redis.run();
    return redis;
  }

  private async run(): Promise<void> {
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir];
    const child = spawn("redis-server", args, { stdio: "ignore" });
    this.child = child;
    const killOnExit = () => child.kill("SIGKILL");
    process.once("exit", killOnExit);
    child.once("exit", () => process.removeListener("exit", killOnExit));
    const deadline = Date.now() + 10_000;
    while (!(await answers(this.port))) {
      if (Date.now() > deadline || child.exitCode !== null) {
        this.close();
        throw new Error(`redis-server did not answer on port ${this.port} within 10 s (scripts/setup installs it)`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** Kills it, as a crash would, and starts it again on the same port, empty. */
  async restart(): Promise<void> {
    await this.kill();
    await this.run();
  }

  private async kill(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGKILL");
    await gone;
  }

  /** `redis://127.0.0.1:<port>/0`. */
  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  /** Kills it and removes its directory. */
  close(): void {
    this.child?.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}
