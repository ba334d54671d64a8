/**
 * `useSnorkyCollection` rendered by React (react-dom in jsdom) against the
 * real server: the component shows the API's rows, then every delta; a lost
 * subscription is fetched again; unmounting cancels the subscription; a failed
 * fetch or a refused token shows as an error.
 *
 * The "API" is a small HTTP server that authorizes a subscription on the real
 * server for every subscribing request, as a DRF view with
 * `ListSubscribeModelMixin` does.
 */

import { container } from "../support/dom.js";

import assert from "node:assert/strict";
import { after, before, describe, it, type TestContext } from "node:test";
import { createElement } from "react";
import { createRoot, type Root } from "react-dom/client";
import { type SnorkyCollection, useSnorkyCollection, type UseSnorkyCollectionOptions } from "../../src/react.js";
import { startHttpServer } from "../support/httpServer.js";
import { connectedClient, type LiveClient } from "../support/live.js";
import { RealServer } from "../support/realServer.js";
import { nextDispatch, waitUntil } from "../support/wait.js";

let server: RealServer;
before(async () => {
  server = await RealServer.start();
});
after(async () => {
  await server?.close();
});

interface Task {
  id: number;
  owner: { id: number };
  title: string;
}

const task = (id: number, owner: number, title: string): Task => ({ id, owner: { id: owner }, title });

/** Serves `rows()` as a subscribable list of `owner`'s tasks; counts the requests. */
async function tasksApi(t: TestContext, owner: number, rows: () => Task[]) {
  const api = await startHttpServer((request, response) => {
    const answer = async () => {
      const headers: Record<string, string> = { "Content-Type": "application/json" };
      if (request.headers["x-snorky"] === "Subscribe") {
        headers["X-Subscription-Token"] = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
      }
      response.writeHead(200, headers);
      response.end(JSON.stringify(rows()));
    };
    answer().catch((error: unknown) => {
      response.writeHead(500);
      response.end(String(error));
    });
  });
  t.after(() => api.stop());
  return api;
}

/** What a component using the hook renders, read back from the DOM. */
interface Rendered {
  status: string | null;
  titles: string[];
  error: string | null;
}

/** Renders a component using the hook into a fresh container; unmounted when the test ends. */
function renderTasks(t: TestContext, client: LiveClient, url: string, options: UseSnorkyCollectionOptions<Task> = {}) {
  const element = container();
  const root: Root = createRoot(element);
  let renders = 0;
  function Tasks() {
    renders++;
    const { items, status, error }: SnorkyCollection<Task> = useSnorkyCollection<Task>(client, url, "Task", options);
    return createElement(
      "section",
      { "data-status": status },
      createElement("ul", null, ...items.map((item) => createElement("li", { key: item.id }, item.title))),
      error ? createElement("p", { className: "error" }, error instanceof Error ? error.message : String(error)) : null,
    );
  }
  root.render(createElement(Tasks));
  let mounted = true;
  const unmount = () => {
    if (mounted) root.unmount();
    mounted = false;
  };
  t.after(unmount);
  const read = (): Rendered => ({
    status: element.querySelector("section")?.getAttribute("data-status") ?? null,
    titles: [...element.querySelectorAll("li")].map((li) => li.textContent ?? ""),
    error: element.querySelector(".error")?.textContent ?? null,
  });
  /** Waits (bounded) until the rendered page matches `expected` (the keys given). */
  const shows = async (expected: Partial<Rendered>, timeout = 5000) => {
    try {
      await waitUntil(() => {
        const now = read();
        return Object.entries(expected).every(([key, value]) => JSON.stringify(now[key as keyof Rendered]) === JSON.stringify(value));
      }, timeout);
    } catch {
      assert.deepEqual(read(), { ...read(), ...expected }, `the page after ${timeout} ms`);
    }
  };
  return { read, shows, unmount, renders: () => renders };
}

