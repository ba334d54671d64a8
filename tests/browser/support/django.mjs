/**
 * A Django demo's two servers, `manage.py runserver` and `manage.py snorky`, on free ports with a
 * fresh SQLite database, for one test file.
 *
 * The demo's settings read where things are from the environment (see demos/todo/todo_site/settings.py):
 *
 * | variable | value given |
 * |---|---|
 * | `SNORKY_FRONTEND_ADDRESS` | `127.0.0.1:<free port>` (WebSocket) |
 * | `SNORKY_BACKEND_ADDRESS` | `127.0.0.1:<free port>` |
 * | `SNORKY_API_KEY` | a random key |
 * | `SNORKY_ALLOWED_ORIGINS` | `http://127.0.0.1:<http port>` |
 * | `DEMO_DATABASE` | a SQLite file in a temporary directory |
 */

import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { REPO_ROOT } from "./browser.mjs";
import { freePorts, runProcess, startProcess, waitForUrl } from "./processes.mjs";

/** The Python with Snorky installed: `$SNORKY_PYTHON` or the repository's `.venv`. */
export const PYTHON = process.env.SNORKY_PYTHON || resolve(REPO_ROOT, ".venv/bin/python");

/**
 * Starts the demo in `demoDir` (a directory with `manage.py`, relative to the repository root):
 * `migrate`, then `manage.py snorky`, then each `setup` command (arrays of manage.py arguments, run
 * with Snorky up so that what they save is published), then `runserver --noreload`; resolves once
 * both servers answer. Options: `setup`, `env` (more environment), `timeoutMs` (per step).
 *
 * Resolves with a {@link DjangoDemo}. Stop it in `after()` (or call `stopAll()` from processes.mjs).
 */
export async function startDjangoDemo(demoDir, { setup = [], env = {}, timeoutMs = 60_000 } = {}) {
  if (!existsSync(PYTHON)) throw new Error(`${PYTHON} is missing: run scripts/setup (or set SNORKY_PYTHON)`);
  const demo = new DjangoDemo(resolve(REPO_ROOT, demoDir), env, timeoutMs);
  await demo.manage("migrate", "--noinput", "-v", "0");
  await demo.startSnorky();
  for (const command of setup) await demo.manage(...command);
  await demo.startDjango();
  return demo;
}

/**
 * A running Django demo.
 *
 * - `baseUrl` (`http://127.0.0.1:<port>`), `wsUrl`, `ports` (`{http, ws, backend}`), `env`, `dir`;
 * - `django`, `snorky`: the ManagedProcess of each server (see processes.mjs);
 * - `manage(...args)`: runs another manage.py command with the same settings; resolves with its output;
 * - `stopSnorky()`, `startSnorky()`, `restartSnorky()`: the Snorky server alone, on the same ports;
 * - `startNode(name)`: one more `manage.py snorky` on ports of its own (several nodes), in `nodes`;
 * - `stop()`: every server, then the temporary database.
 */
export class DjangoDemo {
  constructor(dir, env, timeoutMs) {
    this.dir = dir;
    this.timeoutMs = timeoutMs;
    this.tmp = mkdtempSync(join(tmpdir(), "snorky-demo-"));
    this.django = null;
    this.snorky = null;
    this.nodes = [];
    this.ready = freePorts(3).then(([http, ws, backend]) => {
      this.ports = { http, ws, backend };
      this.baseUrl = `http://127.0.0.1:${http}`;
      this.wsUrl = `ws://127.0.0.1:${ws}/ws`;
      this.env = {
        DEMO_DATABASE: join(this.tmp, "db.sqlite3"),
        SNORKY_API_KEY: randomBytes(18).toString("base64url"),
        SNORKY_FRONTEND_ADDRESS: `127.0.0.1:${ws}`,
        SNORKY_BACKEND_ADDRESS: `127.0.0.1:${backend}`,
        SNORKY_ALLOWED_ORIGINS: `http://127.0.0.1:${http}`,
        ...env,
      };
    });
  }

  async manage(...args) {
    await this.ready;
    return runProcess(PYTHON, ["manage.py", ...args], {
      name: `manage.py ${args[0]}`,
      cwd: this.dir,
      env: this.env,
      timeoutMs: this.timeoutMs,
    });
  }

  async startSnorky() {
    await this.ready;
    this.snorky = startProcess(PYTHON, ["manage.py", "snorky"], { name: "manage.py snorky", cwd: this.dir, env: this.env });
    await waitForUrl(`http://127.0.0.1:${this.ports.backend}/health`, {
      process: this.snorky,
      timeoutMs: this.timeoutMs,
      accept: (status) => status === 200,
    });
    await waitForUrl(`http://127.0.0.1:${this.ports.ws}/health`, { process: this.snorky, timeoutMs: this.timeoutMs });
  }

  /**
   * One more `manage.py snorky` of the project, on free ports of its own, named `name`: a node of
   * several when `env` has `SNORKY_BROKER` (the Redis they share). Resolves once it answers with
   * `{name, process, ports: {ws, backend}}`; `stop()` stops it with the others.
   */
  async startNode(name) {
    await this.ready;
    const [ws, backend] = await freePorts(2);
    const args = ["manage.py", "snorky", `--frontend-address=127.0.0.1:${ws}`, `--backend-address=127.0.0.1:${backend}`];
    const managed = startProcess(PYTHON, [...args, "--node-name", name], { name: `node ${name}`, cwd: this.dir, env: this.env });
    const accept = (status) => status === 200;
    await waitForUrl(`http://127.0.0.1:${backend}/health`, { process: managed, timeoutMs: this.timeoutMs, accept });
    await waitForUrl(`http://127.0.0.1:${ws}/health`, { process: managed, timeoutMs: this.timeoutMs, accept });
    const node = { name, process: managed, ports: { ws, backend } };
    this.nodes.push(node);
    return node;
  }

  async stopSnorky() {
    const result = await this.snorky?.stop();
    if (result && result.code !== 0) throw this.snorky.error(`stopped with ${result.code ?? result.signal}, not 0`);
  }

  async restartSnorky() {
    await this.stopSnorky();
    await this.startSnorky();
  }

  async startDjango() {
    await this.ready;
    this.django = startProcess(PYTHON, ["manage.py", "runserver", `127.0.0.1:${this.ports.http}`, "--noreload"], {
      name: "manage.py runserver",
      cwd: this.dir,
      env: this.env,
    });
    await waitForUrl(`${this.baseUrl}/`, { process: this.django, timeoutMs: this.timeoutMs });
  }

  async stop() {
    await Promise.all([this.django?.stop(), this.snorky?.stop(), ...this.nodes.map((node) => node.process.stop())]);
    rmSync(this.tmp, { recursive: true, force: true });
  }
}
