"""`manage.py snorky` as a real process: banner, deltas through it, SIGTERM, configuration errors,
the outbox surviving a SIGKILL of the server and its relay, and two processes sharing a broker
(Redis) serving the project's subscriptions as one server, a SIGKILL of one included."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import override_settings

from django_tests.conftest import TIMEOUT, client_for, database_env, free_port, subscribe, wait_until
from django_tests.testapp.models import Task
from snorky.backend import SnorkyBackend
from snorky_django.management.commands.snorky import _bind_hint, address_warnings
from snorky_django.models import OutboxEntry
from snorky_django.relay import OutboxRelay
from snorky_django.testing import live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)

TESTS = Path(__file__).resolve().parent.parent
API_KEY = "django-tests-api-key"


class SnorkyProcess:
    """`python -m django snorky ...` with the test settings and database; output read by threads."""

    def __init__(self, *args: str, **env: str) -> None:
        self.frontend_port, self.backend_port = free_port(), free_port()
        # (A relay-only process serves no frontend: it refuses the flag.)
        frontend = [] if "--relay-only" in args else [f"--frontend-address=127.0.0.1:{self.frontend_port}"]
        command = [
            sys.executable,
            "-m",
            "django",
            "snorky",
            *frontend,
            f"--backend-address=127.0.0.1:{self.backend_port}",
            *args,
        ]
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "django_tests.settings",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            **database_env(),
            **env,
        }
        self.process = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, sink) -> None:
        for line in stream:
            sink.append(line)
            self._lines.put(line)

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stdout + self.stderr):
            if time.monotonic() > deadline or (self.process.poll() is not None and self._lines.empty()):
                raise AssertionError(
                    f"{text!r} not printed; stdout: {''.join(self.stdout)} stderr: {''.join(self.stderr)}"
                )
            with contextlib.suppress(queue.Empty):
                self._lines.get(timeout=0.1)

    def finish(self, timeout: float = 15.0) -> int:
        """Waits for the process to exit and its output to be read; returns the exit code."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5.0)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code

    @property
    def output(self) -> str:
        return "".join(self.stdout + self.stderr)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.frontend_port}/ws"

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}/backend"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.finish()


