/**
 * The todo demo deployed the way deploy/ describes it, on loopback and free ports:
 *
 * - nginx (Debian's `nginx` package) with deploy/nginx/snorky.conf as its site, run as this user's
 *   process with its own prefix and configuration in a temporary directory (workers drop to
 *   `nobody` when the tests run as root), terminating TLS with a certificate made by openssl;
 * - gunicorn serving the demo's WSGI application (DEBUG off, tests/browser/support/deploy_settings.py);
 * - `manage.py snorky`, started with the command line of deploy/systemd/snorky.service;
 * - static files collected by `manage.py collectstatic` and served by nginx.
 *
 * The site file is used as shipped, with only its addresses and paths changed (each replacement
 * must match exactly once, so the file cannot drift away from what the test runs).
 */

import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { REPO_ROOT } from "./browser.mjs";
import { PYTHON } from "./django.mjs";
import { freePorts, runProcess, startProcess, waitForUrl } from "./processes.mjs";

/** The files the docs show and the test uses. */
export const NGINX_SITE = resolve(REPO_ROOT, "deploy/nginx/snorky.conf");
export const SYSTEMD_UNIT = resolve(REPO_ROOT, "deploy/systemd/snorky.service");

/** nginx: `$NGINX` or Debian's. */
export const NGINX = process.env.NGINX || "/usr/sbin/nginx";

const DEMO = resolve(REPO_ROOT, "demos/todo");
const SUPPORT = resolve(REPO_ROOT, "tests/browser/support");
const HOST = "127.0.0.1";

/**
 * `text` with each `[from, to]` replaced; throws unless every `from` occurs exactly once.
 */
export function replaceEach(text, replacements, what) {
  let result = text;
  for (const [from, to] of replacements) {
    const count = result.split(from).length - 1;
    if (count !== 1) throw new Error(`${what}: expected "${from}" once, found it ${count} times`);
    result = result.replace(from, () => to);
  }
  return result;
}

/** The arguments after the interpreter in the unit's ExecStart (`manage.py snorky ...`). */
export function unitCommand(unitText) {
  const match = unitText.match(/^ExecStart=(.*)$/m);
  if (!match) throw new Error(`${SYSTEMD_UNIT} has no ExecStart`);
  return match[1].trim().split(/\s+/).slice(1);
}

