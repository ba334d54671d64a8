"""DELIVERY = "logical": the saving thread does nothing; the relay reads committed rows from a
PostgreSQL logical replication slot, renders them, and publishes them in commit order, once."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from pgcluster import PostgresCluster

from django_tests.conftest import TIMEOUT, client_for, subscribe, wait_until
from django_tests.test_command import SnorkyProcess
from django_tests.testapp.models import Label, Note, Task, Team
from snorky_django import logical, logical_setup, pgoutput, publish_deltas
from snorky_django.logical import LogicalRelay, Position
from snorky_django.models import LogicalClaim
from snorky_django.testing import LiveSnorkyServer, live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)

postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="logical decoding is PostgreSQL's")


def drop_slot() -> None:
    """Drops the test's replication slot (a database with a slot cannot be dropped at the end)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            [logical_setup.slot_name("default")],
        )


@pytest.fixture
def live() -> Iterator[LiveSnorkyServer]:
    """A live server whose own relay reads the slot (set up before the test changes anything)."""
    try:
        with live_snorky_server(DELIVERY="logical") as server:
            yield server
    finally:
        drop_slot()


@pytest.fixture
def slot(settings: Any) -> Iterator[None]:
    """Logical delivery set up, with no relay running: the test runs its own."""
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "logical"}
    logical_setup.prepare("default")
    try:
        yield
    finally:
        drop_slot()


def watcher(live: LiveSnorkyServer, user: Any, ws_factory: Any) -> Any:
    _, token = subscribe(client_for(user), "/api/tasks/")
    ws = ws_factory(live.ws_url, user=user)
    ws.acquire(token)
    return ws


def title(delta: dict[str, Any]) -> tuple[str, str]:
    return delta["type"], (delta.get("data") or delta["newData"])["title"]


@postgres_only
def test_a_save_runs_the_queries_of_a_plain_model_and_nothing_else(slot, alice):
    with CaptureQueriesContext(connection) as plain, transaction.atomic():
        team = Team.objects.create(slug="t", name="T")
        team.name = "T2"
        team.save()
        team.delete()
    with CaptureQueriesContext(connection) as subscribable, transaction.atomic():
        task = Task.objects.create(title="a", owner=alice)
        task.title = "b"
        task.save()
        Task.objects.filter(pk=task.pk).update(done=True)
    assert statements(subscribable) == ["INSERT", "UPDATE", "UPDATE"]
    assert statements(plain)[:2] == ["INSERT", "UPDATE"]


def statements(captured: CaptureQueriesContext) -> list[str]:
    """The kinds of the statements run, but those of the transaction itself."""
    kinds = [query["sql"].split()[0] for query in captured.captured_queries]
    return [kind for kind in kinds if kind not in ("BEGIN", "COMMIT")]


@postgres_only
def test_every_committed_change_reaches_the_browser_in_commit_order(live, ws_factory, alice):
    ws = watcher(live, alice, ws_factory)
    task = Task.objects.create(title="created", owner=alice)
    with transaction.atomic():
        task.title = "saved"
        task.save()
        Task.objects.filter(pk=task.pk).update(title="queryset update")
    with pytest.raises(RuntimeError), transaction.atomic():
        Task.objects.create(title="rolled back", owner=alice)
        raise RuntimeError
    with connection.cursor() as cursor:
        cursor.execute("UPDATE testapp_task SET title = %s WHERE id = %s", ["raw SQL", task.pk])
    Task.objects.bulk_create([Task(title=f"bulk {i}", owner=alice) for i in range(2)])
    task.delete()
    assert [title(d) for d in ws.deltas(7)] == [
        ("insert", "created"),
        ("update", "saved"),
        ("update", "queryset update"),
        ("update", "raw SQL"),
        ("insert", "bulk 0"),
        ("insert", "bulk 1"),
        ("delete", "raw SQL"),
    ]
    ws.assert_silent()


@postgres_only
def test_each_batch_is_logged_at_debug_level(slot, live_plain, ws_factory, alice, caplog):
    caplog.set_level("DEBUG", "snorky_django.logical")  # what manage.py snorky -v 2 logs
    ws = watcher(live_plain, alice, ws_factory)
    Task.objects.create(title="logged", owner=alice)
    assert LogicalRelay(live_plain.backend()).drain() == 1
    assert title(ws.delta()) == ("insert", "logged")
    assert "1 delta(s) of 'default' accepted, 0 refused (batch snorky-logical:default:" in caplog.text


