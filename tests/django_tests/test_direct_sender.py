"""Direct delivery's sender thread (``DIRECT_SEND = "background"``, the default), against a real
server: a save does not wait for the server, transactions arrive in commit order, a full queue holds
the writer back (and drops only what waited too long), a stopped server costs the deltas but never
the request, and what is queued at exit is sent before the process ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from backendproxy import BackendProxy
from django.conf import settings
from django.db import connections, transaction
from django.test import override_settings
from pgcluster import free_port

from django_tests.conftest import TIMEOUT, TcpProxy, client_for, subscribe, wait_until
from django_tests.testapp.models import Task
from snorky_django import delivery, publish_deltas
from snorky_django.testing import LiveSnorkyServer, live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)


class GatedProxy(BackendProxy):
    """Holds every request until ``gate`` is set (at most ``TIMEOUT``), then forwards it: a server
    that stalls. ``requests`` counts the requests received."""

    def __init__(self, target_port: int) -> None:
        self.gate = threading.Event()
        self.requests = 0
        self._lock = threading.Lock()
        super().__init__(target_port)

    def handle(self, body: bytes, key: str) -> tuple[int, bytes] | None:
        with self._lock:
            self.requests += 1
        self.gate.wait(TIMEOUT)
        return self.forward(body, key)

    def close(self) -> None:
        self.gate.set()
        super().close()


@pytest.fixture
def live_direct() -> Iterator[LiveSnorkyServer]:
    delivery.stats.reset()
    with live_snorky_server(DIRECT_SEND="background") as live:
        yield live
    delivery.stats.reset()


@contextmanager
def gated(live: LiveSnorkyServer, **snorky: Any) -> Iterator[GatedProxy]:
    """Django posting through a :class:`GatedProxy` in front of the live server (and ``snorky``
    settings) for the block; what the block queued is sent before it ends."""
    proxy = GatedProxy(live.handle.backend_port)
    try:
        with override_settings(SNORKY={**settings.SNORKY, "BACKEND_URL": proxy.url, **snorky}):
            yield proxy
            proxy.gate.set()
            assert delivery.flush(TIMEOUT)
    finally:
        proxy.close()


def watch_tasks(live: LiveSnorkyServer, user: Any, ws_factory: Any) -> Any:
    _, token = subscribe(client_for(user), "/api/tasks/")
    ws = ws_factory(live.ws_url, user=user)
    ws.acquire(token)
    return ws


def task_delta(ws: Any, owner: Any) -> dict[str, Any]:
    """The delta of a new task as the watching ``ws`` received it: a template for hand-made ones."""
    Task.objects.create(title="model", owner=owner)
    return ws.delta()


def titled(delta: dict[str, Any], title: Any) -> dict[str, Any]:
    return {**delta, "data": {**delta["data"], "title": title}}


@contextmanager
def recorded_failures() -> Iterator[list[tuple[str, list[Any]]]]:
    """The ``delivery_failed`` signals of the block: the thread each came on, and its deltas."""
    failures: list[tuple[str, list[Any]]] = []

    def receiver(deltas: list[Any], error: Exception, **kwargs: Any) -> None:
        failures.append((threading.current_thread().name, deltas))

    delivery.delivery_failed.connect(receiver, weak=False, dispatch_uid="test-direct-sender")
    try:
        yield failures
    finally:
        delivery.delivery_failed.disconnect(dispatch_uid="test-direct-sender")


def test_a_save_does_not_wait_and_transactions_arrive_in_commit_order(live_direct, ws_factory, alice):
    ws = watch_tasks(live_direct, alice, ws_factory)
    with gated(live_direct) as proxy:
        task = Task.objects.create(title="0", owner=alice)
        for i in range(1, 21):
            with transaction.atomic():
                task.title = str(i)
                task.save()
        # Every save returned while the server held the first request.
        wait_until(lambda: proxy.requests == 1, message="the first request reaching the stalled server")
        assert not delivery.flush(0.2)
        assert delivery._sender.pending == 21
        proxy.gate.set()
        deltas = ws.deltas(21)
        assert deltas[0]["type"] == "insert"
        assert [d["newData"]["title"] for d in deltas[1:]] == [str(i) for i in range(1, 21)]
        assert delivery.flush(TIMEOUT)
    # What piled up behind the first request went in at most one more request, in order.
    assert proxy.requests <= 2
    assert delivery.stats.published == 21 and delivery.stats.failed == 0
    ws.assert_silent()


def test_commits_in_quick_succession_share_a_request_and_an_isolated_one_goes_at_once(live_direct, ws_factory, alice):
    ws = watch_tasks(live_direct, alice, ws_factory)
    # The proxy's URL gets a sender of its own, which has sent nothing yet. A linger longer than
    # every wait of this test: a commit that waited for it would fail it.
    with gated(live_direct, DIRECT_LINGER=3 * TIMEOUT) as proxy:
        proxy.gate.set()
        task = Task.objects.create(title="0", owner=alice)
        assert ws.deltas(1)[0]["data"]["title"] == "0"  # isolated: sent at once
        for i in range(1, 11):
            with transaction.atomic():
                task.title = str(i)
                task.save()
        # These follow a request closely: the sender holds them for company, and flush() sends
        # them at once, together.
        assert delivery.flush(TIMEOUT)
        assert [d["newData"]["title"] for d in ws.deltas(10)] == [str(i) for i in range(1, 11)]
        assert proxy.requests == 2
    ws.assert_silent()


def test_a_full_queue_holds_the_writer_back_and_loses_nothing(live_direct, ws_factory, alice):
    ws = watch_tasks(live_direct, alice, ws_factory)
    with gated(live_direct, DIRECT_QUEUE_SIZE=3, BACKEND_TIMEOUT=TIMEOUT) as proxy:
        Task.objects.create(title="in flight", owner=alice)
        wait_until(lambda: proxy.requests == 1, message="the first request reaching the stalled server")
        for i in range(3):
            Task.objects.create(title=f"queued {i}", owner=alice)
        # The queue is full: the next writer waits for room.
        done = threading.Event()

        def write() -> None:
            try:
                Task.objects.create(title="waited", owner=alice)
                done.set()
            finally:
                connections.close_all()  # this thread's own connection

        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.5), "the writer went on although the queue was full"
        proxy.gate.set()
        assert done.wait(TIMEOUT)
        writer.join(TIMEOUT)
        titles = [d["data"]["title"] for d in ws.deltas(5)]
        assert titles == ["in flight", "queued 0", "queued 1", "queued 2", "waited"]
        assert delivery.flush(TIMEOUT)
    assert delivery.stats.queue_full == 0 and delivery.stats.failed == 0


def test_what_waits_longer_than_backend_timeout_for_room_is_dropped_and_signalled(live_direct, alice, caplog):
    # A delivery_failed receiver runs on the sender thread: one that blocks stalls the sender, and
    # the queue fills. A writer then waits BACKEND_TIMEOUT for room, and its deltas are dropped,
    # counted and signalled from its own thread; the request itself goes on.
    release = threading.Event()
    failures: list[tuple[str, Any]] = []

    def receiver(deltas: list[Any], error: Exception, **kwargs: Any) -> None:
        failures.append((threading.current_thread().name, error))
        if threading.current_thread().name == "snorky-direct-sender":
            release.wait(TIMEOUT)

    unreachable = f"http://127.0.0.1:{free_port()}/backend"
    config = {**settings.SNORKY, "BACKEND_URL": unreachable, "DIRECT_QUEUE_SIZE": 2, "BACKEND_TIMEOUT": 0.3}
    delivery.delivery_failed.connect(receiver, weak=False, dispatch_uid="test-full")
    try:
        with override_settings(SNORKY=config):
            Task.objects.create(title="failed", owner=alice)
            wait_until(lambda: failures, message="the first failure")
            Task.objects.create(title="queued 0", owner=alice)
            Task.objects.create(title="queued 1", owner=alice)
            Task.objects.create(title="dropped", owner=alice)  # returns after 0.3 s
            assert delivery.stats.queue_full == 1
            name, error = failures[-1]
            assert name == threading.current_thread().name
            assert isinstance(error, delivery.DeliveryQueueFullError)
            assert "send queue stayed full" in caplog.text
            release.set()
            assert delivery.flush(TIMEOUT)
        assert delivery.stats.failed == 4 and delivery.stats.published == 0
        assert Task.objects.filter(title="dropped").exists()
    finally:
        release.set()
        delivery.delivery_failed.disconnect(dispatch_uid="test-full")


def test_a_stopped_server_costs_the_deltas_not_the_request(live_direct, ws_factory, alice, caplog):
    ws = watch_tasks(live_direct, alice, ws_factory)
    unreachable = {**settings.SNORKY, "BACKEND_URL": f"http://127.0.0.1:{free_port()}/backend"}
    with recorded_failures() as failures, override_settings(SNORKY=unreachable):
        for i in range(3):
            with transaction.atomic():
                Task.objects.create(title=f"lost {i}", owner=alice)
        assert delivery.flush(TIMEOUT)
    assert Task.objects.filter(title__startswith="lost").count() == 3
    assert delivery.stats.failed == 3 and delivery.stats.failed_requests >= 1
    assert {name for name, _ in failures} == {"snorky-direct-sender"}
    assert [d["data"]["title"] for _, deltas in failures for d in deltas] == ["lost 0", "lost 1", "lost 2"]
    assert "could not publish" in caplog.text
    # The server back (the settings point at it again): the next change arrives.
    Task.objects.create(title="back", owner=alice)
    assert ws.delta()["data"]["title"] == "back"
    ws.assert_silent()


def test_a_pooled_connection_closed_while_idle_loses_nothing(live_direct, ws_factory, alice):
    # What a load balancer does when the node behind it dies: it closes its side of the sender's
    # idle keep-alive connection. The next batch must go on a new connection, not be written into
    # that one and lost.
    ws = watch_tasks(live_direct, alice, ws_factory)
    proxy = TcpProxy(live_direct.handle.backend_port)
    try:
        with override_settings(SNORKY={**settings.SNORKY, "BACKEND_URL": proxy.url}):
            for round_ in range(3):
                Task.objects.create(title=f"before {round_}", owner=alice)
                assert ws.delta()["data"]["title"] == f"before {round_}"
                assert delivery.flush(TIMEOUT)  # the answer is in: the connection is idle
                proxy.down()
                proxy.up()
                time.sleep(0.2)  # idle while the close arrives, as between two requests
                Task.objects.create(title=f"after {round_}", owner=alice)
                assert ws.delta()["data"]["title"] == f"after {round_}"
            assert delivery.flush(TIMEOUT)
        assert delivery.stats.failed == 0 and delivery.stats.published == 6
        ws.assert_silent()
    finally:
        proxy.down()


def test_a_refused_delta_in_a_batch_is_retried_alone_on_the_sender_thread(live_direct, ws_factory, alice, caplog):
    ws = watch_tasks(live_direct, alice, ws_factory)
    model = task_delta(ws, alice)
    with recorded_failures() as failures, gated(live_direct) as proxy:
        proxy.gate.set()
        with transaction.atomic():
            publish_deltas([titled(model, "before")])
            publish_deltas([{**model, "model": "NoSuchModel"}])
            publish_deltas([titled(model, "after")])
        assert delivery.flush(TIMEOUT)
        # One request for the transaction, refused whole; then one per delta.
        assert proxy.requests == 4
    assert [d["data"]["title"] for d in ws.deltas(2)] == ["before", "after"]
    assert delivery.stats.published == 3 and delivery.stats.failed == 1
    assert [(name, [d["model"] for d in deltas]) for name, deltas in failures] == [
        ("snorky-direct-sender", ["NoSuchModel"])
    ]
    assert "Unknown model" in caplog.text
    ws.assert_silent()


def test_deltas_that_are_not_json_fail_alone_and_the_commit_goes_on(live_direct, ws_factory, alice, caplog):
    ws = watch_tasks(live_direct, alice, ws_factory)
    model = task_delta(ws, alice)
    with recorded_failures() as failures, transaction.atomic():
        publish_deltas([titled(model, object())])
    assert delivery.stats.failed == 1 and failures[0][0] == threading.current_thread().name
    assert "cannot be sent as JSON" in caplog.text
    Task.objects.create(title="next", owner=alice)
    assert ws.delta()["data"]["title"] == "next"
    ws.assert_silent()


#: A Django process of its own (see :func:`run_django`): ``script`` runs with ``titled(title)`` (a
#: copy of the delta given, with that title), ``delivery`` and ``publish_deltas`` at hand.
DJANGO_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    import django
    from django.conf import settings

    url, key, delta = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "snorky_django"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        SECRET_KEY="x" * 50,
        SNORKY={"API_KEY": key, "BACKEND_URL": url, "AUTODISCOVER": False},
    )
    django.setup()
    from snorky_django import delivery, publish_deltas

    def titled(title):
        return {**delta, "data": {**delta["data"], "title": title}}
    """
)

