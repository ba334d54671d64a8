"""Fixtures of the Django tests: the database (SQLite, or a PostgreSQL server started for the run),
a live Snorky server built from the test project's settings, users, and WebSocket clients.

SNORKY_TEST_DB=postgres runs everything on PostgreSQL: the session starts `initdb`/`pg_ctl` from
Debian's `postgresql` package in a temporary directory on a free port (as the `postgres` user when
running as root, since PostgreSQL refuses root) and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from wsclient import WsClient as BaseWsClient

from snorky_django.testing import LiveSnorkyServer, live_snorky_server
from snorky_django.testing import snorky_server as snorky_server  # the fixture shipped for users

TIMEOUT = 5.0
QUIET = 0.5  # how long "nothing arrives" is watched, when no later event can prove it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- PostgreSQL -----------------------------------------------------------------------------------


def _postgres_binary(name: str) -> str | None:
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0,
    )
    return found[-1] if found else shutil.which(name)


def _run(command: list[str], timeout: float) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dict[str, Any] | None]:
    """A PostgreSQL server for the session when SNORKY_TEST_DB=postgres, else None."""
    if os.environ.get("SNORKY_TEST_DB", "sqlite") != "postgres":
        yield None
        return
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail("SNORKY_TEST_DB=postgres, but initdb/pg_ctl are missing: apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="snorky-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: run it as the `postgres` user, in a directory it owns.
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    port = free_port()
    try:
        _run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"], 120)
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        _run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"], 90)
    except Exception:
        if log.exists():
            print(log.read_text())
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield {"port": port, "host": "127.0.0.1"}
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


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
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/backend"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
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


class FaultyBackendProxy:
    """An HTTP proxy in front of a server's backend that answers the next requests with faults,
    then forwards again: what the relay sees of a server that fails for a while and recovers.

    ``fail(*faults)`` queues faults, one per request: ``"Internal error"`` (or any other text: a
    JSON error reply, HTTP 200, as the server sends when a service fails), ``500``/``503``/...
    (that HTTP status), ``"timeout"`` (no answer until the client gives up). ``requests`` counts
    every request received; ``forwarded`` those that reached the server.
    """

    def __init__(self, target_port: int, hang: float = 3.0) -> None:
        self.target = f"http://127.0.0.1:{target_port}/backend"
        self.faults: list[int | str] = []
        self.requests = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._hang = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    proxy.requests += 1
                    fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "timeout":
                    proxy._hang.wait(hang)
                    return
                if isinstance(fault, int):
                    self._answer(fault, json.dumps({"error": "Service unavailable"}).encode())
                    return
                if isinstance(fault, str):
                    service = json.loads(body).get("service")
                    reply = {"service": service, "message": {"type": "error", "message": fault}}
                    self._answer(200, json.dumps(reply).encode())
                    return
                headers = {"Content-Type": "application/json", "X-Backend-Key": self.headers["X-Backend-Key"]}
                request = urllib.request.Request(proxy.target, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=TIMEOUT) as upstream:
                        status, answer = upstream.status, upstream.read()
                except urllib.error.HTTPError as err:
                    status, answer = err.code, err.read()
                with proxy._lock:
                    proxy.forwarded += 1
                self._answer(status, answer)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/backend"

    def fail(self, *faults: int | str) -> None:
        with self._lock:
            self.faults.extend(faults)

    def close(self) -> None:
        self._hang.set()
        self._server.shutdown()
        self._server.server_close()


def wait_until(condition: Any, timeout: float = TIMEOUT, message: str = "condition") -> None:
    """Polls ``condition`` until true; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.02)