@postgres_only
def test_an_update_carries_the_old_row_and_a_no_op_update_publishes_nothing(live, ws_factory, alice, bob):
    ws = watcher(live, alice, ws_factory)
    task = Task.objects.create(title="mine", owner=alice, priority=1)
    assert ws.delta()["type"] == "insert"
    Task.objects.filter(pk=task.pk).update(priority=1)  # a row written again, unchanged
    Task.objects.filter(pk=task.pk).update(priority=2)
    delta = ws.delta()
    assert (delta["oldData"]["priority"], delta["newData"]["priority"]) == (1, 2)
    # Given to bob: alice's subscription sees it leave (the dealer needs the old row for that).
    Task.objects.filter(pk=task.pk).update(owner=bob)
    assert ws.delta()["type"] == "delete"
    ws.assert_silent()


@postgres_only
def test_values_come_back_as_django_reads_them(live, ws_factory, alice):
    import datetime
    import decimal

    ws = watcher(live, alice, ws_factory)
    Task.objects.create(
        title="typed",
        owner=alice,
        estimate=decimal.Decimal("12.50"),
        due=datetime.date(2026, 12, 31),
        created=datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC),
    )
    data = ws.delta()["data"]
    assert (data["estimate"], data["due"], data["created"]) == ("12.50", "2026-12-31", "2026-01-02T03:04:05.678000Z")
    assert data["owner"] == alice.pk and data["labels"] == []


@postgres_only
def test_many_to_many_changes_and_published_deltas_keep_their_place(live, ws_factory, alice):
    ws = watcher(live, alice, ws_factory)
    label = Label.objects.create(name="urgent")
    with transaction.atomic():
        task = Task.objects.create(title="first", owner=alice)
        task.labels.add(label)
        publish_deltas([{"type": "insert", "model": "Task", "data": {"id": 0, "title": "by hand", "owner": alice.pk}}])
        Task.objects.create(title="last", owner=alice)
    deltas = ws.deltas(4)
    assert [title(d) for d in deltas] == [
        ("insert", "first"),
        ("update", "first"),
        ("insert", "by hand"),
        ("insert", "last"),
    ]
    assert (deltas[1]["oldData"]["labels"], deltas[1]["newData"]["labels"]) == ([], [str(label.pk)])


@postgres_only
def test_an_unchanged_large_value_is_taken_from_the_old_row(live, ws_factory, alice):
    # PostgreSQL leaves a TOASTed value the update did not change out of the new row.
    from snorky_django.serialization import serialize

    task = Task.objects.create(title="t", owner=alice)
    token = live.backend().authorize_subscription([{"dealer": "Note", "query": None}])
    ws = ws_factory(live.ws_url)
    ws.acquire(token)
    text = secrets.token_hex(20_000)  # incompressible: stored out of line
    note = Note.objects.create(task=task, text=text)
    assert ws.delta()["data"]["text"] == text
    Note.objects.filter(pk=note.pk).update(written=note.written.replace(year=2020))
    delta = ws.delta()
    assert delta["newData"]["text"] == delta["oldData"]["text"] == text
    assert delta["newData"] == serialize(Note.objects.get(pk=note.pk))


@postgres_only
def test_a_transaction_larger_than_a_batch_is_sent_in_several_in_order(slot, live_plain, ws_factory, alice):
    ws = watcher(live_plain, alice, ws_factory)
    with transaction.atomic():
        Task.objects.bulk_create([Task(title=f"t{i}", owner=alice) for i in range(10)])
    relay = LogicalRelay(live_plain.backend(), batch_size=3)
    assert relay.drain() == 10
    assert [d["data"]["title"] for d in ws.deltas(10)] == [f"t{i}" for i in range(10)]
    assert relay.drain() == 0
    ws.assert_silent()


@pytest.fixture
def live_plain() -> Iterator[LiveSnorkyServer]:
    """A live server running no relay."""
    with live_snorky_server(relay=False) as server:
        yield server


