"""A WebSocket test client speaking Snorky's envelope, shared by the Python and Django tests."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from typing import Any

from websockets.sync.client import ClientConnection, connect

TIMEOUT = 5.0


class WsClient:
    """A WebSocket client speaking Snorky's envelope, every wait bounded by TIMEOUT."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._stack = ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(url, open_timeout=TIMEOUT, **kwargs))
        self._call_id = 0
        self._pushed: list[dict[str, Any]] = []

    def send(self, service: str, message: Any) -> None:
        self.ws.send(json.dumps({"service": service, "message": message}))

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame not consumed by :meth:`call` (pushed messages it skipped come first)."""
        if self._pushed:
            return self._pushed.pop(0)
        return json.loads(self.ws.recv(timeout=timeout))

    def call(self, service: str, command: str, **params: Any) -> dict[str, Any]:
        """Sends a request and returns its reply's message (skipping pushed messages)."""
        self._call_id += 1
        call_id = self._call_id
        self.send(service, {"command": command, "params": params, "callId": call_id})
        deadline = time.monotonic() + TIMEOUT
        while True:
            # One deadline for the whole wait, however many pushed messages arrive before the reply.
            frame = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.0)))
            message = frame["message"]
            if message.get("type") in ("response", "error") and message.get("callId") == call_id:
                return message
            self._pushed.append(frame)

    def close(self) -> None:
        self._stack.close()
