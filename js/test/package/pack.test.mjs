/**
 * The npm package, used the way an application would: `npm pack`, the tarball installed into a
 * scratch app in a temporary folder, imported from Node, bundled with esbuild, and a consumer
 * file type-checked with `tsc --noEmit`; a consumer with a type error fails the check.
 *
 * The scratch app also installs React (the hook's peer dependency) and its types at the versions
 * of js/package.json, from npm's cache when `npm ci` put them there.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";

import * as esbuild from "esbuild";

const JS_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const manifest = JSON.parse(readFileSync(join(JS_ROOT, "package.json"), "utf8"));
const TSC = join(JS_ROOT, "node_modules", "typescript", "bin", "tsc");
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";

/** Runs a command (bounded); resolves with its stdout, rejects with its output. */
async function run(command, args, { cwd, timeout = 120_000 } = {}) {
  try {
    const { stdout } = await promisify(execFile)(command, args, { cwd, timeout, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (error) {
    throw new Error(`${command} ${args.join(" ")} failed: ${error.message}\n${error.stdout ?? ""}\n${error.stderr ?? ""}`);
  }
}

/** Runs an ES module's text with Node in `cwd`; resolves with its stdout. */
function node(cwd, source) {
  return run(process.execPath, ["--input-type=module", "-e", source], { cwd });
}

let tmp;
let app;
let packed;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "snorky-npm-"));
  // `npm pack` runs the prepack script: the bundles are built from the sources now.
  const out = await run(NPM, ["pack", "--json", "--pack-destination", tmp], { cwd: JS_ROOT });
  // The JSON report follows what the prepack build printed.
  const [info] = JSON.parse(out.slice(out.search(/^\[$/m)));
  packed = { ...info, tarball: join(tmp, info.filename) };
  app = join(tmp, "app");
  await run("mkdir", ["-p", app]);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "scratch-app", private: true, type: "module" }));
  const dev = manifest.devDependencies;
  await run(
    NPM,
    [
      "install",
      "--prefer-offline",
      "--no-audit",
      "--no-fund",
      packed.tarball,
      `react@${dev.react}`,
      `@types/react@${dev["@types/react"]}`,
    ],
    { cwd: app, timeout: 300_000 },
  );
});