describe("useSnorkyCollection (React) on the real server", () => {
  it("renders the API's rows, then every insert, update and delete, live", async (t) => {
    const owner = 101;
    const api = await tasksApi(t, owner, () => [task(1, owner, "one"), task(2, owner, "two")]);
    const client = await connectedClient(t, server);
    const page = renderTasks(t, client, `${api.base}/tasks/`);

    await page.shows({ status: "live", titles: ["one", "two"], error: null });
    assert.equal(api.requests[0]?.headers["x-snorky"], "Subscribe");
    assert.equal(client.services.datasync.subscriptions.length, 1);

    await server.publishDeltas([
      { type: "insert", model: "Task", data: task(3, owner, "three") },
      { type: "update", model: "Task", oldData: task(1, owner, "one"), newData: task(1, owner, "one, renamed") },
      { type: "delete", model: "Task", data: task(2, owner, "two") },
      // Someone else's task: another subscription's business, never rendered here.
      { type: "insert", model: "Task", data: task(4, owner + 1, "not mine") },
    ]);
    await page.shows({ titles: ["one, renamed", "three"] });
    // Ownership moves: the server turns the update into a delete for this subscription.
    await server.publishDeltas([{ type: "update", model: "Task", oldData: task(3, owner, "three"), newData: task(3, owner + 1, "three") }]);
    await page.shows({ titles: ["one, renamed"], status: "live" });
  });

  it("two hooks of one model on one client: each view applies only its own subscription's deltas", async (t) => {
    const [mine, theirs] = [105, 106];
    const mineApi = await tasksApi(t, mine, () => [task(1, mine, "mine")]);
    const theirsApi = await tasksApi(t, theirs, () => [task(2, theirs, "theirs")]);
    const client = await connectedClient(t, server);
    const minePage = renderTasks(t, client, `${mineApi.base}/tasks/`);
    const theirsPage = renderTasks(t, client, `${theirsApi.base}/tasks/`);
    await minePage.shows({ status: "live", titles: ["mine"] });
    await theirsPage.shows({ status: "live", titles: ["theirs"] });
    assert.equal(client.services.datasync.subscriptions.length, 2);
    await server.publishDeltas([
      { type: "insert", model: "Task", data: task(3, mine, "mine too") },
      { type: "insert", model: "Task", data: task(4, theirs, "theirs too") },
      // Moves from one view to the other: a delete for one subscription, an insert for the other.
      { type: "update", model: "Task", oldData: task(1, mine, "mine"), newData: task(1, theirs, "given away") },
    ]);
    await minePage.shows({ titles: ["mine too"] });
    await theirsPage.shows({ titles: ["theirs", "theirs too", "given away"] });
  });

  it("transformItem and itemsAreEqual shape what is rendered", async (t) => {
    const owner = 102;
    const api = await tasksApi(t, owner, () => [task(1, owner, "one")]);
    const client = await connectedClient(t, server);
    const page = renderTasks(t, client, `${api.base}/tasks/`, {
      transformItem: (data: Task) => ({ ...data, title: data.title.toUpperCase() }),
      itemsAreEqual: (item, data: Task) => item.id === data.id,
    });
    await page.shows({ status: "live", titles: ["ONE"] });
    await server.publishDeltas([{ type: "update", model: "Task", oldData: task(1, owner, "one"), newData: task(1, owner, "uno") }]);
    await page.shows({ titles: ["UNO"] });
  });

  it("unmounting cancels the subscription; later deltas change nothing", async (t) => {
    const owner = 103;
    const api = await tasksApi(t, owner, () => [task(1, owner, "one")]);
    const client = await connectedClient(t, server);
    const page = renderTasks(t, client, `${api.base}/tasks/`);
    await page.shows({ status: "live", titles: ["one"] });

    const renders = page.renders();
    page.unmount();
    await waitUntil(() => client.services.datasync.subscriptions.length === 0, 5000, "the subscription to be cancelled");
    assert.equal(client.services.datasync.deltaReceived.listenerCount, 0);
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(2, owner, "after unmount") }]);
    // Another client's subscription to the same owner shows the delta was published.
    const witness = await connectedClient(t, server);
    const token = await server.authorize([{ dealer: "TasksByOwner", query: owner }]);
    await witness.services.datasync.acquireSubscription({ token });
    const delta = nextDispatch(witness.services.datasync.deltaReceived, 3000, "the witness's delta");
    await server.publishDeltas([{ type: "insert", model: "Task", data: task(3, owner, "seen by the witness") }]);
    await delta;
    assert.equal(page.renders(), renders, "the unmounted component rendered again");
  });

  it("a server restart that loses the subscription: the hook fetches again and stays live", async (t) => {
    const owner = 104;
    let rows = [task(1, owner, "before the restart")];
    const api = await tasksApi(t, owner, () => rows);
    const client = await connectedClient(t, server);
    const page = renderTasks(t, client, `${api.base}/tasks/`);
    await page.shows({ status: "live", titles: ["before the restart"] });

    const gone = nextDispatch(client.disconnected, 10_000, "the disconnection");
    await server.stop();
    await gone;
    rows = [task(1, owner, "before the restart"), task(2, owner, "while it was down")];
    const resync = nextDispatch(client.services.datasync.resyncNeeded, 10_000, "resyncNeeded");
    await server.start({ fresh: true });
    await resync;
    await page.shows({ status: "live", titles: ["before the restart", "while it was down"] }, 10_000);
    assert.equal(api.requests.length, 2);

    await server.publishDeltas([{ type: "insert", model: "Task", data: task(3, owner, "after the restart") }]);
    await page.shows({ titles: ["before the restart", "while it was down", "after the restart"] });
  });

  it("a failed fetch and a refused token show as errors", async (t) => {
    const client = await connectedClient(t, server);
    const failing = await startHttpServer((_request, response) => {
      response.writeHead(500);
      response.end("boom");
    });
    t.after(() => failing.stop());
    const broken = renderTasks(t, client, `${failing.base}/tasks/`);
    await broken.shows({ status: "error", error: `${failing.base}/tasks/ answered HTTP 500`, titles: [] });

    const forged = await startHttpServer((_request, response) => {
      response.writeHead(200, { "Content-Type": "application/json", "X-Subscription-Token": "0".repeat(32) });
      response.end(JSON.stringify([task(1, 105, "shown, but not live")]));
    });
    t.after(() => forged.stop());
    const refused = renderTasks(t, client, `${forged.base}/tasks/`);
    await refused.shows({ status: "error", error: "No such subscription", titles: ["shown, but not live"] });

    const noService = renderTasks(t, client, `${forged.base}/tasks/`, { service: "datasink" });
    await noService.shows({ status: "error", error: 'the Snorky client has no service "datasink"' });
  });
});
