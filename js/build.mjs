// Builds the client and ships it into the Django app's static files.
//
//   node build.mjs              build dist/ and copy it to python/snorky_django/static/snorky/
//   node build.mjs --dist-only  build dist/ only (what `npm pack` packs)
//   node build.mjs --check      build into a temporary folder and fail if the shipped files differ
//
// Output (same bytes from the same sources and lockfile: no timestamps, no
// absolute paths; source maps name sources relative to dist/ wherever the
// build actually writes):
//   snorky.mjs, snorky.mjs.map        ES module (import Snorky from ".../snorky.mjs")
//   react.mjs, react.mjs.map          the React hook; imports "react" and ./snorky.mjs
//   snorky.min.js, snorky.min.js.map  minified browser bundle defining window.Snorky
//   types/**/*.d.ts                   type declarations (entries: types/index.d.ts, types/react.d.ts)

import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as esbuild from "esbuild";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");
const shipped = join(root, "..", "python", "snorky_django", "static", "snorky");

const common = {
  bundle: true,
  write: false,
  // Paths in source maps are relative to this folder, whatever the destination.
  outdir: dist,
  sourcemap: "linked",
  sourcesContent: true,
  target: "es2020",
  charset: "utf8",
  legalComments: "none",
  logLevel: "warning",
};

/** Resolves the React entry's import of the main entry (`./index.js`) to the built `./snorky.mjs`, kept external. */
const mainEntryExternal = {
  name: "main-entry-external",
  setup(build) {
    build.onResolve({ filter: /^\.\/index\.js$/ }, (args) =>
      args.importer === join(root, "src", "react.ts") ? { path: "./snorky.mjs", external: true } : undefined,
    );
  },
};

/** Builds the bundles in memory: returns {fileName: Uint8Array}. */
export async function buildBundles() {
  const results = await Promise.all([
    esbuild.build({
      ...common,
      entryPoints: { snorky: join(root, "src", "index.ts") },
      outExtension: { ".js": ".mjs" },
      format: "esm",
      platform: "neutral",
    }),
    esbuild.build({
      ...common,
      entryPoints: { react: join(root, "src", "react.ts") },
      outExtension: { ".js": ".mjs" },
      format: "esm",
      platform: "neutral",
      // React is the application's (a peer dependency); the client is the main entry's, so an
      // application bundling both gets one copy of it.
      external: ["react"],
      plugins: [mainEntryExternal],
    }),
    esbuild.build({
      ...common,
      entryPoints: { "snorky.min": join(root, "src", "browser.ts") },
      format: "iife",
      platform: "browser",
      minify: true,
    }),
  ]);
  const files = {};
  for (const result of results) {
    for (const file of result.outputFiles) files[relative(dist, file.path)] = file.contents;
  }
  return files;
}

/** Writes the bundles and the declarations into `dir` (emptied first). */
async function buildInto(dir) {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const [name, contents] of Object.entries(await buildBundles())) writeFileSync(join(dir, name), contents);
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.json"), "--outDir", join(dir, "types")], {
    stdio: "inherit",
  });
}

/** Every file under `dir`, as sorted relative paths. */
function listFiles(dir, prefix = "") {
  let entries;
  try {
    entries = readdirSync(join(dir, prefix), { withFileTypes: true });
  } catch {
    return [];
  }
  return entries
    .flatMap((entry) => {
      const path = prefix ? `${prefix}/${entry.name}` : entry.name;
      return entry.isDirectory() ? listFiles(dir, path) : [path];
    })
    .sort();
}

/** The differences between two folders, as readable lines. */
function compareTrees(expected, actual) {
  const want = listFiles(expected);
  const have = listFiles(actual);
  const problems = [];
  for (const path of want) {
    if (!have.includes(path)) problems.push(`missing: ${path}`);
    else if (!readFileSync(join(expected, path)).equals(readFileSync(join(actual, path)))) problems.push(`stale: ${path}`);
  }
  for (const path of have) if (!want.includes(path)) problems.push(`unexpected: ${path}`);
  return problems;
}

async function main() {
  if (process.argv.includes("--check")) {
    const tmp = mkdtempSync(join(tmpdir(), "snorky-js-"));
    try {
      await buildInto(tmp);
      const problems = compareTrees(tmp, shipped);
      if (problems.length) {
        console.error(`The bundle in ${relative(process.cwd(), shipped)} is stale; run \`npm run build\`:`);
        for (const line of problems) console.error(`  ${line}`);
        process.exitCode = 1;
      } else {
        console.log(`${relative(process.cwd(), shipped)} is up to date.`);
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    return;
  }
  await buildInto(dist);
  if (process.argv.includes("--dist-only")) {
    console.log(`Built ${relative(process.cwd(), dist)}.`);
    return;
  }
  rmSync(shipped, { recursive: true, force: true });
  mkdirSync(shipped, { recursive: true });
  cpSync(dist, shipped, { recursive: true });
  console.log(`Built ${relative(process.cwd(), dist)} and copied it to ${relative(process.cwd(), shipped)}.`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