after(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe("the npm package", () => {
  it("packs the built bundles and their types, no sources or tests, and has no runtime dependencies", () => {
    assert.equal(packed.name, "snorky");
    assert.equal(packed.version, manifest.version);
    const files = packed.files.map((file) => file.path).sort();
    for (const expected of [
      "package.json",
      "README.md",
      "dist/snorky.mjs",
      "dist/react.mjs",
      "dist/snorky.min.js",
      "dist/types/index.d.ts",
      "dist/types/react.d.ts",
      "dist/types/collections.d.ts",
    ]) {
      assert.ok(files.includes(expected), `${expected} is not in the package: ${files.join(", ")}`);
    }
    assert.deepEqual(
      files.filter((file) => /^(src|test|build|node_modules)\//.test(file) || file.endsWith(".ts") && !file.endsWith(".d.ts")),
      [],
    );
    const installed = JSON.parse(readFileSync(join(app, "node_modules", "snorky", "package.json"), "utf8"));
    assert.equal(installed.dependencies, undefined);
    assert.deepEqual(Object.keys(installed.peerDependencies), ["react"]);
    assert.equal(installed.peerDependenciesMeta.react.optional, true);
  });

  it("imports from Node: the client, CollectionDeltaProcessor and ArrayCollection, and the hook's entry", async () => {
    const out = await node(
      app,
      `
      import Snorky, { ArrayCollection, CollectionDeltaProcessor, DataSync, PubSub, State } from "snorky";
      const tasks = new ArrayCollection([{ id: 1, title: "one" }]);
      const processor = new CollectionDeltaProcessor({ Task: tasks });
      processor.processDelta({ type: "insert", model: "Task", data: { id: 2, title: "two" } });
      processor.processDelta({ type: "update", model: "Task", oldData: { id: 1 }, newData: { id: 1, title: "uno" } });
      const { useSnorkyCollection } = await import("snorky/react");
      console.log(JSON.stringify({
        titles: tasks.array.map((task) => task.title),
        client: typeof Snorky, same: Snorky.DataSync === DataSync && Snorky.PubSub === PubSub,
        state: State.Connected, hook: typeof useSnorkyCollection,
      }));
      `,
    );
    assert.deepEqual(JSON.parse(out), {
      titles: ["uno", "two"],
      client: "function",
      same: true,
      state: "connected",
      hook: "function",
    });
  });

  it("keeps its files private: only the exports map's entries resolve", async () => {
    const out = await node(
      app,
      `
      const results = {};
      for (const path of ["snorky/dist/snorky.mjs", "snorky/src/index.ts"]) {
        try { await import(path); results[path] = "imported"; } catch (error) { results[path] = error.code; }
      }
      console.log(JSON.stringify(results));
      `,
    );
    assert.deepEqual(JSON.parse(out), {
      "snorky/dist/snorky.mjs": "ERR_PACKAGE_PATH_NOT_EXPORTED",
      "snorky/src/index.ts": "ERR_PACKAGE_PATH_NOT_EXPORTED",
    });
  });

  it("bundles with esbuild: the main entry without React, the hook with one copy of the client", async () => {
    writeFileSync(
      join(app, "main.js"),
      `import Snorky, { ArrayCollection, CollectionDeltaProcessor } from "snorky";
       const tasks = new ArrayCollection([]);
       new CollectionDeltaProcessor({ Task: tasks }).processDelta({ type: "insert", model: "Task", data: { id: 7 } });
       console.log(typeof Snorky, tasks.array.length);`,
    );
    writeFileSync(
      join(app, "hook.js"),
      `import Snorky from "snorky";
       import { useSnorkyCollection } from "snorky/react";
       console.log(typeof Snorky, typeof useSnorkyCollection);`,
    );
    const build = (entry) =>
      esbuild.build({
        absWorkingDir: app,
        entryPoints: [entry],
        bundle: true,
        format: "esm",
        platform: "browser",
        write: false,
        logLevel: "silent",
      });
    const main = (await build("main.js")).outputFiles[0].text;
    assert.doesNotMatch(main, /from\s*["']react|useEffect/);
    assert.equal(await node(app, main), "function 1\n");

    const hook = (await build("hook.js")).outputFiles[0].text;
    assert.match(hook, /useEffect/);
    assert.equal(hook.match(/var ArrayCollection = class/g)?.length, 1, "the client is bundled twice");
    assert.equal(await node(app, hook), "function function\n");
  });

  it("type-checks a consumer with tsc --noEmit, and fails one that misuses the types", async () => {
    writeFileSync(
      join(app, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          lib: ["ES2022", "DOM"],
          types: [],
          skipLibCheck: false,
        },
      }),
    );
    writeFileSync(
      join(app, "consumer.ts"),
      `import Snorky, { ArrayCollection, CollectionDeltaProcessor, type Delta } from "snorky";
       import { useSnorkyCollection, type SnorkyCollection } from "snorky/react";

       interface Task { id: number; title: string }
       const snorky = new Snorky(WebSocket, "wss://example.com/ws", { datasync: Snorky.DataSync });
       const tasks = new ArrayCollection<Task>([]);
       const processor = new CollectionDeltaProcessor({ Task: tasks });
       snorky.services.datasync.onDelta = (delta: Delta) => processor.processDelta(delta);
       export function useTasks(): string[] {
         const result: SnorkyCollection<Task> = useSnorkyCollection<Task>(snorky, "/api/tasks/", "Task");
         return result.status === "live" ? result.items.map((task) => task.title) : [];
       }
       `,
    );
    await run(process.execPath, [TSC, "-p", "tsconfig.json"], { cwd: app });

    writeFileSync(
      join(app, "consumer.ts"),
      `import { ArrayCollection } from "snorky";
       import { useSnorkyCollection } from "snorky/react";
       const tasks = new ArrayCollection<{ id: number }>([]);
       const title: string = tasks.array[0].id;
       useSnorkyCollection(null, 42, "Task");
       `,
    );
    await assert.rejects(run(process.execPath, [TSC, "-p", "tsconfig.json"], { cwd: app }), (error) => {
      assert.match(error.message, /consumer\.ts\(4,\d+\): error TS2322: Type 'number' is not assignable to type 'string'/);
      assert.match(error.message, /consumer\.ts\(5,\d+\): error TS2345/);
      return true;
    });
  });
});
