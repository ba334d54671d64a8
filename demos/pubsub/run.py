"""The PubSub demo: Snorky 0.1's README example, a message board. Run with ``python demos/pubsub/run.py``.

Starts a Snorky server with a PubSub service (WebSocket on :5001, backend on :5002) and serves the
page on :8000: ``static/`` (``index.html``, ``pubsub.js``), the shipped JavaScript client under
``/snorky/`` (the files of ``snorky_django/static/snorky/``, the same ones ``{% static %}`` serves),
and ``/config.js``, which tells the page where the WebSocket is. A message typed in any open page
reaches every page; a thread playing the web application publishes the time through the backend
every 10 seconds (``--announce-every``). Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import importlib.util
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
CHANNEL = "messages"


def client_dir() -> Path:
    """The shipped JS client's directory, ``snorky_django/static/snorky``.

    Found without importing ``snorky_django`` (which needs Django): the package is installed beside
    ``snorky`` by ``pip install snorky`` and by the editable install alike.
    """
    spec = importlib.util.find_spec("snorky_django")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("snorky_django is not installed: run scripts/setup (or pip install snorky)")
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "snorky"


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ``static/``, the shipped client under ``/snorky/`` and the page's ``/config.js``."""

    def __init__(self, *args, ws_port: int, client: Path, **kwargs) -> None:
        self.ws_port = ws_port
        self.client = client
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/config.js":
            # The page's host, so that the WebSocket's Origin and the server's allowed origins agree.
            body = f"const SNORKY_URL = `ws://${{location.hostname}}:{self.ws_port}/ws`;\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def translate_path(self, path: str) -> str:
        if path.startswith("/snorky/"):
            self.directory = str(self.client)
            path = path[len("/snorky") :]
        return super().translate_path(path)

    def log_message(self, format: str, *args) -> None:
        logging.getLogger("pages").debug(format, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (default %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000, help="the page (default %(default)s)")
    parser.add_argument("--ws-port", type=int, default=5001, help="Snorky's WebSocket (default %(default)s)")
    parser.add_argument("--backend-port", type=int, default=5002, help="Snorky's backend (default %(default)s)")
    parser.add_argument(
        "--announce-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="publish the time (default %(default)s; 0: never)",
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    api_key = secrets.token_hex(16)
    pubsub = PubSubService("pubsub")
    origins = sorted({f"http://{host}:{args.http_port}" for host in (args.host, "127.0.0.1", "localhost")})
    server = Server(
        frontend=ServiceRegistry([pubsub]),
        backend=ServiceRegistry([PubSubBackend("pubsub_backend", pubsub)]),
        frontend_address=f"{args.host}:{args.ws_port}",
        backend_address=f"127.0.0.1:{args.backend_port}",
        api_key=api_key,
        allowed_origins=origins,
    )
    handler = functools.partial(PageHandler, directory=str(HERE / "static"), ws_port=args.ws_port, client=client_dir())
    pages = http.server.ThreadingHTTPServer((args.host, args.http_port), handler)
    threading.Thread(target=pages.serve_forever, daemon=True).start()

    stop = threading.Event()

    def announce_time() -> None:
        # The web application's side: it publishes through the backend (HTTP, with the API key).
        backend = SnorkyBackend(f"http://127.0.0.1:{args.backend_port}/backend", api_key)
        while not stop.wait(args.announce_every):
            try:
                backend.publish(CHANNEL, time.strftime("The server says: it is %H:%M:%S"))
            except SnorkyError as err:
                logging.warning("demo publisher: %s", err)

    if args.announce_every > 0:
        threading.Thread(target=announce_time, daemon=True).start()
    url = f"http://{args.host}:{args.http_port}/"
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
