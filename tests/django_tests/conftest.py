"""Fixtures of the Django tests: the database (SQLite, or a PostgreSQL server started for the run),
a live Snorky server built from the test project's settings, users, and WebSocket clients.

SNORKY_TEST_DB=postgres runs everything on PostgreSQL: the session starts `initdb`/`pg_ctl` from
Debian's `postgresql` package in a temporary directory on a free port (as the `postgres` user when
running as root, since PostgreSQL refuses root) and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from backendproxy import BackendProxy
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from pgcluster import PostgresCluster, free_port
from wsclient import WsClient as BaseWsClient

from snorky.backend import BackendError
from snorky_django import delivery
from snorky_django.testing import LiveSnorkyServer, live_snorky_server
from snorky_django.testing import snorky_server as snorky_server  # the fixture shipped for users

TIMEOUT = 5.0
QUIET = 0.5  # how long "nothing arrives" is watched, when no later event can prove it


# --- Deltas recorded in place of the server -------------------------------------------------------


class RecordingBackend:
    """Stands in for SnorkyBackend: records each publishDeltas request, or fails on demand."""

    def __init__(self) -> None:
        self.requests: list[list[dict[str, Any]]] = []
        self.error: Exception | None = None
        self.refuse_model: str | None = None

    def publish_deltas(
        self, deltas: list[dict[str, Any]], *, key: str | None = None, service: str = "datasync_backend"
    ) -> None:
        assert service == "datasync_backend" and key is None  # direct delivery sends once, no key
        if self.error is not None:
            raise self.error
        if self.refuse_model and any(d["model"] == self.refuse_model for d in deltas):
            raise BackendError("Unknown model")
        self.requests.append(list(deltas))

    @property
    def deltas(self) -> list[dict[str, Any]]:
        return [delta for request in self.requests for delta in request]

    def types(self) -> list[str]:
        return [delta["type"] for delta in self.deltas]


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch, settings: Any) -> RecordingBackend:
    # Inline sending: each request is made by the committing thread before the commit returns, so
    # what these tests look at (which deltas, grouped how) is there to see at once. The background
    # sender, which joins transactions that pile up, is tested against a real server
    # (test_direct_sender.py).
    settings.SNORKY = {**settings.SNORKY, "DIRECT_SEND": "inline"}
    recording = RecordingBackend()
    monkeypatch.setattr(delivery, "get_backend", lambda: recording)
    delivery.stats.reset()
    return recording


# --- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dict[str, Any] | None]:
    """A PostgreSQL server for the session when SNORKY_TEST_DB=postgres, else None."""
    if os.environ.get("SNORKY_TEST_DB", "sqlite") != "postgres":
        yield None
        return
    try:
        cluster = PostgresCluster()
    except RuntimeError as err:
        pytest.fail(f"SNORKY_TEST_DB=postgres, but {err}")
    try:
        cluster.start()
        yield {"port": cluster.port, "host": cluster.host}
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, postgres_server: dict[str, Any] | None
) -> None:
    """Points the default database at the session's PostgreSQL server (pytest-django's hook)."""
    if postgres_server is not None:
        settings.DATABASES["default"]["PORT"] = str(postgres_server["port"])


def database_env() -> dict[str, str]:
    """Environment variables that make a subprocess use the test database."""
    from django.db import connection

    env = {
        "SNORKY_TEST_DB": os.environ.get("SNORKY_TEST_DB", "sqlite"),
        "SNORKY_TEST_DB_NAME": connection.settings_dict["NAME"],
    }
    if connection.vendor == "postgresql":
        env["SNORKY_TEST_DB_PORT"] = str(connection.settings_dict["PORT"])
    return env


# --- WebSocket clients ----------------------------------------------------------------------------


class WsClient(BaseWsClient):
    """The shared test client, plus DataSync helpers."""

    def acquire(self, token: str) -> None:
        reply = self.call("datasync", "acquireSubscription", token=token)
        assert reply["type"] == "response", reply

    def delta(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        frame = self.recv(timeout)
        assert frame["service"] == "datasync" and frame["message"]["type"] == "delta", frame
        return frame["message"]["delta"]

    def deltas(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        return [self.delta(timeout) for _ in range(count)]

    def assert_silent(self, within: float = QUIET) -> None:
        assert not self._pushed, self._pushed
        try:
            frame = self.ws.recv(timeout=within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def ws_factory() -> Iterator[Any]:
    """Opens WebSocket clients, closed at the end; ``user=`` connects with that user's connection
    token (a subscription authorized for a logged-in user is theirs alone)."""
    from snorky_django import connection_token

    clients: list[WsClient] = []

    def make(url: str, *, user: Any = None, **kwargs: Any) -> WsClient:
        if user is not None:
            url = f"{url}?token={connection_token(user)}"
        client = WsClient(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# --- The live server, users, HTTP clients ---------------------------------------------------------


@pytest.fixture
def live(transactional_db: None) -> Iterator[LiveSnorkyServer]:
    """A live Snorky server from the test settings; deltas leave on real commits."""
    with live_snorky_server() as server:
        yield server


@pytest.fixture
def live_outbox(transactional_db: None) -> Iterator[LiveSnorkyServer]:
    """A live server in outbox mode, with its relay."""
    with live_snorky_server(DELIVERY="outbox") as server:
        yield server


@pytest.fixture
def alice(transactional_db: None) -> Any:
    return get_user_model().objects.create_user("alice", first_name="Alice", last_name="Liddell", password="x")


@pytest.fixture
def bob(transactional_db: None) -> Any:
    return get_user_model().objects.create_user("bob", password="x")


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def subscribe(client: Client, path: str) -> tuple[Any, str]:
    """GETs ``path`` with ``X-Snorky: Subscribe``; returns the JSON body and the token."""
    from snorky_django import delivery

    # The deltas of what the test did before subscribing leave from the sender thread after their
    # commits: out of the way first, or one could race with the list and reach the subscription
    # (which a client shrugs off, replacing the row, but a test counting deltas would not).
    assert delivery.flush(TIMEOUT)
    response = client.get(path, headers={"X-Snorky": "Subscribe"})
    assert response.status_code == 200, response.content
    token = response["X-Subscription-Token"]
    assert len(token) == 32 and token.isalnum(), token
    return response.json(), token


# --- A TCP proxy that can take the server away and give it back ----------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port; ``down()`` refuses and cuts connections, ``up()``
    listens again on the same port. What the relay sees of a server that dies and comes back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/backend"

    def up(self) -> None:
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(16)
        except OSError:  # the port is still taken (the last listener's thread has not let go)
            listener.close()
            raise
        listener.settimeout(0.1)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        # A thread blocked in accept() keeps the port until its timeout (0.1 s) ends the call:
        # once it is gone, up() may listen on the port again at once.
        if self._accepting is not None:
            self._accepting.join(TIMEOUT)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=TIMEOUT)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(None)
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class FaultyBackendProxy(BackendProxy):
    """An HTTP proxy in front of a server's backend that answers the next requests with faults,
    then forwards again: what the relay sees of a server that fails for a while and recovers.

    ``fail(*faults)`` queues faults, one per request: ``"Internal error"`` (or any other text: a
    JSON error reply, HTTP 200, as the server sends when a service fails), ``500``/``503``/...
    (that HTTP status), ``"timeout"`` (no answer until the client gives up). ``requests`` counts
    every request received; ``forwarded`` those that reached the server.
    """

    def __init__(self, target_port: int, hang: float = 3.0) -> None:
        self.faults: list[int | str] = []
        self.requests = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._hang = threading.Event()
        self._hang_for = hang
        super().__init__(target_port)

    def handle(self, body: bytes, key: str) -> tuple[int, bytes] | None:
        with self._lock:
            self.requests += 1
            fault = self.faults.pop(0) if self.faults else None
        if fault == "timeout":
            self._hang.wait(self._hang_for)
            return None
        if isinstance(fault, int):
            return fault, json.dumps({"error": "Service unavailable"}).encode()
        if isinstance(fault, str):
            service = json.loads(body).get("service")
            return 200, json.dumps({"service": service, "message": {"type": "error", "message": fault}}).encode()
        answer = self.forward(body, key)
        with self._lock:
            self.forwarded += 1
        return answer

    def fail(self, *faults: int | str) -> None:
        with self._lock:
            self.faults.extend(faults)

    def close(self) -> None:
        self._hang.set()
        super().close()


def wait_until(condition: Any, timeout: float = TIMEOUT, message: str = "condition") -> None:
    """Polls ``condition`` until true; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.02)
