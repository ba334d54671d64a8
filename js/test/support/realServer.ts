/**
 * The real Snorky server, run by `test/integration/server.py` in a Python
 * child process and driven over its stdin/stdout: one JSON command per line,
 * one JSON reply per line. Every wait is bounded, and the process is killed
 * when the test file ends, whatever happened.
 *
 * The Python is `$SNORKY_PYTHON`, or `../.venv/bin/python` relative to js/
 * (the virtualenv `scripts/setup` makes, with the extension built).
 */

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** js/, from build/test/support/ (compiled) or test/support/ (sources). */
const JS_ROOT = resolve(fileURLToPath(new URL(".", import.meta.url)), import.meta.url.includes("/build/") ? "../../.." : "../..");
const DRIVER = resolve(JS_ROOT, "test", "integration", "server.py");

/** What the driver prints when it is ready, and answers to `start`. */
export interface ServerInfo {
  ws_url: string;
  backend_url: string;
  api_key: string;
  /** The secret signing connection tokens. */
  token_secret: string;
  frontend_port: number;
  backend_port: number;
  /** Frontend service names. */
  services: string[];
  backend_services: string[];
}

/** A command the driver refused: `message` is its error text, `kind` the Python exception class. */
export class DriverError extends Error {
  constructor(
    message: string,
    readonly kind: string,
  ) {
    super(message);
    this.name = "DriverError";
  }
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** The Python the tests run: `$SNORKY_PYTHON` or the repository's virtualenv. */
export function pythonPath(): string {
  const configured = process.env["SNORKY_PYTHON"] ?? "../.venv/bin/python";
  // A bare name ("python3") is looked up on PATH; a path is relative to js/.
  return configured.includes("/") && !isAbsolute(configured) ? resolve(JS_ROOT, configured) : configured;
}

export class RealServer {
  /** The latest ready/start answer. */
  info: ServerInfo;
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stderrText = "";
  private exited: string | null = null;

  private constructor(child: ChildProcessWithoutNullStreams, info: ServerInfo) {
    this.child = child;
    this.info = info;
  }

  /** Starts the driver and waits (bounded) for its ready line. */
  static start(options: { args?: string[]; timeout?: number } = {}): Promise<RealServer> {
    const timeout = options.timeout ?? 20_000;
    const python = pythonPath();
    if (python.includes("/") && !existsSync(python)) {
      return Promise.reject(
        new Error(
          `No Python at ${python}: run scripts/setup (or make install) in the repository, ` +
            "or set SNORKY_PYTHON to a Python with snorky installed and its extension built",
        ),
      );
    }
    const child = spawn(python, ["-u", DRIVER, ...(options.args ?? [])], {
      cwd: JS_ROOT,
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    // Whatever happens to this test process, the server does not outlive it.
    const killOnExit = () => child.kill("SIGKILL");
    process.once("exit", killOnExit);
    child.once("exit", () => process.removeListener("exit", killOnExit));

    return new Promise<RealServer>((resolvePromise, rejectPromise) => {
      let server: RealServer | null = null;
      let stderr = "";
      const fail = (why: string) => {
        clearTimeout(timer);
        child.kill("SIGKILL");
        rejectPromise(new Error(`The Snorky test server did not start (${python} ${DRIVER}): ${why}\n${stderr}`));
      };
      const timer = setTimeout(() => fail(`no ready line within ${timeout} ms`), timeout);
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk: string) => {
        if (server) server.stderrText += chunk;
        else stderr += chunk;
        if (process.env["SNORKY_TEST_DEBUG"]) process.stderr.write(chunk);
      });
      child.once("error", (error) => fail(String(error)));
      // Writing to a process that died fails with EPIPE; its "close" already reports why.
      child.stdin.on("error", () => {});
      // "close", not "exit": by then everything the process wrote has been read.
      child.once("close", (code, signal) => {
        const why = `exited with ${signal ?? `code ${code}`}`;
        if (!server) fail(why);
        else server.handleExit(why);
      });
      const lines = createInterface({ input: child.stdout });
      lines.on("line", (line) => {
        let message: Record<string, unknown>;
        try {
          message = JSON.parse(line) as Record<string, unknown>;
        } catch {
          // Not a reply (something printed by the server's code): keep it with the log.
          if (server) server.stderrText += `stdout: ${line}\n`;
          else stderr += `stdout: ${line}\n`;
          return;
        }
        if (!server) {
          if (message["ready"] !== true) return fail(`unexpected first line: ${line}`);
          clearTimeout(timer);
          server = new RealServer(child, message as unknown as ServerInfo);
          server.stderrText = stderr;
          resolvePromise(server);
          return;
        }
        server.handleReply(message);
      });
    });
  }

