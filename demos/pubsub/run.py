"""The PubSub demo: a message board. Run with ``scripts/demo`` (or ``python demos/pubsub/run.py``).

Starts a Snorky server (WebSocket on :5001, backend on :5002) and serves ``index.html`` on :8000.
Messages typed in any open page reach every page; the web application's side is played by a
thread that publishes the time through the backend every 10 seconds.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
import secrets
import threading
import time
import webbrowser
from pathlib import Path

from snorky import Server, ServiceRegistry, SnorkyError
from snorky.backend import SnorkyBackend
from snorky.services import PubSubBackend, PubSubService

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (default %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--ws-port", type=int, default=5001)
    parser.add_argument("--backend-port", type=int, default=5002)
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    api_key = secrets.token_hex(16)
    pubsub = PubSubService("pubsub")
    origins = [f"http://{host}:{args.http_port}" for host in {args.host, "127.0.0.1", "localhost"}]
    server = Server(
        frontend=ServiceRegistry([pubsub]),
        backend=ServiceRegistry([PubSubBackend("pubsub_backend", pubsub)]),
        frontend_address=f"{args.host}:{args.ws_port}",
        backend_address=f"127.0.0.1:{args.backend_port}",
        api_key=api_key,
        allowed_origins=origins,
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HERE / "static"))
    pages = http.server.ThreadingHTTPServer((args.host, args.http_port), handler)
    threading.Thread(target=pages.serve_forever, daemon=True).start()

    stop = threading.Event()

    def announce_time() -> None:
        backend = SnorkyBackend(f"http://127.0.0.1:{args.backend_port}/backend", api_key)
        while not stop.wait(10):
            try:
                backend.publish("messages", {"author": "server", "text": time.strftime("It is %H:%M:%S")})
            except SnorkyError as err:
                logging.warning("demo publisher: %s", err)

    threading.Thread(target=announce_time, daemon=True).start()
    url = f"http://{args.host}:{args.http_port}/?ws=ws://{args.host}:{args.ws_port}/ws"
    print(f"\n  Snorky PubSub demo: open {url}\n  (open it in two tabs; Ctrl-C stops)\n", flush=True)
    if not args.no_browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    try:
        server.run()
    finally:
        stop.set()
        pages.shutdown()


if __name__ == "__main__":
    main()