def die_after_second_answer(live: LiveSnorkyServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Relays in batches of 2 until the server has answered the second one, then dies (before the
    slot moves); returns the keys it sent."""
    real = logical.send_deltas
    sent: list[str] = []

    def send_then_fail(deltas: Any, backend: Any, *, key: str) -> Any:
        refused = real(deltas, backend, key=key)
        sent.append(key)
        if len(sent) == 2:
            raise RuntimeError("the relay dies after the server's answer")
        return refused

    monkeypatch.setattr(logical, "send_deltas", send_then_fail)
    with pytest.raises(RuntimeError):
        LogicalRelay(live.backend(), batch_size=2).drain()
    monkeypatch.setattr(logical, "send_deltas", real)
    return sent


@postgres_only
def test_a_batch_cut_off_by_a_failure_is_sent_again_under_its_key_and_delivered_once(
    slot, live_plain, ws_factory, alice, monkeypatch
):
    ws = watcher(live_plain, alice, ws_factory)
    with transaction.atomic():
        Task.objects.bulk_create([Task(title=f"t{i}", owner=alice) for i in range(5)])
    sent = die_after_second_answer(live_plain, monkeypatch)
    assert [d["data"]["title"] for d in ws.deltas(4)] == ["t0", "t1", "t2", "t3"]
    claim = LogicalClaim.objects.get()
    assert (claim.key, Position.parse(claim.first) < Position.parse(claim.last)) == (sent[1], True)

    relay = LogicalRelay(live_plain.backend(), batch_size=2)
    assert relay.drain() == 3  # t2, t3 again (dropped by the server as a repeat), then t4
    assert ws.delta()["data"]["title"] == "t4"
    ws.assert_silent()


@postgres_only
def test_a_relay_killed_after_the_servers_answer_delivers_nothing_twice(slot, live_plain, ws_factory, alice):
    ws = watcher(live_plain, alice, ws_factory)
    with transaction.atomic():
        for i in range(3):
            Task.objects.create(title=f"once {i}", owner=alice)
    backend = f"--backend-address=127.0.0.1:{live_plain.handle.backend_port}"
    crashing = SnorkyProcess(
        "--relay-only", backend, SNORKY_TEST_DELIVERY="logical", SNORKY_TEST_RELAY_CRASH="after-publish"
    )
    try:
        assert crashing.finish(timeout=30) == 70, crashing.output
    finally:
        crashing.kill()
    assert [d["data"]["title"] for d in ws.deltas(3)] == [f"once {i}" for i in range(3)]
    assert LogicalClaim.objects.count() == 1

    relay = SnorkyProcess("--relay-only", backend, SNORKY_TEST_DELIVERY="logical")
    try:
        relay.wait_for("Relaying the replication slot")
        Task.objects.create(title="after", owner=alice)
        assert ws.delta()["data"]["title"] == "after"  # and not the three again before it
        ws.assert_silent()
    finally:
        relay.kill()


@postgres_only
def test_single_writes_one_after_another_each_arrive_before_the_next(live, ws_factory, alice):
    ws = watcher(live, alice, ws_factory)
    for i in range(5):
        Task.objects.create(title=f"quick {i}", owner=alice)
        assert ws.delta(timeout=TIMEOUT)["data"]["title"] == f"quick {i}"


@postgres_only
def test_a_dropped_slot_is_created_again_and_said_so(live, ws_factory, alice, caplog):
    ws = watcher(live, alice, ws_factory)
    relay = live.relay
    assert relay is not None
    relay.stop()
    drop_slot()
    Task.objects.create(title="lost", owner=alice)
    relay.start()
    wait_until(lambda: "was gone: created it again" in caplog.text, message="the error about the slot")
    Task.objects.create(title="after", owner=alice)
    assert ws.delta()["data"]["title"] == "after"


def walsenders() -> list[int]:
    """The server processes streaming the test's slot (the relay's replication connections)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND active",
            [logical_setup.slot_name("default")],
        )
        return [pid for (pid,) in cursor.fetchall()]


@postgres_only
def test_a_stream_cut_by_the_server_is_opened_again_and_loses_nothing(live, ws_factory, alice, caplog):
    ws = watcher(live, alice, ws_factory)
    Task.objects.create(title="before", owner=alice)
    assert title(ws.delta()) == ("insert", "before")
    wait_until(lambda: len(walsenders()) == 1, message="the relay streaming the slot (the slot active)")
    first = walsenders()[0]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [first])
    for i in range(3):
        Task.objects.create(title=f"after {i}", owner=alice)
    assert [title(d) for d in ws.deltas(3)] == [("insert", f"after {i}") for i in range(3)]
    ws.assert_silent()
    assert walsenders() not in ([], [first])
    assert "replication slot 'snorky'" in caplog.text  # the cut stream's error, in the log


