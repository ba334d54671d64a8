"""Helpers for testing code that uses Snorky: an in-process server on free ports."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from snorky.backend import SnorkyBackend
from snorky.server import Server, ServerHandle


@dataclass
class RunningServer:
    """A server started by :func:`running_server`."""

    handle: ServerHandle
    api_key: str

    @property
    def ws_url(self) -> str:
        """The WebSocket URL clients connect to."""
        return f"ws://127.0.0.1:{self.handle.frontend_port}/ws"

    @property
    def backend_url(self) -> str:
        """The backend URL for :class:`SnorkyBackend`."""
        return f"http://127.0.0.1:{self.handle.backend_port}/backend"

    def backend(self) -> SnorkyBackend:
        """A backend client for this server."""
        return SnorkyBackend(self.backend_url, self.api_key)


@contextmanager
def running_server(frontend: Iterable[Any], backend: Iterable[Any] = (), **options: Any) -> Iterator[RunningServer]:
    """Runs a server on 127.0.0.1 with free ports for the duration of the ``with`` block."""
    api_key = options.pop("api_key", None) or secrets.token_hex(16)
    options.setdefault("allowed_origins", ["*"])
    server = Server(
        frontend,
        backend,
        frontend_address="127.0.0.1:0",
        backend_address="127.0.0.1:0",
        api_key=api_key,
        **options,
    )
    with server.start() as handle:
        yield RunningServer(handle, api_key)
