"""The server: registries of services, settings, and the running handle."""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import weakref
from collections.abc import Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any, Protocol

from snorky import _core

logger = logging.getLogger("snorky")

#: How long a server still running at exit gets to close its connections.
EXIT_STOP_TIMEOUT = 5.0

#: The servers started in this process (see :func:`_stop_at_exit`).
_started: weakref.WeakSet[ServerHandle] = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    """Stops, gracefully, the servers still running when the interpreter exits: their clients get
    close code 1001 rather than a dropped connection, and no server thread calls into Python (a
    hook, a log line) while it finalizes, which would crash the process."""
    for handle in list(_started):
        try:
            if not handle.stop(timeout=EXIT_STOP_TIMEOUT):
                logger.warning("Snorky server on port %d still stopping at exit", handle.frontend_port)
        except _core.SnorkyError as err:
            logger.warning("Snorky server on port %d failed: %s", handle.frontend_port, err)


class _HasCore(Protocol):
    name: str

    @property
    def _core(self) -> Any: ...


class ServiceRegistry:
    """The services reachable through one listener (the frontend or the backend)."""

    def __init__(self, services: Iterable[_HasCore] = ()) -> None:
        self._services: list[_HasCore] = list(services)

    def register(self, service: _HasCore) -> None:
        """Adds a service (before the server starts)."""
        self._services.append(service)

    def __iter__(self) -> Iterator[_HasCore]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)

    def __repr__(self) -> str:
        return f"ServiceRegistry([{', '.join(repr(s.name) for s in self._services)}])"


class Server:
    """A Snorky server: a WebSocket frontend for browsers and an HTTP backend for the web app.

    ``run()`` blocks until Ctrl-C or SIGTERM and shuts down gracefully; ``start()`` serves on
    background threads and returns a :class:`ServerHandle` (a context manager).

    Options (keyword arguments, all but ``api_key`` optional):

    - ``frontend_address`` (``"0.0.0.0:5001"``), ``backend_address`` (``"127.0.0.1:5002"``)
    - ``api_key``: the shared secret the web application sends as ``X-Backend-Key`` (required)
    - ``allowed_origins``: browser origins allowed to connect, or ``["*"]``
    - ``max_frame_size`` (1 MiB), ``outbox_limit`` (16 MiB per connection), ``ping_interval``
      (30 s), ``close_timeout`` (5 s), ``shutdown_timeout`` (10 s), ``backend_body_limit`` (16 MiB),
      ``header_read_timeout`` (10 s) and ``body_read_timeout`` (30 s) for a request's head and body
    - ``token_secret``: the secret that signs connection tokens
    - SockJS, for browsers without WebSocket: ``sockjs`` (``True``: served), ``sockjs_prefix``
      (``"/sockjs"``), ``sockjs_websocket`` (``True``), ``sockjs_cookie_needed`` (``False``),
      ``sockjs_heartbeat_interval`` (25 s), ``sockjs_disconnect_delay`` (5 s),
      ``sockjs_response_limit`` (128 KiB), ``sockjs_client_url`` (sockjs-client's script for the
      iframe page)
    """

    def __init__(
        self,
        frontend: ServiceRegistry | Iterable[_HasCore],
        backend: ServiceRegistry | Iterable[_HasCore] = (),
        *,
        frontend_address: str = _core.DEFAULT_FRONTEND_ADDRESS,
        backend_address: str = _core.DEFAULT_BACKEND_ADDRESS,
        api_key: str | None = None,
        allowed_origins: Iterable[str] = (),
        **options: Any,
    ) -> None:
        if isinstance(allowed_origins, str):  # a string is iterable too: each letter would be an origin
            raise _core.ConfigurationError(
                f"allowed_origins must be a list of origins, not a string: write [{allowed_origins!r}]"
            )
        self.frontend = frontend if isinstance(frontend, ServiceRegistry) else ServiceRegistry(frontend)
        self.backend = backend if isinstance(backend, ServiceRegistry) else ServiceRegistry(backend)
        config: dict[str, Any] = {
            "frontend_address": frontend_address,
            "backend_address": backend_address,
            "api_key": api_key,
            "allowed_origins": list(allowed_origins),
            **options,
        }
        self._core = _core.Server(
            [getattr(service, "_core", service) for service in self.frontend],
            [getattr(service, "_core", service) for service in self.backend],
            config,
        )

    def start(self) -> ServerHandle:
        """Binds and serves on background threads; returns once the ports are bound."""
        _core.reset_log_cache()
        return ServerHandle(self._core.start())

    def run(self) -> None:
        """Serves until Ctrl-C (SIGINT) or SIGTERM, then shuts down gracefully."""
        handle = self.start()
        logger.info("Snorky frontend on port %d, backend on port %d", handle.frontend_port, handle.backend_port)
        serve_until_stopped(handle)


def serve_until_stopped(handle: ServerHandle) -> None:
    """Waits until Ctrl-C (SIGINT), SIGTERM or the server's end, then stops ``handle`` gracefully."""
    stop = threading.Event()
    restore = _install_stop_signals(stop)
    try:
        while not stop.is_set() and handle.running:
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        restore()
        logger.info("Snorky shutting down")
        handle.stop()


def _install_stop_signals(stop: threading.Event) -> Any:
    """Makes SIGINT and SIGTERM set ``stop`` (main thread only); returns a function restoring them."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


class ServerHandle:
    """A running server. Leaving the ``with`` block stops it gracefully."""

    def __init__(self, core: _core.ServerHandle) -> None:
        self._core = core
        _started.add(self)

    @property
    def frontend_port(self) -> int:
        """The bound frontend (WebSocket) port."""
        return self._core.frontend_port

    @property
    def backend_port(self) -> int:
        """The bound backend (HTTP) port."""
        return self._core.backend_port

    @property
    def running(self) -> bool:
        """Whether the server is still serving."""
        return self._core.running

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Shuts down gracefully (every client gets close code 1001); returns whether it stopped."""
        return self._core.stop(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the server to stop; returns whether it did."""
        return self._core.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
