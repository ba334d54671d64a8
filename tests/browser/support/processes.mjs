/**
 * Child processes for the browser tests: start them, wait for them, stop them.
 *
 * Every process is started in a process group of its own, remembered, and killed (the whole group)
 * when the test file's process exits, whatever happened; `stopAll()` stops them gracefully first,
 * and test files call it in `after()`. Every wait is bounded and its error carries the tail of the
 * process's output.
 */

import { spawn } from "node:child_process";
import { createServer } from "node:net";

/** How much of a process's output is kept (the tail), in characters. */
const OUTPUT_LIMIT = 200_000;

const running = new Set();

/** A free TCP port on 127.0.0.1 (the kernel's choice; free when this returns). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** `count` distinct free ports. */
export async function freePorts(count) {
  const ports = new Set();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/**
 * A child process started by {@link startProcess}.
 *
 * - `name`, `child`, `pid`, `running`, `exitCode`, `signalCode`;
 * - `output`: what it printed (stdout and stderr interleaved, the last 200 000 characters);
 * - `exited`: a promise of `{code, signal}`;
 * - `waitForOutput(pattern, {timeoutMs, from})`: the first match of a string or RegExp in the output
 *   (from offset `from`, default 0);
 * - `stop({signal, timeoutMs})`: the signal (SIGTERM by default) to its group, then SIGKILL to the
 *   group if it has not exited within `timeoutMs`; resolves with `{code, signal}`.
 */
export class ManagedProcess {
  constructor(name, child) {
    this.name = name;
    this.child = child;
    this.pid = child.pid;
    this.output = "";
    this.running = true;
    this.exitCode = null;
    this.signalCode = null;
    this.listeners = new Set();
    const append = (chunk) => {
      this.output = (this.output + chunk.toString()).slice(-OUTPUT_LIMIT);
      if (process.env.SNORKY_TEST_VERBOSE) process.stderr.write(`[${name}] ${chunk}`);
      for (const listener of this.listeners) listener();
    };
    child.stdout.on("data", append);
    child.stderr.on("data", append);
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.running = false;
        this.exitCode = code;
        this.signalCode = signal;
        running.delete(this);
        for (const listener of this.listeners) listener();
        resolve({ code, signal });
      });
    });
  }

  /** The last `lines` lines of output, for error messages. */
  tail(lines = 40) {
    return this.output.split("\n").slice(-lines).join("\n");
  }

  waitForOutput(pattern, { timeoutMs = 30_000, from = 0 } = {}) {
    const find = () => {
      const text = this.output.slice(from);
      if (typeof pattern === "string") return text.includes(pattern) ? [pattern] : null;
      return text.match(pattern);
    };
    return new Promise((resolve, reject) => {
      const done = (error, value) => {
        clearTimeout(timer);
        this.listeners.delete(check);
        if (error) reject(error);
        else resolve(value);
      };
      const check = () => {
        const match = find();
        if (match) done(null, match);
        else if (!this.running) done(this.error(`exited (${this.exitCode ?? this.signalCode}) before printing ${pattern}`));
      };
      const timer = setTimeout(() => done(this.error(`printed no ${pattern} within ${timeoutMs} ms`)), timeoutMs);
      this.listeners.add(check);
      check();
    });
  }

  async stop({ signal = "SIGTERM", timeoutMs = 10_000 } = {}) {
    if (!this.running) return { code: this.exitCode, signal: this.signalCode };
    signalGroup(this, signal);
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    if ((await Promise.race([this.exited, timeout])) === "timeout") signalGroup(this, "SIGKILL");
    clearTimeout(timer);
    return this.exited;
  }

  /** An Error naming the process, with the tail of its output. */
  error(message) {
    return new Error(`${this.name} ${message}\n--- last output of ${this.name} ---\n${this.tail()}`);
  }
}

function signalGroup(managed, signal) {
  try {
    process.kill(-managed.pid, signal);
  } catch {
    try {
      managed.child.kill(signal);
    } catch {}
  }
}

/**
 * Starts `command` with `args` (`{name, cwd, env}`: `env` is added to this process's environment).
 * Its output is collected, not shown (set SNORKY_TEST_VERBOSE=1 to see it live).
 */
export function startProcess(command, args = [], { name = command, cwd, env = {} } = {}) {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, PYTHONUNBUFFERED: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true, // a process group of its own, so that stopping it reaches its children too
  });
  const managed = new ManagedProcess(name, child);
  running.add(managed);
  child.on("error", (error) => {
    managed.output += `\nspawn failed: ${error.message}\n`;
  });
  return managed;
}

/**
 * Runs a command to completion (`{name, cwd, env, timeoutMs}`); resolves with its output, rejects
 * (with the output) when it fails or outlives `timeoutMs`.
 */
export async function runProcess(command, args = [], { timeoutMs = 60_000, ...options } = {}) {
  const managed = startProcess(command, args, options);
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  const result = await Promise.race([managed.exited, timeout]);
  clearTimeout(timer);
  if (result === "timeout") {
    await managed.stop({ signal: "SIGKILL" });
    throw managed.error(`did not finish within ${timeoutMs} ms`);
  }
  if (result.code !== 0) throw managed.error(`failed (${result.code ?? result.signal})`);
  return managed.output;
}

/**
 * Polls `url` until it answers with a status `accept` takes (by default any status: the server is
 * up), for at most `timeoutMs`. Fails at once if `process` (a ManagedProcess) exits meanwhile.
 */
export async function waitForUrl(url, { timeoutMs = 30_000, process: managed, accept = () => true } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  while (Date.now() < deadline) {
    if (managed && !managed.running) throw managed.error(`exited before ${url} answered`);
    try {
      const response = await fetch(url, { redirect: "manual", signal: AbortSignal.timeout(2_000) });
      await response.arrayBuffer();
      if (accept(response.status)) return response;
      last = `HTTP ${response.status}`;
    } catch (error) {
      last = error.cause?.code ?? error.message;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const message = `${url} did not answer within ${timeoutMs} ms (last: ${last})`;
  throw managed ? managed.error(message) : new Error(message);
}

/** Whether something accepts TCP connections on 127.0.0.1:`port` right now. */
export async function isListening(port) {
  try {
    await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2_000) });
    return true;
  } catch (error) {
    return error.cause?.code !== "ECONNREFUSED";
  }
}

/** Stops every process still running (SIGTERM, then SIGKILL after `timeoutMs`). For `after()`. */
export async function stopAll({ timeoutMs = 10_000 } = {}) {
  await Promise.all([...running].map((managed) => managed.stop({ timeoutMs })));
}

// Whatever happens to the test file (a failed assertion, an exception, Ctrl-C), no process it
// started outlives it.
process.on("exit", () => {
  for (const managed of running) signalGroup(managed, "SIGKILL");
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    for (const managed of running) signalGroup(managed, "SIGKILL");
    process.exit(130);
  });
}
