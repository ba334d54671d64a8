"""An HTTP proxy in front of a Snorky server's ``POST /backend``, for tests that put something
between the web application (or its outbox relay) and the server: faults, or a kill at the
right moment. It forwards each request and hands the server's answer back; a subclass decides
per request by overriding :meth:`BackendProxy.handle`.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
from typing import Any

#: How long a forwarded request may wait for the server.
FORWARD_TIMEOUT = 10.0


class BackendProxy:
    """Listens on a free loopback port (``url``) and forwards to ``target_port``'s backend."""

    def __init__(self, target_port: int) -> None:
        self.target = f"http://127.0.0.1:{target_port}/backend"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = proxy.handle(body, self.headers.get("X-Backend-Key", ""))
                if answer is None:
                    # No answer: the connection just ends, as when the peer dies.
                    self.close_connection = True
                    return
                status, content = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/backend"

    def handle(self, body: bytes, key: str) -> tuple[int, bytes] | None:
        """The answer to one request (status and body), or ``None`` for none; forwards it."""
        return self.forward(body, key)

    def forward(self, body: bytes, key: str) -> tuple[int, bytes]:
        """Posts ``body`` to the server; its status and body (503 when it cannot be reached)."""
        headers = {"Content-Type": "application/json", "X-Backend-Key": key}
        request = urllib.request.Request(self.target, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=FORWARD_TIMEOUT) as upstream:
                return int(upstream.status), bytes(upstream.read())
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError as err:
            return 503, json.dumps({"error": f"proxy: {err}"}).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
