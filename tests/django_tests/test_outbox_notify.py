"""On PostgreSQL the outbox wakes the relay on commit: the transaction writing outbox rows notifies,
and the relay, listening, relays at once rather than at its next poll.
Polling stays the fallback: for a notification lost while nobody listened, and for SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction

from django_tests.conftest import TIMEOUT, client_for, subscribe, wait_until
from django_tests.testapp.models import Task
from snorky_django import outbox_writes
from snorky_django.models import OutboxEntry
from snorky_django.relay import OutboxRelay
from snorky_django.serialization import serialize
from snorky_django.testing import LiveSnorkyServer, live_snorky_server

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="LISTEN/NOTIFY is PostgreSQL's"),
]

#: Longer than any test waits: a delta that arrives was not found by a poll.
NEVER = 600.0


@pytest.fixture
def outbox() -> Iterator[LiveSnorkyServer]:
    with live_snorky_server(DELIVERY="outbox", relay=False) as live:
        yield live


def watcher(live: LiveSnorkyServer, user: Any, ws_factory: Any) -> Any:
    _, token = subscribe(client_for(user), "/api/tasks/")
    ws = ws_factory(live.ws_url, user=user)
    ws.acquire(token)
    return ws


def started(relay: OutboxRelay) -> OutboxRelay:
    relay.start()
    wait_until(lambda: relay.listening == {"default"}, message="the relay listening")
    return relay


def test_a_commit_wakes_the_relay_at_once(outbox, ws_factory, alice):
    ws = watcher(outbox, alice, ws_factory)
    relay = started(OutboxRelay(outbox.backend(), poll_interval=NEVER))
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            Task.objects.create(title="rolled back", owner=alice)
            raise RuntimeError
        for i in range(3):
            with transaction.atomic():
                Task.objects.create(title=f"task {i}", owner=alice)
                Task.objects.create(title=f"task {i} bis", owner=alice)
            assert [d["data"]["title"] for d in ws.deltas(2, TIMEOUT)] == [f"task {i}", f"task {i} bis"]
        ws.assert_silent()
        wait_until(lambda: not OutboxEntry.objects.exists(), message="an empty outbox")
    finally:
        assert relay.stop(5.0)


def test_a_lost_notification_is_found_by_polling(outbox, ws_factory, alice):
    ws = watcher(outbox, alice, ws_factory)
    relay = started(OutboxRelay(outbox.backend(), poll_interval=0.1))
    try:
        # A row inserted by hand sends no notification (only Snorky's writes do).
        task = Task(pk=424242, title="unannounced", owner=alice)
        OutboxEntry.objects.create(delta={"type": "insert", "model": "Task", "data": serialize(task)})
        assert ws.delta()["data"]["title"] == "unannounced"
    finally:
        assert relay.stop(5.0)


def test_every_way_of_writing_rows_wakes_the_relay(outbox, ws_factory, alice, monkeypatch):
    # The rows written at once, inside the transaction (past the rows a transaction holds for its
    # commit), and those sent with the COMMIT.
    ws = watcher(outbox, alice, ws_factory)
    relay = started(OutboxRelay(outbox.backend(), poll_interval=NEVER))
    monkeypatch.setattr(outbox_writes, "DEFERRED_ROWS", 2)
    try:
        with transaction.atomic():
            for i in range(3):
                Task.objects.create(title=f"early {i}", owner=alice)
        assert [d["data"]["title"] for d in ws.deltas(3, TIMEOUT)] == ["early 0", "early 1", "early 2"]
        Task.objects.create(title="alone", owner=alice)
        assert ws.delta()["data"]["title"] == "alone"
    finally:
        assert relay.stop(5.0)


def test_the_listener_comes_back_after_its_connection_is_cut(outbox, ws_factory, alice):
    ws = watcher(outbox, alice, ws_factory)
    relay = started(OutboxRelay(outbox.backend(), poll_interval=NEVER, max_retry_delay=0.2))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query = 'LISTEN snorky_outbox' AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone() == (True,)
        wait_until(lambda: relay.listening == frozenset(), message="the listener noticing the cut")
        # Committed while nobody listens: its notification is lost, the reconnection's pass finds it.
        Task.objects.create(title="while cut", owner=alice)
        wait_until(lambda: relay.listening == {"default"}, message="the relay listening again")
        assert ws.delta()["data"]["title"] == "while cut"
        Task.objects.create(title="after", owner=alice)
        assert ws.delta()["data"]["title"] == "after"
    finally:
        assert relay.stop(5.0)
