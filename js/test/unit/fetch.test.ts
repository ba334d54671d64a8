import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SnorkyError } from "../../src/errors.js";
import { fetchWithSubscription } from "../../src/fetch.js";
import { startHttpServer, subscribableTasks } from "../support/httpServer.js";

describe("fetchWithSubscription", () => {
  it("asks for a subscription and returns response, data and token", async (t) => {
    const http = await startHttpServer(subscribableTasks([{ id: 1 }], "abc123"));
    t.after(http.stop);
    const { response, data, subscriptionToken } = await fetchWithSubscription(`${http.base}/api/tasks/`, {
      headers: { "X-Custom": "kept" },
      credentials: "same-origin",
    });
    assert.equal(response.status, 200);
    assert.deepEqual(data, [{ id: 1 }]);
    assert.equal(subscriptionToken, "abc123");
    const [request] = http.requests;
    assert.equal(request?.headers["x-snorky"], "Subscribe");
    assert.equal(request?.headers["x-custom"], "kept");
    assert.equal(request?.headers["accept"], "application/json");
  });

  it("rejects with code http on a failed response", async (t) => {
    const http = await startHttpServer((_request, response) => {
      response.writeHead(403);
      response.end();
    });
    t.after(http.stop);
    await assert.rejects(fetchWithSubscription(`${http.base}/api/tasks/`), (error: unknown) => {
      assert.ok(error instanceof SnorkyError);
      assert.equal(error.code, "http");
      assert.equal(error.response?.status, 403);
      assert.match(error.message, /HTTP 403/);
      return true;
    });
  });

  it("rejects with code http when the response carries no token", async (t) => {
    const http = await startHttpServer((_request, response) => {
      response.writeHead(200, { "Content-Type": "application/json" });
      response.end("[]");
    });
    t.after(http.stop);
    await assert.rejects(fetchWithSubscription(`${http.base}/plain/`), /X-Subscription-Token/);
  });
});