  /** The WebSocket URL clients connect to (the same across `stop()`/`start()`). */
  get wsUrl(): string {
    return this.info.ws_url;
  }

  /** What the server process wrote on stderr so far (its log, tracebacks). */
  get log(): string {
    return this.stderrText;
  }

  /** Sends a command and resolves with its result; rejects with a {@link DriverError} or on timeout. */
  command<T = unknown>(cmd: string, args: Record<string, unknown> = {}, timeout = 15_000): Promise<T> {
    if (this.exited !== null) return Promise.reject(new Error(`The Snorky test server is gone (${this.exited})`));
    const id = this.nextId++;
    return new Promise<T>((resolvePromise, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`The Snorky test server did not answer "${cmd}" within ${timeout} ms\n${this.stderrText}`));
      }, timeout);
      this.pending.set(id, { resolve: resolvePromise as (value: unknown) => void, reject, timer });
      this.child.stdin.write(`${JSON.stringify({ ...args, cmd, id })}\n`);
    });
  }

  /** Publishes through `SnorkyBackend.publish` (the web application's way). */
  publish(channel: unknown, message: unknown): Promise<null> {
    return this.command("publish", { channel, message });
  }

  /** Publishes with `PubSubService.publish` in the server's process; resolves with the subscribers reached. */
  publishLocal(channel: unknown, message: unknown): Promise<number> {
    return this.command("publish_local", { channel, message });
  }

  /** DataSync `authorizeSubscription` on the backend; resolves with the token. */
  authorize(items: Array<{ dealer: string; query: unknown }>, service = "datasync_backend"): Promise<string> {
    return this.command("authorize", { items, service });
  }

  /** DataSync `publishDeltas` on the backend. */
  publishDeltas(deltas: unknown[], service = "datasync_backend"): Promise<null> {
    return this.command("publish_deltas", { deltas, service });
  }

  /** A connection token for `identity`, signed with the server's secret. */
  token(identity: string, options: { ttl?: number; info?: Record<string, unknown> } = {}): Promise<string> {
    return this.command("token", { identity, ...options });
  }

  /** Graceful shutdown: every client gets close code 1001. */
  async stop(): Promise<void> {
    const { stopped } = await this.command<{ stopped: boolean }>("stop", {}, 20_000);
    if (!stopped) throw new Error(`The Snorky test server did not stop in time\n${this.stderrText}`);
  }

  /**
   * Starts again on the same ports. With the same service objects by default,
   * so DataSync subscriptions survive and resume; `fresh` gives new ones, as a
   * restarted server process would have.
   */
  async start(options: { fresh?: boolean } = {}): Promise<ServerInfo> {
    this.info = await this.command<ServerInfo>("start", { fresh: options.fresh ?? false });
    return this.info;
  }

  /** SIGKILL: the server process dies at once, with no goodbye to anyone (its clients see no close frame). */
  kill(): void {
    this.child.kill("SIGKILL");
  }

  /** Asks the driver to exit (bounded), then kills it anyway. Safe to call twice. */
  async close(): Promise<void> {
    if (this.exited === null) {
      const gone = new Promise<void>((resolvePromise) => this.child.once("exit", () => resolvePromise()));
      try {
        await this.command("exit", {}, 5_000);
        await Promise.race([gone, new Promise((r) => setTimeout(r, 2_000))]);
      } catch {
        // Killed below.
      }
    }
    this.child.kill("SIGKILL");
  }

  private handleReply(message: Record<string, unknown>): void {
    const id = message["id"];
    const call = typeof id === "number" ? this.pending.get(id) : undefined;
    if (!call) return;
    this.pending.delete(id as number);
    clearTimeout(call.timer);
    if (message["ok"] === true) call.resolve(message["result"] ?? null);
    else call.reject(new DriverError(String(message["error"]), String(message["kind"])));
  }

  private handleExit(why: string): void {
    this.exited = why;
    for (const call of this.pending.values()) {
      clearTimeout(call.timer);
      call.reject(new Error(`The Snorky test server ${why}\n${this.stderrText}`));
    }
    this.pending.clear();
  }
}