@postgres_only
def test_a_slot_another_session_streams_is_waited_for(slot, live_plain, ws_factory, alice, monkeypatch, caplog):
    from snorky_django import logical_stream

    monkeypatch.setattr(logical_stream, "_SLOT_BUSY_WAIT", 0.2)
    ws = watcher(live_plain, alice, ws_factory)
    params = connection.get_connection_params()
    other = logical_stream.ReplicationStream.open(params, timezone="UTC", slot="snorky", publication="snorky")
    relay = LogicalRelay(live_plain.backend(), poll_interval=0.01, max_retry_delay=0.2)
    relay.start()
    try:
        Task.objects.create(title="waited", owner=alice)
        wait_until(lambda: "is active for PID" in caplog.text, message="the relay saying the slot is busy")
        ws.assert_silent()
        other.close()
        assert title(ws.delta()) == ("insert", "waited")
    finally:
        relay.stop()
        other.close()


class FreezingProxy:
    """Forwards a port to PostgreSQL's; ``freeze()`` makes the connections open then pass nothing
    more while staying open (new ones work): a network cut as a client sees it, a socket that
    never fails and never becomes readable."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.generation = 0
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                pipe = threading.Thread(target=self._pipe, args=(source, sink, self.generation), daemon=True)
                self.threads.append(pipe)
                pipe.start()

    def _pipe(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        while not self.closed.is_set():
            try:
                data = source.recv(65536)
                if not data:
                    return
                if generation != self.generation:
                    self.closed.wait(60.0)  # frozen: hold the bytes, keep both sockets open
                    return
                sink.sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        self.generation += 1

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for each in self.sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)  # (a close alone leaves a thread's recv() waiting, and
            each.close()  # the connection open: PostgreSQL's session with it)
        for thread in self.threads:
            thread.join(TIMEOUT)


@postgres_only
def test_a_replication_connection_gone_silent_is_taken_for_dead_and_opened_again(
    slot, live_plain, ws_factory, alice, monkeypatch, caplog
):
    from snorky_django import logical_stream

    monkeypatch.setattr(logical_stream, "_STATUS_INTERVAL", 0.5)  # (10 s otherwise: dead after 30 s)
    proxy = FreezingProxy(int(connection.settings_dict["PORT"]))
    real_connect = logical_stream._connect
    monkeypatch.setattr(
        logical_stream, "_connect", lambda params, zone: real_connect({**params, "port": proxy.port}, zone)
    )
    ws = watcher(live_plain, alice, ws_factory)
    relay = LogicalRelay(live_plain.backend(), poll_interval=0.01, max_retry_delay=0.2)
    relay.start()
    try:
        Task.objects.create(title="before", owner=alice)
        assert title(ws.delta()) == ("insert", "before")
        proxy.freeze()
        Task.objects.create(title="during the cut", owner=alice)
        assert title(ws.delta(timeout=20)) == ("insert", "during the cut")
        assert "no word from PostgreSQL for" in caplog.text and "opening the stream again" in caplog.text
        ws.assert_silent()
    finally:
        relay.stop()
        proxy.close()
    # The abandoned stream's server process was ended too (it would hold the slot, and the database).
    wait_until(lambda: other_sessions() == 0, message="no session of the relay's left")


def other_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


@postgres_only
def test_a_pass_longer_than_wal_sender_timeout_keeps_its_stream(slot, live_plain, ws_factory, alice, monkeypatch):
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        database = cursor.fetchone()[0]
        cursor.execute(f"ALTER DATABASE \"{database}\" SET wal_sender_timeout = '2s'")
    connection.close()  # (the relay reads the setting in a new session)
    opened: list[float] = []
    real_open = LogicalRelay._open_stream

    def counting_open(self: LogicalRelay, using: str, target: Any) -> Any:
        opened.append(time.monotonic())
        return real_open(self, using, target)

    keys: list[str] = []
    real_send = logical.send_deltas

    def slow_send(deltas: list[Any], backend: Any, *, key: str) -> Any:
        keys.append(key)
        time.sleep(0.5)  # a server answering in 500 ms: the pass sends for 3 s, reading nothing
        return real_send(deltas, backend, key=key)

    monkeypatch.setattr(LogicalRelay, "_open_stream", counting_open)
    monkeypatch.setattr(logical, "send_deltas", slow_send)
    ws = watcher(live_plain, alice, ws_factory)
    relay = LogicalRelay(live_plain.backend(), batch_size=2, poll_interval=0.01, max_retry_delay=0.2)
    relay.start()
    try:
        wait_until(lambda: len(walsenders()) == 1, message="the relay streaming the slot")
        Task.objects.bulk_create([Task(title=f"t{i}", owner=alice) for i in range(12)])
        assert [d["data"]["title"] for d in ws.deltas(12, timeout=30)] == [f"t{i}" for i in range(12)]
        ws.assert_silent()
        assert (len(opened), len(keys), len(set(keys))) == (1, 6, 6)  # no stream cut, no batch again
    finally:
        relay.stop()
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{database}" RESET wal_sender_timeout')


@postgres_only
def test_a_failure_just_after_the_stream_opened_leaves_the_slot_free(slot, live_plain, ws_factory, alice, monkeypatch):
    ws = watcher(live_plain, alice, ws_factory)
    Task.objects.create(title="kept", owner=alice)
    relay = LogicalRelay(live_plain.backend())
    with monkeypatch.context() as patched:
        patched.setattr(logical._SlotReader, "_claim", lambda reader: (_ for _ in ()).throw(DatabaseError("lost")))
        with pytest.raises(DatabaseError, match="lost"):
            relay.relay_once("default")
    wait_until(lambda: walsenders() == [], message="the stream it opened closed, not left holding the slot")
    assert relay.drain() == 1  # (drain, unlike relay_once, flushes the WAL first)
    assert title(ws.delta()) == ("insert", "kept")


@postgres_only
def test_messages_of_no_use_to_delivery_do_not_end_a_read(slot, alice):
    from snorky_django import logical_stream

    stream = logical_stream.ReplicationStream.open(
        connection.get_connection_params(), timezone="UTC", slot="snorky", publication="snorky"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_logical_emit_message(false, 'other', 'not in a transaction')")
        Task.objects.create(title="after it", owner=alice)
        kinds = []
        while not kinds or kinds[-1] != "Commit":
            message = stream.read(timeout=10)
            assert message is not None, kinds  # (the non-transactional message came between)
            kinds.append(type(message).__name__)
        assert kinds == ["Begin", "Relation", "Change", "Commit"]
    finally:
        stream.close()


@pytest.mark.skipif("connection.vendor == 'postgresql'", reason="starts a server of its own: run once, on SQLite")
@pytest.mark.parametrize(
    ("server_settings", "refusal"),
    [
        ({"wal_level": "replica"}, "needs wal_level = logical on database 'x' (it is replica)"),
        ({"max_wal_senders": "0"}, "database 'x' allows none (max_wal_senders = 0): set max_wal_senders"),
    ],
    ids=["wal_level", "max_wal_senders"],
)
def test_a_database_that_cannot_stream_its_changes_is_refused_with_what_to_set(server_settings, refusal):
    cluster = PostgresCluster()
    try:
        cluster.start(**server_settings)
        dsn = f"host={cluster.host} port={cluster.port} user=postgres dbname=postgres"
        refusal = re.escape(refusal)
        with (
            psycopg.connect(dsn, autocommit=True) as raw,
            raw.cursor() as cursor,
            pytest.raises(ImproperlyConfigured, match=refusal),
        ):
            logical_setup.check_server(cursor, "x")
    finally:
        cluster.destroy()


@pytest.mark.skipif("connection.vendor == 'postgresql'", reason="the check is about other databases")
def test_logical_delivery_on_sqlite_is_a_system_check_error(settings):
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "logical"}
    with pytest.raises(SystemCheckError, match=r"snorky.E015.*database 'default' \(sqlite\)"):
        call_command("check")


def test_a_malformed_pgoutput_message_is_a_decode_error():
    for data in (b"", b"Z", b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09ab", b"R\x00\x00\x00\x01public"):
        with pytest.raises(pgoutput.DecodeError):
            pgoutput.parse(data)


def test_positions_order_as_the_stream_and_read_back():
    positions = [Position(0x1508088, 0, 0), Position(0x1508088, 0, 1), Position(0x1508088, 1, 0)]
    positions.append(Position(0x15080C0, 0, 0))
    assert sorted(reversed(positions)) == positions
    assert [Position.parse(str(p)) for p in positions] == positions


def test_relay_only_says_which_stream_it_relays(settings):
    # (Nothing to set up on SQLite: the command refuses at start, saying why.)
    if connection.vendor == "postgresql":
        pytest.skip("covered by the crash test")
    process = SnorkyProcess("--relay-only", SNORKY_TEST_DELIVERY="logical")
    try:
        assert process.finish(timeout=30) != 0
        assert "needs PostgreSQL" in process.output or "snorky.E015" in process.output
    finally:
        process.kill()


@postgres_only
def test_a_deleted_row_its_serializer_cannot_render_still_leaves(live, alice, ws_factory, monkeypatch):
    # The note's data follows its task, which the same transaction deletes (the cascade): the
    # relay cannot render the note any more, and sends its columns instead of nothing.
    monkeypatch.setattr(Note, "jsonify", lambda note: {"id": note.pk, "task": note.task_id, "title": note.task.title})
    task = Task.objects.create(title="parent", owner=alice)
    token = live.backend().authorize_subscription([{"dealer": "Note", "query": None}])
    ws = ws_factory(live.ws_url)
    ws.acquire(token)
    note = Note.objects.create(task=task, text="child")
    task_pk = task.pk
    assert ws.delta()["data"] == {"id": note.pk, "task": task_pk, "title": "parent"}
    task.delete()
    delta = ws.delta()
    assert delta["type"] == "delete"
    assert (delta["data"]["id"], delta["data"]["task"], delta["data"]["text"]) == (note.pk, task_pk, "child")


@postgres_only
def test_one_relay_reads_the_slot_and_another_takes_over_when_it_stops(slot, live_plain, ws_factory, alice):
    ws = watcher(live_plain, alice, ws_factory)
    first = LogicalRelay(live_plain.backend(), poll_interval=0.01)
    second = LogicalRelay(live_plain.backend(), poll_interval=0.01)
    first.start()
    wait_until(lambda: first.active == {"default"}, message="the first relay holding the slot")
    second.start()
    try:
        for i in range(3):
            Task.objects.create(title=f"first {i}", owner=alice)
        assert [d["data"]["title"] for d in ws.deltas(3)] == [f"first {i}" for i in range(3)]
        # (The server pushes before it answers the relay: its count follows a moment later.)
        wait_until(lambda: first.relayed == 3, message="the first relay's count")
        assert second.relayed == 0
        assert first.stop()
        Task.objects.create(title="second", owner=alice)
        assert ws.delta()["data"]["title"] == "second"
        wait_until(lambda: second.relayed == 1, message="the second relay's count")
        ws.assert_silent()
    finally:
        first.stop()
        second.stop()


@postgres_only
def test_the_slot_moves_past_the_transactions_of_other_tables(slot, live_plain):
    # pgoutput leaves them out of the stream; a slot that never moved past them would keep their
    # WAL for as long as no subscribable row changes. (It moves to where the server said it had
    # read, between transactions: never to the flushed position, which may cut a commit record.)
    def confirmed() -> str:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT confirmed_flush_lsn - %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                [before, logical_setup.slot_name("default")],
            )
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
        before = cursor.fetchone()[0]
    for i in range(20):
        Team.objects.create(slug=f"team-{i}", name="not subscribable")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
        written = cursor.fetchone()[0]

    def flushed() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", [written])
            return bool(cursor.fetchone()[0])

    wait_until(flushed, message="the WAL flushed")  # (relay_once, unlike drain, does not flush it)
    relay = LogicalRelay(live_plain.backend())
    assert relay.relay_once("default") == 0  # nothing to send, but the stream went past them
    assert confirmed() > 0


@postgres_only
def test_a_table_whose_old_rows_are_not_logged_whole_is_said_so(slot, live_plain, ws_factory, alice, caplog):
    ws = watcher(live_plain, alice, ws_factory)
    task = Task.objects.create(title="before", owner=alice)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE testapp_task REPLICA IDENTITY DEFAULT")  # by hand, after the set-up
    Task.objects.filter(pk=task.pk).update(title="after")
    relay = LogicalRelay(live_plain.backend())
    assert relay.drain() == 2
    _, update = ws.deltas(2)
    assert update["newData"]["title"] == update["oldData"]["title"] == "after"  # not a wrong old row
    assert "carry only the key of the old row" in caplog.text
    logical_setup.prepare("default")  # what a restart of the relay does: whole old rows again
    Task.objects.filter(pk=task.pk).update(title="again")
    assert relay.drain() == 1
    assert (ws.delta()["oldData"]["title"], caplog.text.count("carry only the key")) == ("after", 1)


@postgres_only
def test_deletes_stay_fast_deletes(slot, alice):
    task = Task.objects.create(title="t", owner=alice)
    Note.objects.bulk_create([Note(task=task, text=str(i)) for i in range(3)])
    with CaptureQueriesContext(connection) as deleting:
        assert Note.objects.filter(task=task).delete()[0] == 3
    assert statements(deleting) == ["DELETE"]  # no SELECT of the rows first: no delete receivers


@postgres_only
def test_a_message_not_written_by_the_application_is_dropped(live, ws_factory, alice, caplog):
    # Any database login may call pg_logical_emit_message: only signed messages are delivered.
    ws = watcher(live, alice, ws_factory)
    forged = [{"type": "insert", "model": "Task", "data": {"id": 0, "title": "forged", "owner": alice.pk}}]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_logical_emit_message(true, 'snorky', %s)", [json.dumps(forged)])
    Task.objects.create(title="real", owner=alice)
    assert ws.delta()["data"]["title"] == "real"
    ws.assert_silent()
    assert "signature does not match" in caplog.text


@postgres_only
def test_rows_rendered_together_read_their_related_rows_once(slot, live_plain, ws_factory, alice):
    # The serializer lists each task's labels: rendered one by one, each row would read them in a
    # query of its own, one after another on the relay's one thread.
    ws = watcher(live_plain, alice, ws_factory)
    Task.objects.bulk_create([Task(title=f"t{i}", owner=alice) for i in range(20)])
    with CaptureQueriesContext(connection) as relaying:
        assert LogicalRelay(live_plain.backend()).drain() == 20
    assert [d["data"]["title"] for d in ws.deltas(20)] == [f"t{i}" for i in range(20)]
    label_reads = [query for query in relaying.captured_queries if "testapp_task_labels" in query["sql"]]
    assert len(label_reads) == 1


@postgres_only
def test_a_relay_that_worked_before_reads_the_record_another_left(slot, live_plain, ws_factory, alice, monkeypatch):
    ws = watcher(live_plain, alice, ws_factory)
    first = LogicalRelay(live_plain.backend(), batch_size=2, poll_interval=0.01)
    Task.objects.create(title="before", owner=alice)
    first.start()
    wait_until(lambda: first.relayed == 1, message="the first relay's pass")
    assert first.stop()  # it knew no batch was in flight... while it held the lock
    with transaction.atomic():
        Task.objects.bulk_create([Task(title=f"t{i}", owner=alice) for i in range(5)])
    die_after_second_answer(live_plain, monkeypatch)  # another relay
    first.start()
    try:
        titles = [d["data"]["title"] for d in ws.deltas(6)]
        assert titles == ["before", "t0", "t1", "t2", "t3", "t4"]  # t2, t3 sent again, dropped
        ws.assert_silent()
    finally:
        first.stop()


@postgres_only
def test_relaying_from_another_thread_while_the_relay_runs_is_refused(slot, live_plain):
    relay = LogicalRelay(live_plain.backend())
    relay.start()
    try:
        with pytest.raises(RuntimeError, match="stop"):
            relay.relay_once("default")
    finally:
        relay.stop()


@postgres_only
def test_deltas_an_earlier_outbox_delivery_left_are_sent_first(slot, live_plain, ws_factory, alice):
    from snorky_django.models import OutboxEntry

    ws = watcher(live_plain, alice, ws_factory)
    # As an outbox delivery before the switch left it (the slot did not exist then).
    data = {"id": 0, "title": "from the outbox", "owner": alice.pk}
    OutboxEntry.objects.create(delta={"type": "insert", "model": "Task", "data": data})
    relay = LogicalRelay(live_plain.backend(), poll_interval=0.01)
    relay.start()
    try:
        assert ws.delta()["data"]["title"] == "from the outbox"
        assert not OutboxEntry.objects.exists()
        Task.objects.create(title="through the slot", owner=alice)
        assert ws.delta()["data"]["title"] == "through the slot"
        ws.assert_silent()
    finally:
        relay.stop()


@postgres_only
def test_outbox_deltas_that_cannot_be_sent_at_start_stay_and_the_log_says_how(slot, caplog):
    from pgcluster import free_port

    from snorky.backend import SnorkyBackend
    from snorky_django.models import OutboxEntry

    OutboxEntry.objects.create(delta={"type": "insert", "model": "Task", "data": {"id": 0, "title": "kept"}})
    nowhere = SnorkyBackend(f"http://127.0.0.1:{free_port()}/backend", "x" * 32, timeout=1.0)
    relay = LogicalRelay(nowhere, max_retry_delay=0.1)
    relay.start()
    try:
        assert "could not be sent" in caplog.text and "--relay-only" in caplog.text
        assert OutboxEntry.objects.count() == 1
    finally:
        relay.stop()


@pytest.mark.parametrize("key", ["LOGICAL_SLOT", "LOGICAL_PUBLICATION"])
@pytest.mark.parametrize("name", ['bad"name', "My-Slot", "", "x" * 64, 7])
def test_an_unusable_slot_or_publication_name_is_a_system_check_error(settings, key, name):
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "logical", key: name}
    with pytest.raises(SystemCheckError, match=rf"snorky.E015.*{key}.*not a usable name"):
        call_command("check")


@postgres_only
def test_a_slot_left_behind_is_pointed_out_in_the_other_modes(slot, settings):
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "direct"}
    (warning,) = logical_setup.leftover_slots()
    assert "'snorky'" in warning and "pg_drop_replication_slot('snorky')" in warning
    assert "of WAL" in warning and "deliver again everything committed since" in warning
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "logical"}
    assert logical_setup.leftover_slots() == []


@postgres_only
def test_a_setup_refusal_says_why_and_names_the_privilege_only_when_it_is_one(settings):
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "logical", "LOGICAL_PUBLICATION": "p"}
    with connection.cursor() as cursor:
        cursor.execute("CREATE ROLE snorky_weak LOGIN")
        cursor.execute("GRANT ALL ON SCHEMA public TO snorky_weak")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET ROLE snorky_weak")
            try:
                with pytest.raises(ImproperlyConfigured, match=r"REPLICATION attribute") as refused:
                    logical_setup.prepare("default")
            finally:
                cursor.execute("RESET ROLE")
        assert ".." not in str(refused.value)
    finally:
        drop_slot()
        with connection.cursor() as cursor:
            cursor.execute("DROP OWNED BY snorky_weak")
            cursor.execute("DROP ROLE snorky_weak")


def database_warnings() -> list[str]:
    """What ``manage.py check --database default`` says of logical delivery (ids, then messages)."""
    from django.core.checks import run_checks

    found = run_checks(databases=["default"], tags=["snorky"])
    return [
        f"{message.id} {message.msg}"
        for message in found
        if message.id in ("snorky.W009", "snorky.W010", "snorky.W011")
    ]


@postgres_only
def test_check_database_says_nothing_of_a_database_ready_for_logical_delivery(slot):
    assert database_warnings() == []


@postgres_only
def test_check_database_warns_of_a_slot_not_created_yet(settings):
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "logical"}
    (warning,) = database_warnings()
    assert warning.startswith("snorky.W011 Replication slot 'snorky' does not exist on database 'default' yet")


@postgres_only
def test_check_database_warns_of_a_user_without_the_replication_attribute(slot):
    role = f"snorky_plain_{secrets.token_hex(4)}"  # (roles are the cluster's: one per test run)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role}")
        cursor.execute(f"SET ROLE {role}")
    try:
        (warning,) = database_warnings()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
            cursor.execute(f"DROP ROLE {role}")
    assert warning.startswith(f"snorky.W010 Database user '{role}' of 'default' has neither the REPLICATION")