@pytest.fixture
def processes():
    started: list[SnorkyProcess] = []

    def start(*args: str, **env: str) -> SnorkyProcess:
        process = SnorkyProcess(*args, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def test_serves_deltas_and_stops_gracefully_on_sigterm(processes, settings, ws_factory, alice):
    server = processes()
    server.wait_for("Quit the server with CONTROL-C.")
    banner = "".join(server.stdout)
    assert f"WebSocket at ws://127.0.0.1:{server.frontend_port}/ws" in banner
    assert "Services: pubsub, datasync (backend: pubsub_backend, datasync_backend, connections)" in banner
    dealers = "Task, TaskById, Note, NoteById, Tag, TagById, Account, AccountById, TasksByOwner"
    assert f"DataSync dealers: {dealers}" in banner
    assert "Delivery: direct" in banner

    settings.SNORKY = {**settings.SNORKY, "BACKEND_URL": server.backend_url}
    _, token = subscribe(client_for(alice), "/api/tasks/")
    ws = ws_factory(server.ws_url, user=alice)
    ws.acquire(token)
    with transaction.atomic():
        Task.objects.create(title="through manage.py snorky", owner=alice)
    assert ws.delta()["data"]["title"] == "through manage.py snorky"

    server.process.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert "Snorky stopped." in server.output
    with pytest.raises(Exception, match="1001"):
        ws.ws.recv(timeout=TIMEOUT)


def test_a_missing_api_key_is_a_system_check_error(processes):
    server = processes(SNORKY_TEST_API_KEY="")
    assert server.finish() == 1
    assert "snorky.E001" in server.output and "API_KEY" in server.output


def test_a_bad_address_option_is_a_command_error(processes):
    server = processes("--frontend-address=nowhere")
    assert server.finish() == 1
    assert "--frontend-address 'nowhere' is not HOST:PORT" in server.output


def test_a_busy_port_says_how_to_change_it(processes):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        server = processes(f"--frontend-address=127.0.0.1:{port}")
        assert server.finish() == 1
    assert "Snorky could not start" in server.output and "--frontend-address" in server.output
    assert "Is another server using the port?" in server.output


def test_an_address_without_a_host_or_not_of_this_machine_is_not_blamed_on_another_server(processes):
    server = processes("--frontend-address=:5101")
    assert server.finish() == 1
    assert "--frontend-address ':5101' has no host: give one, e.g. 0.0.0.0:5101" in server.output
    assert "127.0.0.1:5101" in server.output and "another server" not in server.output
    # 192.0.2.1 (TEST-NET-1, documentation only) is no address of this machine.
    server = processes(f"--frontend-address=192.0.2.1:{free_port()}")
    assert server.finish() == 1
    assert "Cannot assign requested address" in server.output and "another server" not in server.output
    assert "not an address of this machine" in server.output


def test_the_bind_hint_follows_the_error():
    assert "another server" in _bind_hint("cannot listen on 127.0.0.1:5001: Address already in use (os error 98)")
    for error in (
        "cannot listen on 10.1.2.3:5001: Cannot assign requested address (os error 99)",
        "cannot listen on nohost.invalid:0: failed to lookup address information: Name or service not known",
        "cannot listen on 0.0.0.0:80: Permission denied (os error 13)",
    ):
        assert "another server" not in _bind_hint(error)
    assert "does not resolve" in _bind_hint("cannot listen on x.invalid:0: failed to lookup address information: ...")


def test_address_flags_that_django_does_not_follow_are_warned_about(processes):
    # The test settings keep the default addresses; the flags move only the Snorky process.
    server = processes()
    # The warnings go to stderr, read by its own thread: wait for them, not for stdout's banner.
    server.wait_for(f'set SNORKY["FRONTEND_ADDRESS"] = "127.0.0.1:{server.frontend_port}" instead')
    server.wait_for(f'set SNORKY["BACKEND_ADDRESS"] = "127.0.0.1:{server.backend_port}" instead')
    warnings = "".join(server.stderr)
    assert "pages are told to connect to ws://<host>:5001/ws" in warnings
    assert "Django posts to http://127.0.0.1:5002/backend" in warnings and "503" in warnings
    assert f'set SNORKY["BACKEND_ADDRESS"] = "127.0.0.1:{server.backend_port}" instead' in warnings


def test_address_warnings():
    assert address_warnings(None, None) == []
    assert address_warnings("0.0.0.0:5001", "127.0.0.1:5002") == []
    assert address_warnings("127.0.0.1:5001", "0.0.0.0:5002") == []
    assert address_warnings(None, "localhost:5002") == []
    [frontend] = address_warnings("127.0.0.1:8001", None)
    assert 'set SNORKY["FRONTEND_ADDRESS"] = "127.0.0.1:8001" instead' in frontend
    [backend] = address_warnings(None, "127.0.0.1:8002")
    assert 'set SNORKY["BACKEND_ADDRESS"] = "127.0.0.1:8002"' in backend and "broker" not in backend
    [backend] = address_warnings(None, "10.0.0.5:5002")  # the port matches, the host does not
    assert "Django posts to http://127.0.0.1:5002/backend" in backend
    [_, backend] = address_warnings("127.0.0.1:8001", "127.0.0.1:8002", broker="redis://127.0.0.1:6379/0")
    assert "another node sharing" in backend
    [relay] = address_warnings(None, "127.0.0.1:8002", relay_only=True)
    assert "this relay posts to 127.0.0.1:8002" in relay and "reach no subscriber" in relay
    with override_settings(SNORKY={"API_KEY": API_KEY, "BACKEND_URL": "http://snorky.internal:9000/backend"}):
        assert address_warnings(None, "0.0.0.0:9000") == []
        [backend] = address_warnings(None, "0.0.0.0:9001")
        assert 'set SNORKY["BACKEND_URL"] = "http://127.0.0.1:9001/backend"' in backend
    with override_settings(SNORKY={"API_KEY": API_KEY, "PUBLIC_URL": "/snorky/ws"}):
        assert address_warnings("127.0.0.1:8001", None) == []  # a proxy's business
    with override_settings(SNORKY={"API_KEY": API_KEY, "PUBLIC_URL": "wss://live.example.com/ws"}):
        assert address_warnings("127.0.0.1:8001", None) == []
    with override_settings(SNORKY={"API_KEY": API_KEY, "PUBLIC_URL": "ws://127.0.0.1:5001/ws"}):
        [frontend] = address_warnings("127.0.0.1:8001", None)
        assert 'ws://127.0.0.1:5001/ws (SNORKY["PUBLIC_URL"])' in frontend
        assert address_warnings("127.0.0.1:5001", None) == []


@pytest.mark.parametrize("flag", [["--frontend-address", "127.0.0.1:5101"], ["--broker", "redis://127.0.0.1:1/0"]])
def test_a_relay_only_process_refuses_the_flags_of_a_server(flag):
    with pytest.raises(CommandError, match=rf"--relay-only runs no server, so {flag[0]} would do nothing"):
        call_command("snorky", "--relay-only", *flag)


def test_a_relay_only_process_with_direct_delivery_warns_that_it_has_nothing_to_relay(processes):
    relay = processes("--relay-only")
    relay.wait_for("Relaying the outbox")
    relay.wait_for('SNORKY["DELIVERY"] is "direct"')
    assert "writes nothing to the outbox" in "".join(relay.stderr)
    relay.process.send_signal(signal.SIGTERM)
    assert relay.finish() == 0
    outbox = processes("--relay-only", SNORKY_TEST_DELIVERY="outbox")
    outbox.wait_for("Relaying the outbox")
    outbox.process.send_signal(signal.SIGTERM)
    assert outbox.finish() == 0
    assert "DELIVERY" not in outbox.output


def test_the_outbox_survives_killing_the_server_and_its_relay(processes, settings, ws_factory, alice):
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "outbox"}
    first = processes(SNORKY_TEST_DELIVERY="outbox")
    first.wait_for("Quit the server with CONTROL-C.")
    assert "Delivery: outbox, relayed by this process" in first.output
    Task.objects.create(title="relayed", owner=alice)
    wait_until(lambda: not OutboxEntry.objects.exists(), timeout=10, message="the relay")

    first.kill()
    for i in range(3):
        with transaction.atomic():
            Task.objects.create(title=f"while down {i}", owner=alice)
    assert OutboxEntry.objects.count() == 3

    # A new server, relaying from this test once a browser is subscribed again.
    second = processes("--no-relay", SNORKY_TEST_DELIVERY="outbox")
    second.wait_for("Quit the server with CONTROL-C.")
    assert "relayed elsewhere (--no-relay)" in second.output
    backend = SnorkyBackend(second.backend_url, API_KEY)
    token = backend.authorize_subscription([{"dealer": "TasksByOwner", "query": alice.pk}])
    ws = ws_factory(second.ws_url)
    ws.acquire(token)
    assert OutboxRelay(backend).drain() == 3
    assert [d["data"]["title"] for d in ws.deltas(3)] == [f"while down {i}" for i in range(3)]
    assert not OutboxEntry.objects.exists()


