"""DELIVERY = "outbox": deltas are rows written with the change, relayed in order, deleted only
once the server accepted them; a server or relay that goes away loses nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_tests.conftest import FaultyBackendProxy, TcpProxy, client_for, subscribe, wait_until
from django_tests.testapp.models import Label, Note, Task
from snorky.backend import SnorkyBackend
from snorky_django import outbox_writes, publish_deltas
from snorky_django.models import OutboxEntry
from snorky_django.relay import OutboxRelay
from snorky_django.testing import LiveSnorkyServer, live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def outbox_mode(settings):
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "outbox"}


def test_outbox_rows_commit_and_roll_back_with_the_change(outbox_mode, alice):
    OutboxEntry.objects.all().delete()  # alice's creation is not subscribable; nothing there
    with transaction.atomic():
        task = Task.objects.create(title="kept", owner=alice)
        with pytest.raises(ValueError), transaction.atomic():
            Task.objects.create(title="undone", owner=alice)
            raise ValueError
    with pytest.raises(ValueError), transaction.atomic():
        Task.objects.create(title="rolled back", owner=alice)
        raise ValueError
    task.title = "kept, renamed"
    task.save()
    deltas = list(OutboxEntry.objects.values_list("delta", flat=True))
    assert [(d["type"], (d.get("data") or d["newData"])["title"]) for d in deltas] == [
        ("insert", "kept"),
        ("update", "kept, renamed"),
    ]


postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL only")


def _titles() -> list[tuple[str, str]]:
    deltas = OutboxEntry.objects.order_by("id").values_list("delta", flat=True)
    return [(d["type"], (d.get("data") or d["newData"])["title"]) for d in deltas]


#: A title whose JSON, bound as text, needs quoting and escaping.
ODD_TITLE = "it's é \" \\ \n ;"


def _insert_and_update_in_one_transaction(owner: Any) -> list[str]:
    """Creates then renames a task in one transaction; checks the outbox rows it left (their
    deltas, and their time: the database's, within the transaction) and returns the statements
    that wrote them."""
    OutboxEntry.objects.all().delete()
    before = timezone.now()
    with CaptureQueriesContext(connections["default"]) as queries, transaction.atomic():
        task = Task.objects.create(title=ODD_TITLE, owner=owner)
        task.title = "b"
        task.save()
    after = timezone.now()
    assert _titles() == [("insert", ODD_TITLE), ("update", "b")]
    for created in OutboxEntry.objects.values_list("created", flat=True):
        assert before <= created <= after
    return [query["sql"] for query in queries.captured_queries if "snorky_django_outboxentry" in query["sql"]]


def test_a_float_that_is_not_finite_is_stored_as_null(outbox_mode, alice, monkeypatch):
    """JSON has no NaN or infinity: the save goes through, the delta carries null."""
    task = Task.objects.create(title="t", owner=alice)
    monkeypatch.setattr(
        Note, "jsonify", lambda self: {"id": self.pk, "nan": float("nan"), "more": [float("-inf"), 1.5]}
    )
    OutboxEntry.objects.all().delete()
    with transaction.atomic():
        note = Note.objects.create(task=task, text="n")
    [delta] = OutboxEntry.objects.values_list("delta", flat=True)
    assert delta["data"] == {"id": note.pk, "nan": None, "more": [None, 1.5]}
    if connection.vendor == "postgresql":
        with pytest.raises(ValueError), transaction.atomic():  # a hand-made one: at once, not at COMMIT
            publish_deltas([{"type": "insert", "model": "Note", "data": {"id": 0, "nan": float("nan")}}])


@postgres_only
def test_a_transactions_rows_leave_with_its_commit_in_one_message(outbox_mode, alice):
    outbox = _insert_and_update_in_one_transaction(alice)
    # No statement (and no round trip) of its own: the rows ride with the COMMIT.
    assert len(outbox) == 1 and outbox[0].startswith("INSERT") and outbox[0].endswith("; COMMIT")


@postgres_only
def test_with_server_side_binding_each_change_writes_its_rows_at_once(outbox_mode, alice):
    """psycopg's server-side binding cannot send several statements in one message: the rows are
    inserted with each change instead (their JSON bound as a parameter) and reach the outbox
    alike."""
    previous = connections["default"]
    settings_dict = copy.deepcopy(previous.settings_dict)
    settings_dict["OPTIONS"] = {**settings_dict.get("OPTIONS", {}), "server_side_binding": True}
    binding = type(previous)(settings_dict, alias="default")
    connections["default"] = binding
    try:
        outbox = _insert_and_update_in_one_transaction(alice)
    finally:
        connections["default"] = previous
        binding.close()
    assert len(outbox) == 2 and not any(sql.endswith("COMMIT") for sql in outbox)


@postgres_only
def test_a_commit_that_fails_writes_no_row_and_says_why(outbox_mode, alice):
    OutboxEntry.objects.all().delete()
    # Foreign keys are checked at COMMIT on PostgreSQL (DEFERRABLE INITIALLY DEFERRED).
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.create(title="orphan", owner_id=alice.pk + 1000)
    assert not OutboxEntry.objects.exists() and not Task.objects.exists()
    Task.objects.create(title="after", owner=alice)  # the connection is fine
    assert _titles() == [("insert", "after")]


@postgres_only
def test_a_large_transaction_leaves_whole_with_its_commit(outbox_mode, alice):
    OutboxEntry.objects.all().delete()
    with transaction.atomic():
        Task.objects.bulk_create([Task(title=str(i), owner=alice) for i in range(1000)])
        with pytest.raises(ValueError), transaction.atomic():
            Task.objects.create(title="undone", owner=alice)
            raise ValueError
        Task.objects.create(title="last", owner=alice)
    assert _titles() == [("insert", str(i)) for i in range(1000)] + [("insert", "last")]


@postgres_only
def test_a_long_transaction_writes_its_rows_before_the_commit_in_order(outbox_mode, alice, monkeypatch):
    monkeypatch.setattr(outbox_writes, "DEFERRED_ROWS", 3)
    OutboxEntry.objects.all().delete()
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        for title in "abcde":
            Task.objects.create(title=title, owner=alice)
    outbox = [query["sql"] for query in queries.captured_queries if "snorky_django_outboxentry" in query["sql"]]
    # The first three waited; the fourth wrote them and itself at once; the fifth left with COMMIT.
    assert len(outbox) == 2 and not outbox[0].endswith("COMMIT") and outbox[1].endswith("; COMMIT")
    assert _titles() == [("insert", title) for title in "abcde"]


@postgres_only
def test_rows_waiting_from_before_a_savepoint_are_not_written_inside_it(outbox_mode, alice, monkeypatch):
    monkeypatch.setattr(outbox_writes, "DEFERRED_ROWS", 3)
    OutboxEntry.objects.all().delete()
    with transaction.atomic():
        Task.objects.create(title="a", owner=alice)
        Task.objects.create(title="b", owner=alice)
        with pytest.raises(ValueError), transaction.atomic():
            Task.objects.create(title="undone 1", owner=alice)
            Task.objects.create(title="undone 2", owner=alice)  # past the limit, inside the savepoint
            raise ValueError
        Task.objects.create(title="c", owner=alice)
    # Written inside the savepoint, "a" and "b" would have been rolled back with it and lost.
    assert _titles() == [("insert", "a"), ("insert", "b"), ("insert", "c")]


@pytest.mark.django_db(transaction=False)
def test_rows_of_a_test_transaction_are_written_when_its_callbacks_run(
    outbox_mode, alice, django_capture_on_commit_callbacks
):
    # A TestCase-style test never commits; running its on_commit callbacks writes the rows.
    with django_capture_on_commit_callbacks(execute=True):
        Task.objects.create(title="in a test", owner=alice)
    assert _titles() == [("insert", "in a test")]


def test_relay_delivers_every_delta_in_order(live_outbox, ws_factory, alice):
    _, token = subscribe(client_for(alice), "/api/tasks/")
    ws = ws_factory(live_outbox.ws_url, user=alice)
    ws.acquire(token)
    task = Task.objects.create(title="0", owner=alice)
    for i in range(1, 20):
        with transaction.atomic():
            task.title = str(i)
            task.save()
    deltas = ws.deltas(20)
    assert deltas[0]["type"] == "insert"
    assert [d["newData"]["title"] for d in deltas[1:]] == [str(i) for i in range(1, 20)]
    wait_until(lambda: not OutboxEntry.objects.exists(), message="an empty outbox")


def relay_through(url: str, live: LiveSnorkyServer, timeout: float) -> OutboxRelay:
    """A relay posting to ``url`` (a proxy in front of ``live``), retrying quickly."""
    return OutboxRelay(SnorkyBackend(url, live.api_key, timeout=timeout), poll_interval=0.02, max_retry_delay=0.1)


def watch_tasks(live: LiveSnorkyServer, user: Any, ws_factory: Any) -> Any:
    """A WebSocket client holding ``user``'s task list subscription."""
    _, token = subscribe(client_for(user), "/api/tasks/")
    ws = ws_factory(live.ws_url, user=user)
    ws.acquire(token)
    return ws


def test_server_unreachable_while_changes_commit_then_back(ws_factory, alice):
    with live_snorky_server(DELIVERY="outbox", relay=False) as live:
        proxy = TcpProxy(live.handle.backend_port)
        relay = relay_through(proxy.url, live, timeout=2.0)
        ws = watch_tasks(live, alice, ws_factory)
        relay.start()
        try:
            Task.objects.create(title="before", owner=alice)
            assert ws.delta()["data"]["title"] == "before"
            # The relay deletes a batch only once the server's answer is back: wait for that, or
            # cutting the proxy could catch the answer in flight (and the entry be sent again).
            wait_until(lambda: not OutboxEntry.objects.exists(), message="the first entry relayed")

            proxy.down()
            for i in range(5):
                with transaction.atomic():
                    Task.objects.create(title=f"during {i}", owner=alice)
            ws.assert_silent(0.3)
            assert OutboxEntry.objects.count() == 5  # kept while the server is away

            proxy.up()
            assert [d["data"]["title"] for d in ws.deltas(5)] == [f"during {i}" for i in range(5)]
            wait_until(lambda: not OutboxEntry.objects.exists(), message="an empty outbox")
        finally:
            assert relay.stop(5.0)
            proxy.down()


def test_a_refused_entry_is_kept_aside_and_the_rest_delivered(live_outbox, ws_factory, alice, caplog):
    caplog.set_level("DEBUG", "snorky_django.relay")  # what manage.py snorky -v 2 logs
    _, token = subscribe(client_for(alice), "/api/tasks/")
    ws = ws_factory(live_outbox.ws_url, user=alice)
    ws.acquire(token)
    live_outbox.relay.stop()
    with transaction.atomic():
        Task.objects.create(title="one", owner=alice)
        publish_deltas([{"type": "insert", "model": "Ghost", "data": {}}])
        Task.objects.create(title="two", owner=alice)
    assert live_outbox.relay.drain() == 2
    assert [d["data"]["title"] for d in ws.deltas(2)] == ["one", "two"]
    refused = OutboxEntry.objects.get()
    assert refused.delta["model"] == "Ghost" and refused.error
    assert "Snorky refused outbox entry" in caplog.text
    assert "2 delta(s) of 'default' accepted, 1 refused (batch " in caplog.text


def test_outbox_mode_never_calls_the_server_from_the_request(outbox_mode, alice):
    # The backend URL points nowhere: in outbox mode a save does not notice.
    label = Label.objects.create(name="quiet")
    assert OutboxEntry.objects.get().delta["data"]["id"] == str(label.pk)


def test_a_server_failing_for_a_while_delays_deltas_and_loses_none(ws_factory, alice):
    # "Internal error" (a service that failed), HTTP 500 and 503, a timeout: none of them says the
    # deltas are wrong, so the relay keeps them and retries until the server accepts them.
    with live_snorky_server(DELIVERY="outbox", relay=False) as live:
        proxy = FaultyBackendProxy(live.handle.backend_port)
        relay = relay_through(proxy.url, live, timeout=0.5)
        ws = watch_tasks(live, alice, ws_factory)
        # As many "Internal error"s as there are deltas and one more: enough to fail the batch and
        # each delta sent on its own, as a relay taking them for refusals would.
        faults = ["Internal error"] * 4 + [500, 503, "timeout", "Internal error"]
        proxy.fail(*faults)
        with transaction.atomic():
            for i in range(3):
                Task.objects.create(title=f"during {i}", owner=alice)
        relay.start()
        try:
            assert [d["data"]["title"] for d in ws.deltas(3)] == [f"during {i}" for i in range(3)]
            wait_until(lambda: not OutboxEntry.objects.exists(), message="an empty outbox")
            assert proxy.requests >= len(faults) + 1 and not proxy.faults
            ws.assert_silent()  # each delta once
        finally:
            assert relay.stop(5.0)
            proxy.close()


def test_only_a_validation_refusal_sets_an_entry_aside(live_outbox, ws_factory, alice):
    # The server's own texts for an invalid delta stop its retries; the valid deltas around it
    # are delivered, in order.
    _, token = subscribe(client_for(alice), "/api/tasks/")
    ws = ws_factory(live_outbox.ws_url, user=alice)
    ws.acquire(token)
    live_outbox.relay.stop()
    invalid = [
        {"type": "insert", "model": "Task"},  # Missing field
        {"type": "upsert", "model": "Task", "data": {}},  # Invalid delta type
        {"type": "insert", "model": 7, "data": {}},  # model must be string
        {"type": "insert", "model": "Ghost", "data": {}},  # Unknown model
        "not a delta",  # Invalid params
    ]
    with transaction.atomic():
        Task.objects.create(title="one", owner=alice)
        publish_deltas(invalid)  # type: ignore[list-item]
        Task.objects.create(title="two", owner=alice)
    assert live_outbox.relay.drain() == 2
    assert [d["data"]["title"] for d in ws.deltas(2)] == ["one", "two"]
    errors = list(OutboxEntry.objects.order_by("id").values_list("error", flat=True))
    assert errors == ["Missing field", "Invalid delta type", "model must be string", "Unknown model", "Invalid params"]


@postgres_only
def test_a_postgres_pass_is_two_statements(ws_factory, alice):
    # The claim (UPDATE ... RETURNING, committed by itself) and the deletion: no transaction around
    # the request, no row lock held during it. The relay's advisory lock is taken once.
    with live_snorky_server(DELIVERY="outbox", relay=False) as live:
        ws = watch_tasks(live, alice, ws_factory)
        relay = OutboxRelay(live.backend())
        try:
            Task.objects.create(title="first", owner=alice)
            assert relay._relay_exclusive("default", live.backend()) == 1  # takes the lock
            for i in range(3):
                Task.objects.create(title=f"next {i}", owner=alice)
                with CaptureQueriesContext(connection) as queries:
                    assert relay._relay_exclusive("default", live.backend()) == 1
                statements = [query["sql"].split()[0] for query in queries.captured_queries]
                assert statements == ["WITH", "DELETE"], queries.captured_queries
            assert [d["data"]["title"] for d in ws.deltas(4)] == ["first", "next 0", "next 1", "next 2"]
        finally:
            relay._release("default")


@postgres_only
def test_one_relay_works_at_a_time_and_another_takes_over(ws_factory, alice):
    # Several relays on one database (every node of a cluster runs one): the one holding the
    # advisory lock relays, in order; the others stand by and take over when it stops.
    with live_snorky_server(DELIVERY="outbox", relay=False) as live:
        ws = watch_tasks(live, alice, ws_factory)
        relays = [OutboxRelay(live.backend(), poll_interval=0.02, max_retry_delay=0.1) for _ in range(3)]
        for relay in relays:
            relay.start()
        try:
            for i in range(30):
                with transaction.atomic():
                    Task.objects.create(title=f"a{i}", owner=alice)
            assert [d["data"]["title"] for d in ws.deltas(30)] == [f"a{i}" for i in range(30)]
            # A relay counts a batch once its deletion committed: the outbox may be empty a moment
            # before the count says so.
            wait_until(
                lambda: not OutboxEntry.objects.exists() and sum(relay.relayed for relay in relays) >= 30,
                message="an empty outbox and 30 deltas counted",
            )
            active = [relay for relay in relays if relay.relayed]
            assert len(active) == 1 and active[0].relayed == 30
            assert active[0].stop(5.0)
            for i in range(30):
                with transaction.atomic():
                    Task.objects.create(title=f"b{i}", owner=alice)
            assert [d["data"]["title"] for d in ws.deltas(30)] == [f"b{i}" for i in range(30)]
            wait_until(
                lambda: not OutboxEntry.objects.exists() and sum(relay.relayed for relay in relays) >= 60,
                message="an empty outbox and 60 deltas counted",
            )
            ws.assert_silent()
            assert sum(relay.relayed for relay in relays) == 60
        finally:
            for relay in relays:
                assert relay.stop(5.0)


def test_a_batch_left_claimed_goes_first_under_its_key(live_outbox, ws_factory, alice):
    # What a relay that died after the server's answer leaves: entries claimed under a key the
    # server has seen. The next pass sends them again first, with that key: the server drops the
    # repeat, and the newer entries follow, each delivered once.
    ws = watch_tasks(live_outbox, alice, ws_factory)
    live_outbox.relay.stop()
    for i in range(3):
        Task.objects.create(title=f"old {i}", owner=alice)
    OutboxEntry.objects.update(batch="snorky-outbox:default:test:claimed")
    old = list(OutboxEntry.objects.order_by("id").values_list("delta", flat=True))
    live_outbox.backend().publish_deltas(old, key="snorky-outbox:default:test:claimed")
    assert [d["data"]["title"] for d in ws.deltas(3)] == [f"old {i}" for i in range(3)]
    Task.objects.create(title="new", owner=alice)
    assert live_outbox.relay.drain() == 4
    assert [d["data"]["title"] for d in ws.deltas(1)] == ["new"]
    ws.assert_silent()
    assert not OutboxEntry.objects.exists()
