// The npm `sockjs` server (the SockJS project's own) serving the same four services as
// `snorky sockjs-echo`, so that the protocol tests can run against both and encode the protocol
// rather than one implementation's reading of it. Test-only; not shipped.
//
//   node tests/sockjs/reference_server.mjs --port PORT
//
// Prints "listening on PORT" once bound; stops on SIGTERM or SIGINT.

import http from "node:http";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const sockjs = require("sockjs");

const portIndex = process.argv.indexOf("--port");
const port = portIndex > 0 ? Number(process.argv[portIndex + 1]) : 0;

const base = {
  sockjs_url: "https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js",
  response_limit: 4096,
  log: () => {},
};

const services = [
  ["/echo", {}, (conn) => conn.on("data", (message) => conn.write(message))],
  ["/close", {}, (conn) => conn.close(3000, "Go away!")],
  ["/disabled_websocket_echo", { websocket: false }, (conn) => conn.on("data", (m) => conn.write(m))],
  ["/cookie_needed_echo", { jsessionid: true }, (conn) => conn.on("data", (m) => conn.write(m))],
];

const server = http.createServer();
for (const [prefix, options, onConnection] of services) {
  const service = sockjs.createServer({ ...base, ...options });
  service.on("connection", onConnection);
  service.installHandlers(server, { prefix });
}
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