def test_a_batch_sent_again_after_a_relay_crash_reaches_browsers_once(processes, ws_factory, alice):
    # The relay dies after the server accepted (and delivered) a batch but before it deleted it;
    # the next relay sends the same entries under the same idempotency key, and the server drops
    # the repeat: each delta reaches the browser once.
    with live_snorky_server(DELIVERY="outbox", relay=False) as live:
        token = live.backend().authorize_subscription([{"dealer": "TasksByOwner", "query": alice.pk}])
        ws = ws_factory(live.ws_url)
        ws.acquire(token)
        with transaction.atomic():
            for i in range(3):
                Task.objects.create(title=f"once {i}", owner=alice)
        backend = f"--backend-address=127.0.0.1:{live.handle.backend_port}"
        crashing = processes("--relay-only", backend, SNORKY_TEST_RELAY_CRASH="after-publish")
        assert crashing.finish(timeout=30) == 70, crashing.output
        assert [d["data"]["title"] for d in ws.deltas(3)] == [f"once {i}" for i in range(3)]
        assert OutboxEntry.objects.count() == 3  # died before deleting them
        assert len(set(OutboxEntry.objects.values_list("batch", flat=True))) == 1

        relay = processes("--relay-only", backend)
        relay.wait_for("Relaying the outbox")
        wait_until(lambda: not OutboxEntry.objects.exists(), timeout=10, message="the batch sent again")
        ws.assert_silent()
        Task.objects.create(title="after", owner=alice)
        assert ws.delta()["data"]["title"] == "after"
        relay.process.send_signal(signal.SIGTERM)
        assert relay.finish() == 0 and "Relay stopped." in relay.output


def test_two_processes_on_one_broker_behave_as_one_server(processes):
    from redis_server import redis_server
    from wsclient import WsClient

    with redis_server() as redis:
        first = processes("--broker", redis.url, "--node-name", "first")
        second = processes("--broker", redis.url, "--node-name", "second")
        for server in (first, second):
            server.wait_for("Quit the server with CONTROL-C.")
            assert f"Broker: {redis.url}" in server.output
        browser = WsClient(second.ws_url)
        assert browser.call("pubsub", "subscribe", channel="news")["type"] == "response"
        SnorkyBackend(first.backend_url, API_KEY).publish("news", {"through": "the other node"})
        assert browser.recv()["message"]["message"] == {"through": "the other node"}
        browser.close()


def test_an_unreachable_broker_is_a_command_error(processes):
    server = processes("--broker", f"redis://127.0.0.1:{free_port()}/0")
    assert server.finish() != 0
    assert "cannot reach the broker" in server.output


# --- Two nodes sharing a broker: the project's own subscriptions --------------------------------