/** nginx's main configuration: a prefix of its own, logs and temporary files in `dir`, the site included. */
function nginxConf(dir, site) {
  const runningAsRoot = process.getuid?.() === 0;
  const group = readFileSync("/etc/group", "utf8").includes("\nnogroup:") ? "nogroup" : "nobody";
  const temp = (name) => `${name}_temp_path ${join(dir, "temp", name)};`;
  return [
    "# Written by tests/browser/support/deploy.mjs.",
    runningAsRoot ? `user nobody ${group};` : "",
    "worker_processes 1;",
    `pid ${join(dir, "nginx.pid")};`,
    "error_log stderr notice;",
    "events { worker_connections 256; }",
    "http {",
    "    include /etc/nginx/mime.types;",
    "    default_type application/octet-stream;",
    `    access_log ${join(dir, "access.log")};`,
    ...["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((name) => `    ${temp(name)}`),
    `    include ${site};`,
    "}",
    "",
  ].join("\n");
}

/** Starts everything; resolves with the running {@link Deployment}. */
export async function startDeployment({ timeoutMs = 60_000 } = {}) {
  const deployment = new Deployment(timeoutMs);
  await deployment.start();
  return deployment;
}

/**
 * A running deployment.
 *
 * - `origin` (`https://127.0.0.1:<port>`), `httpUrl` (the plain-HTTP listener), `ports`, `env`, `tmp`;
 * - `certificate`: the PEM the browser and `get()` trust;
 * - `nginx`, `gunicorn`, `snorky`: ManagedProcesses (processes.mjs);
 * - `manage(...args)`: another manage.py command with the deployment's settings;
 * - `get(path, options)`: an HTTPS request through nginx, trusting only the test's certificate;
 * - `startSnorky()`, `stopSnorky()`: the Snorky server alone (with `env` as it is then);
 * - `stop()`: everything, then the temporary directory.
 */
export class Deployment {
  constructor(timeoutMs) {
    this.timeoutMs = timeoutMs;
    this.tmp = mkdtempSync(join(tmpdir(), "snorky-deploy-"));
    // nginx's workers (nobody, when the tests run as root) read the static files from here.
    chmodSync(this.tmp, 0o755);
    this.nginx = null;
    this.gunicorn = null;
    this.snorky = null;
  }

  async start() {
    const [https, http, gunicorn, ws, backend] = await freePorts(5);
    this.ports = { https, http, gunicorn, ws, backend };
    this.origin = `https://${HOST}:${https}`;
    this.httpUrl = `http://${HOST}:${http}`;
    this.env = {
      DJANGO_SETTINGS_MODULE: "deploy_settings",
      PYTHONPATH: SUPPORT,
      DEPLOY_HOST: HOST,
      DEPLOY_STATIC_ROOT: join(this.tmp, "static"),
      DEMO_DATABASE: join(this.tmp, "db.sqlite3"),
      SNORKY_API_KEY: randomBytes(18).toString("base64url"),
      SNORKY_FRONTEND_ADDRESS: `${HOST}:${ws}`,
      SNORKY_BACKEND_ADDRESS: `${HOST}:${backend}`,
      SNORKY_ALLOWED_ORIGINS: this.origin,
    };
    await this.makeCertificate();
    await this.manage("collectstatic", "--noinput", "-v", "0");
    await this.manage("migrate", "--noinput", "-v", "0");
    await this.startSnorky();
    await this.manage("demo_users", "--no-samples");
    await this.startGunicorn();
    await this.startNginx();
  }

  /** A self-signed certificate for 127.0.0.1, made with openssl, valid for two days. */
  async makeCertificate() {
    const dir = join(this.tmp, "tls");
    mkdirSync(dir);
    this.certificatePath = join(dir, "site.pem");
    this.keyPath = join(dir, "site.key");
    await runProcess("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-days", "2", "-subj", `/CN=${HOST}`, "-addext", `subjectAltName=IP:${HOST},DNS:localhost`,
      "-keyout", this.keyPath, "-out", this.certificatePath,
    ], { name: "openssl", timeoutMs: this.timeoutMs });
    this.certificate = readFileSync(this.certificatePath, "utf8");
  }

  manage(...args) {
    return runProcess(PYTHON, ["manage.py", ...args], {
      name: `manage.py ${args[0]}`,
      cwd: DEMO,
      env: this.env,
      timeoutMs: this.timeoutMs,
    });
  }

  /** `manage.py snorky` with the systemd unit's arguments, on this deployment's port. */
  async startSnorky() {
    const args = unitCommand(readFileSync(SYSTEMD_UNIT, "utf8")).map((arg) =>
      arg === "127.0.0.1:5001" ? `${HOST}:${this.ports.ws}` : arg,
    );
    this.snorky = startProcess(PYTHON, args, { name: "manage.py snorky", cwd: DEMO, env: this.env });
    await waitForUrl(`http://${HOST}:${this.ports.backend}/health`, {
      process: this.snorky,
      timeoutMs: this.timeoutMs,
      accept: (status) => status === 200,
    });
    await waitForUrl(`http://${HOST}:${this.ports.ws}/health`, { process: this.snorky, timeoutMs: this.timeoutMs });
  }

  async stopSnorky() {
    const result = await this.snorky?.stop();
    if (result && result.code !== 0) throw this.snorky.error(`stopped with ${result.code ?? result.signal}, not 0`);
  }

  async startGunicorn() {
    this.gunicorn = startProcess(
      PYTHON,
      [
        "-m", "gunicorn", "todo_site.wsgi:application",
        "--bind", `${HOST}:${this.ports.gunicorn}`, "--workers", "3", "--pythonpath", `${DEMO},${SUPPORT}`,
      ],
      { name: "gunicorn", cwd: DEMO, env: this.env },
    );
    await waitForUrl(`http://${HOST}:${this.ports.gunicorn}/accounts/login/`, {
      process: this.gunicorn,
      timeoutMs: this.timeoutMs,
      accept: (status) => status === 200,
    });
  }

  /** The shipped site file with this deployment's addresses, ports and paths. */
  site() {
    return replaceEach(
      readFileSync(NGINX_SITE, "utf8"),
      [
        ["server 127.0.0.1:8000;", `server ${HOST}:${this.ports.gunicorn};`],
        ["server 127.0.0.1:5001;", `server ${HOST}:${this.ports.ws};`],
        ["listen 80;", `listen ${HOST}:${this.ports.http};`],
        ["listen 443 ssl;", `listen ${HOST}:${this.ports.https} ssl;`],
        ["server_name example.com;\n    return", `server_name ${HOST};\n    return`],
        ["server_name example.com;\n\n    ssl", `server_name ${HOST};\n\n    ssl`],
        ["/etc/ssl/certs/example.com.pem;", `${this.certificatePath};`],
        ["/etc/ssl/private/example.com.key;", `${this.keyPath};`],
        ["alias /srv/example/static/;", `alias ${this.env.DEPLOY_STATIC_ROOT}/;`],
        ["/var/log/nginx/snorky-ws.log", this.wsLog],
        ["/var/log/nginx/snorky-sockjs.log", this.sockjsLog],
      ],
      NGINX_SITE,
    );
  }

  async startNginx() {
    const dir = join(this.tmp, "nginx");
    mkdirSync(join(dir, "temp"), { recursive: true });
    this.wsLog = join(dir, "ws.log");
    this.sockjsLog = join(dir, "sockjs.log");
    if (!existsSync(NGINX)) throw new Error(`${NGINX} is missing: run scripts/setup (Debian package nginx), or set NGINX`);
    const site = join(dir, "snorky.conf");
    writeFileSync(site, this.site());
    const conf = join(dir, "nginx.conf");
    writeFileSync(conf, nginxConf(dir, site));
    const args = ["-p", dir, "-e", "stderr", "-c", conf];
    await runProcess(NGINX, [...args, "-t", "-q"], { name: "nginx -t", timeoutMs: this.timeoutMs });
    this.nginx = startProcess(NGINX, [...args, "-g", "daemon off;"], { name: "nginx" });
    await waitForUrl(`${this.httpUrl}/`, { process: this.nginx, timeoutMs: this.timeoutMs, accept: (s) => s === 301 });
  }

  /**
   * An HTTPS request to `path` through nginx, trusting the test's certificate (and nothing else).
   * Resolves with `{status, headers, body}` (body as a string).
   */
  get(path, { method = "GET", headers = {}, timeoutMs = 10_000 } = {}) {
    return new Promise((resolvePromise, reject) => {
      const req = request(
        new URL(path, this.origin),
        { method, headers, ca: this.certificate, timeout: timeoutMs },
        (response) => {
          const chunks = [];
          response.on("data", (chunk) => chunks.push(chunk));
          response.on("end", () =>
            resolvePromise({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks).toString() }),
          );
          response.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
      req.on("error", reject);
      req.end();
    });
  }

  async stop() {
    await Promise.all([this.nginx?.stop(), this.gunicorn?.stop(), this.snorky?.stop()]);
    rmSync(this.tmp, { recursive: true, force: true });
  }
}
