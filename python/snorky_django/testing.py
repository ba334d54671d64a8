"""Testing Django code that uses Snorky against a real server, on free ports.

- :func:`live_snorky_server`: a context manager that builds the server from ``settings.SNORKY``
  (services, dealers), serves it on ``127.0.0.1`` with free ports, and points Django at it
  (``BACKEND_URL``, ``PUBLIC_URL``, ``API_KEY``) until the block ends. In outbox mode it runs the
  relay too (``relay=False`` to drive it yourself through ``server.relay``).
- :class:`SnorkyLiveServerTestCase`: a ``TransactionTestCase`` with such a server per class
  (``self.snorky``). Deltas leave on commit, which ``TestCase`` never does, hence the
  ``TransactionTestCase``; with ``TestCase``, use ``captureOnCommitCallbacks(execute=True)``.
- A pytest fixture ``snorky_server``: add ``pytest_plugins = ["snorky_django.testing"]`` to your
  ``conftest.py`` and use it with ``@pytest.mark.django_db(transaction=True)``.

Direct delivery posts from a sender thread after the commit (``DIRECT_SEND = "background"``): a
test that counts deltas or ``delivery.stats`` right after a commit calls
``snorky_django.delivery.flush()`` first; :func:`live_snorky_server` flushes when its block ends.

Every wait is bounded: starting and stopping take at most a few seconds.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from django.test import TransactionTestCase, override_settings

from snorky import ServerHandle
from snorky.backend import SnorkyBackend
from snorky_django import delivery
from snorky_django.conf import snorky_settings
from snorky_django.relay import OutboxRelay
from snorky_django.server import DjangoServer, build_server

__all__ = ["LiveSnorkyServer", "SnorkyLiveServerTestCase", "live_snorky_server"]


@dataclass
class LiveSnorkyServer:
    """A server started by :func:`live_snorky_server`."""

    server: DjangoServer
    handle: ServerHandle
    api_key: str

    @property
    def ws_url(self) -> str:
        """The WebSocket URL (``ws://127.0.0.1:<port>/ws``)."""
        return f"ws://127.0.0.1:{self.handle.frontend_port}/ws"

    @property
    def backend_url(self) -> str:
        """The backend URL Django posts to."""
        return f"http://127.0.0.1:{self.handle.backend_port}/backend"

    @property
    def relay(self) -> OutboxRelay | None:
        """The outbox relay, when the server runs one."""
        return self.server.relay

    def backend(self) -> SnorkyBackend:
        """A new backend client for this server."""
        return SnorkyBackend(self.backend_url, self.api_key)


@contextmanager
def live_snorky_server(*, relay: bool | None = None, **snorky: Any) -> Iterator[LiveSnorkyServer]:
    """Serves the project's Snorky server on free ports for the ``with`` block.

    ``snorky`` overrides keys of ``settings.SNORKY`` (``DELIVERY="outbox"``, ...) for the block.
    ``API_KEY`` defaults to a random one; ``ALLOWED_ORIGINS`` to ``["*"]``.
    """
    base = {**snorky_settings.user_settings, **snorky}
    base.setdefault("ALLOWED_ORIGINS", ["*"])
    if not base.get("API_KEY"):
        base["API_KEY"] = secrets.token_hex(16)
    building = {**base, "FRONTEND_ADDRESS": "127.0.0.1:0", "BACKEND_ADDRESS": "127.0.0.1:0"}
    with override_settings(SNORKY=building):
        server = build_server(relay=relay)
        if server.relay is not None:
            server.relay.poll_interval = min(server.relay.poll_interval, 0.05)
            server.relay.max_retry_delay = min(server.relay.max_retry_delay, 0.5)
        handle = server.start()
    try:
        running = {
            **base,
            "FRONTEND_ADDRESS": f"127.0.0.1:{handle.frontend_port}",
            "BACKEND_ADDRESS": f"127.0.0.1:{handle.backend_port}",
            "BACKEND_URL": f"http://127.0.0.1:{handle.backend_port}/backend",
            "PUBLIC_URL": f"ws://127.0.0.1:{handle.frontend_port}/ws",
        }
        with override_settings(SNORKY=running):
            try:
                yield LiveSnorkyServer(server, handle, base["API_KEY"])
            finally:
                # Deltas the block committed go to this server, not to whatever comes next.
                delivery.flush(5.0)
    finally:
        handle.stop(10.0)


class SnorkyLiveServerTestCase(TransactionTestCase):
    """A ``TransactionTestCase`` with a live Snorky server for the class, as ``self.snorky``.

    Set ``snorky_overrides`` (a dict) on the class to override keys of ``settings.SNORKY``.
    """

    snorky_overrides: ClassVar[dict[str, Any]] = {}
    snorky: ClassVar[LiveSnorkyServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        context = live_snorky_server(**cls.snorky_overrides)
        cls.snorky = context.__enter__()
        cls.addClassCleanup(context.__exit__, None, None, None)


try:
    import pytest
except ImportError:  # pragma: no cover (pytest is optional)
    pass
else:

    @pytest.fixture
    def snorky_server() -> Iterator[LiveSnorkyServer]:
        """A live Snorky server for the test (see :func:`live_snorky_server`)."""
        with live_snorky_server() as server:
            yield server
