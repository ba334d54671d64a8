/** A tiny HTTP server standing in for the web application's subscribable API. */

import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type Route = (request: IncomingMessage, response: ServerResponse) => void;

export async function startHttpServer(route: Route): Promise<{ base: string; requests: IncomingMessage[]; stop: () => Promise<void> }> {
  const requests: IncomingMessage[] = [];
  const server = createServer((request, response) => {
    requests.push(request);
    route(request, response);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    base: `http://127.0.0.1:${port}`,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Answers like a DRF view with `ListSubscribeModelMixin`: data plus X-Subscription-Token when asked. */
export const subscribableTasks =
  (tasks: unknown[], token: string): Route =>
  (request, response) => {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (request.headers["x-snorky"] === "Subscribe") headers["X-Subscription-Token"] = token;
    response.writeHead(200, headers);
    response.end(JSON.stringify(tasks));
  };