EXITING = """
for i in range(3):
    publish_deltas([titled(f"at exit {i}")])
assert delivery._sender.pending, "sent before the exit: the test proves nothing"
sys.exit(0)
"""

FORKING = """
publish_deltas([titled("parent")])
assert delivery._sender.pending, "sent before the fork: the test proves nothing"
child = os.fork()
if child == 0:
    publish_deltas([titled("child")])
    os._exit(0 if delivery.flush(10) and delivery.stats.published == 1 else 1)
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child did not deliver its delta"
"""


def run_django(script: str, live: LiveSnorkyServer, delta: dict[str, Any]) -> None:
    """Runs ``script`` in a Django process posting through a server that stalls its first half
    second (the process gets there with its deltas still queued); asserts that it succeeded."""
    proxy = GatedProxy(live.handle.backend_port)
    try:
        threading.Timer(0.5, proxy.gate.set).start()
        python_path = os.pathsep.join([str(Path(delivery.__file__).parents[1]), *sys.path])
        result = subprocess.run(
            [sys.executable, "-c", DJANGO_PROCESS + script, proxy.url, live.api_key, json.dumps(delta)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
            env={**os.environ, "PYTHONPATH": python_path},
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        proxy.close()


def test_what_is_queued_at_exit_is_sent_before_the_process_ends(live_direct, ws_factory, alice):
    ws = watch_tasks(live_direct, alice, ws_factory)
    run_django(EXITING, live_direct, task_delta(ws, alice))
    assert [d["data"]["title"] for d in ws.deltas(3)] == [f"at exit {i}" for i in range(3)]
    ws.assert_silent()


def test_a_forked_child_sends_its_own_deltas_and_not_its_parents(live_direct, ws_factory, alice):
    ws = watch_tasks(live_direct, alice, ws_factory)
    # The parent forks while its delta is still queued or in flight.
    run_django(FORKING, live_direct, task_delta(ws, alice))
    assert sorted(d["data"]["title"] for d in ws.deltas(2)) == ["child", "parent"]
    ws.assert_silent()


def test_inline_sending_is_still_there(live_direct, ws_factory, alice):
    ws = watch_tasks(live_direct, alice, ws_factory)
    with gated(live_direct, DIRECT_SEND="inline") as proxy:
        threading.Timer(0.3, proxy.gate.set).start()
        Task.objects.create(title="inline", owner=alice)
        # The save returned after the server answered: nothing is left to send.
        assert proxy.requests == 1 and delivery._sender.pending == 0
        assert ws.delta()["data"]["title"] == "inline"