def _two_nodes(processes, redis, *first_args: str, **env: str) -> tuple[SnorkyProcess, SnorkyProcess]:
    """Two ``manage.py snorky`` processes on one Redis: ``first`` (with ``first_args``) and
    ``second`` (without relay)."""
    first = processes("--broker", redis.url, "--node-name", "first", *first_args, **env)
    second = processes("--broker", redis.url, "--node-name", "second", "--no-relay", **env)
    for server in (first, second):
        server.wait_for("Quit the server with CONTROL-C.")
        assert f"Broker: {redis.url}" in server.output
    return first, second


def _titles(deltas: list[dict]) -> list[tuple[str, str]]:
    return [(delta["type"], (delta.get("data") or delta["newData"])["title"]) for delta in deltas]


@pytest.mark.parametrize("delivery", ["direct", "outbox"])
def test_a_subscription_authorized_through_one_node_is_served_by_the_other(
    delivery, processes, settings, ws_factory, alice, bob
):
    # Django talks to the first node only (BACKEND_URL: the DRF view authorizes there, direct
    # mode posts deltas there, the outbox relay runs in its process); browsers are on the second.
    from redis_server import redis_server

    with redis_server() as redis:
        first, second = _two_nodes(processes, redis, SNORKY_TEST_DELIVERY=delivery)
        assert f"Delivery: {delivery}" in first.output
        settings.SNORKY = {**settings.SNORKY, "BACKEND_URL": first.backend_url, "DELIVERY": delivery}
        Task.objects.create(title="existing", owner=alice)
        drained = lambda: delivery == "direct" or not OutboxEntry.objects.exists()  # noqa: E731
        wait_until(drained, timeout=10, message="the relay")
        body, token = subscribe(client_for(alice), "/api/tasks/")
        assert [task["title"] for task in body] == ["existing"]
        _, bob_token = subscribe(client_for(bob), "/api/tasks/")
        # Committed between the authorization and the acquisition: still delivered.
        Task.objects.create(title="before the acquire", owner=alice)
        wait_until(drained, timeout=10, message="the relay")

        ws = ws_factory(second.ws_url, user=alice)
        ws.acquire(token)
        bob_ws = ws_factory(first.ws_url, user=bob)
        bob_ws.acquire(bob_token)
        assert _titles([ws.delta()]) == [("insert", "before the acquire")]

        with transaction.atomic():
            task = Task.objects.create(title="draft", owner=alice)
            task.title = "final"
            task.save()
        Task.objects.create(title="bob's", owner=bob)
        task.owner = bob  # leaves alice's view, enters bob's
        task.save()
        assert _titles(ws.deltas(3)) == [("insert", "draft"), ("update", "final"), ("delete", "final")]
        assert _titles(bob_ws.deltas(2)) == [("insert", "bob's"), ("insert", "final")]
        task.delete()
        assert _titles([bob_ws.delta()]) == [("delete", "final")]
        ws.assert_silent()

        # The token is held on the second node: the first refuses it to another connection.
        thief = ws_factory(first.ws_url, user=alice)
        assert thief.call("datasync", "acquireSubscription", token=token)["message"] == "No such subscription"


def test_a_client_of_a_killed_node_resumes_on_the_other_by_offset(processes, settings, ws_factory, alice):
    from redis_server import redis_server

    with redis_server() as redis:
        first, second = _two_nodes(processes, redis)
        settings.SNORKY = {**settings.SNORKY, "BACKEND_URL": first.backend_url}
        _, token = subscribe(client_for(alice), "/api/tasks/")
        ws = ws_factory(second.ws_url, user=alice)
        reply = ws.call("datasync", "acquireSubscription", token=token, offsets=True)
        assert reply["type"] == "response" and "offset" in reply["data"], reply
        Task.objects.create(title="one", owner=alice)
        frame = ws.recv()["message"]
        assert frame["delta"]["data"]["title"] == "one" and frame["subscription"] == token
        last = frame["offset"]

        second.kill()  # SIGKILL: its record in Redis still names it as the holder
        for title in ("two", "three"):
            Task.objects.create(title=title, owner=alice)
        # The first node waits for the dead node's liveness key to expire (the node timeout),
        # then hands over the subscription from the last delta applied.
        again = ws_factory(first.ws_url, user=alice)
        again.send(
            "datasync",
            {"command": "acquireSubscription", "params": {"token": token, "offsets": True, "after": last}, "callId": 1},
        )
        frames = [again.recv(timeout=30.0) for _ in range(3)]
        reply = next(frame["message"] for frame in frames if frame["message"].get("callId") == 1)
        assert reply["type"] == "response", reply
        deltas = [frame["message"] for frame in frames if frame["message"].get("type") == "delta"]
        assert [delta["delta"]["data"]["title"] for delta in deltas] == ["two", "three"]
        Task.objects.create(title="four", owner=alice)
        assert again.delta()["data"]["title"] == "four"
        again.assert_silent()
