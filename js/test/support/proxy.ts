/**
 * A TCP proxy on a loopback port that a test can cut: every connection
 * through it is destroyed at once, both ways, without a WebSocket close frame,
 * as a network failure would drop it. Bytes the server wrote into the proxy
 * and the client had not read are lost, like bytes in flight on a real
 * network. The proxy keeps listening, so the client's reconnection goes
 * through it again.
 */

import { createConnection, createServer, type Server, type Socket } from "node:net";

export class CutProxy {
  private constructor(
    private readonly server: Server,
    private readonly sockets: Set<Socket>,
    private readonly target: { port: number },
    /** The port clients connect to. */
    readonly port: number,
  ) {}

  /** Starts forwarding to `127.0.0.1:targetPort`. */
  static async start(targetPort: number): Promise<CutProxy> {
    const sockets = new Set<Socket>();
    const target = { port: targetPort };
    const server = createServer((client) => {
      const upstream = createConnection({ host: "127.0.0.1", port: target.port });
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on("close", () => sockets.delete(socket));
        // A cut or a peer's reset ends both sides; nothing to report.
        socket.on("error", () => {});
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const address = server.address();
    if (address === null || typeof address === "string") throw new Error("the proxy has no port");
    return new CutProxy(server, sockets, target, address.port);
  }

  /** Forwards the connections made from now on to `127.0.0.1:port` (another node, as a load balancer would). */
  retarget(port: number): void {
    this.target.port = port;
  }

  /** `ws://127.0.0.1:<port>/ws`. */
  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Destroys every connection through the proxy, with whatever it still held. */
  cut(): void {
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
  }

  /** Cuts everything and stops listening. */
  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
