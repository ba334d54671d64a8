"""@subscribable and direct delivery, with a recording backend in place of the server: which
deltas, with which data, in how many requests, after which commits."""

from __future__ import annotations

import datetime
import decimal
import logging
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext

from django_tests.testapp.models import ArchivedTask, Label, Note, Task, Team
from snorky.backend import BackendError, SnorkyConnectionError
from snorky_django import delivery, publish_deltas, serialization
from snorky_django.changes import SubscribableManager, options_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def user() -> Any:
    return get_user_model().objects.create_user("carol", password="x")


def test_each_save_outside_a_transaction_is_one_request(backend, user):
    task = Task.objects.create(title="a", owner=user, estimate=decimal.Decimal("1.50"), due=datetime.date(2030, 1, 2))
    task.title = "b"
    task.save()
    assert len(backend.requests) == 2
    insert, update = backend.deltas
    assert insert["type"] == "insert" and insert["model"] == "Task"
    data = insert["data"]
    assert data["estimate"] == "1.50" and data["due"] == "2030-01-02"
    assert data["created"].endswith("Z")
    assert update == {"type": "update", "model": "Task", "newData": {**data, "title": "b"}, "oldData": data}


def test_a_transaction_is_one_request_in_commit_order(backend, user):
    with transaction.atomic():
        first = Task.objects.create(title="1", owner=user)
        Task.objects.create(title="2", owner=user)
        first.done = True
        first.save()
        first.delete()
        assert backend.requests == []  # nothing before the commit
    assert len(backend.requests) == 1
    assert backend.types() == ["insert", "insert", "update", "delete"]
    assert backend.deltas[3]["data"]["done"] is True


def test_rollback_publishes_nothing(backend, user):
    with pytest.raises(ValueError), transaction.atomic():
        Task.objects.create(title="x", owner=user)
        raise ValueError
    with transaction.atomic():
        Task.objects.create(title="y", owner=user)
        transaction.set_rollback(True)
    assert backend.requests == []


def test_a_rolled_back_savepoint_drops_only_its_own_deltas(backend, user):
    with transaction.atomic():
        Task.objects.create(title="kept 1", owner=user)
        with pytest.raises(ValueError), transaction.atomic():
            Task.objects.create(title="undone", owner=user)
            raise ValueError
        Task.objects.create(title="kept 2", owner=user)
        with transaction.atomic():  # released, not rolled back
            Task.objects.create(title="kept 3", owner=user)
    assert [[d["data"]["title"] for d in request] for request in backend.requests] == [["kept 1", "kept 2", "kept 3"]]


def test_a_transaction_ending_with_a_rolled_back_savepoint_still_publishes(backend, user):
    with transaction.atomic():
        Task.objects.create(title="kept", owner=user)
        with pytest.raises(ValueError), transaction.atomic():
            Task.objects.create(title="undone", owner=user)
            raise ValueError
    assert [d["data"]["title"] for d in backend.deltas] == ["kept"]
    assert len(backend.requests) == 1


def test_saving_without_changes_publishes_nothing(backend, user):
    task = Task.objects.create(title="same", owner=user)
    task.save()
    Task.objects.filter(pk=task.pk).update(title="same")
    assert backend.types() == ["insert"]


def test_old_data_is_read_from_the_database_not_the_stale_instance(backend, user):
    Task.objects.create(title="v1", owner=user)
    stale = Task.objects.get()
    Task.objects.filter(pk=stale.pk).update(title="v2")
    stale.done = True
    stale.save()
    update = backend.deltas[-1]
    assert update["oldData"]["title"] == "v2" and update["oldData"]["done"] is False
    assert update["newData"]["title"] == "v1" and update["newData"]["done"] is True


def _task_statements(block: Any) -> list[str]:
    """The statements ``block()`` ran on the task table, in a transaction of its own (the
    serializer's reads of the labels, a many-to-many, are not counted)."""
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        block()
    return [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].startswith('UPDATE "testapp_task"') or 'FROM "testapp_task" ' in query["sql"]
    ]


def test_saving_a_loaded_row_is_one_update_that_confirms_the_old_row(backend, user):
    Task.objects.create(title="a", owner=user, estimate=decimal.Decimal("2.50"), due=datetime.date(2030, 1, 2))
    task = Task.objects.get()
    task.title = "b"
    statements = _task_statements(task.save)
    # No SELECT (... FOR UPDATE) of the old row: the UPDATE checks the row loaded.
    assert len(statements) == 1 and statements[0].startswith("UPDATE")
    update = backend.deltas[-1]
    assert update["oldData"]["title"] == "a" and update["newData"]["title"] == "b"
    assert update["oldData"]["estimate"] == "2.50" and update["oldData"]["due"] == "2030-01-02"
    # Saved again, the instance checks the row it wrote.
    task.title = "c"
    assert len(_task_statements(task.save)) == 1
    assert backend.deltas[-1]["oldData"]["title"] == "b" and backend.deltas[-1]["newData"]["title"] == "c"


def test_values_of_another_type_are_checked_as_the_field_prepares_them(backend, user):
    # The remembered row holds what the instance held: a string for an integer or a
    # decimal. The check binds them as the field prepares them, so it still matches.
    task = Task.objects.create(title="a", owner=user, priority="7", estimate="2.5")
    task.title = "b"
    assert len(_task_statements(task.save)) == 1
    update = backend.deltas[-1]
    assert update["oldData"]["priority"] == 7 and update["oldData"]["estimate"] == "2.50"
    assert update["oldData"]["title"] == "a" and update["newData"]["title"] == "b"


def test_a_refreshed_instance_saves_with_one_update(backend, user):
    task = Task.objects.create(title="a", owner=user, priority=1)
    Task.objects.filter(pk=task.pk).update(title="changed elsewhere", priority=2)
    task.refresh_from_db()
    task.done = True
    assert len(_task_statements(task.save)) == 1
    update = backend.deltas[-1]
    assert update["oldData"]["title"] == "changed elsewhere" and update["oldData"]["done"] is False
    # Only some fields reloaded: the row remembered is updated for those.
    Task.objects.filter(pk=task.pk).update(priority=3)
    task.refresh_from_db(fields=["priority"])
    task.title = "b"
    assert len(_task_statements(task.save)) == 1
    update = backend.deltas[-1]
    assert update["oldData"]["priority"] == 3 and update["oldData"]["title"] == "changed elsewhere"
    assert update["newData"]["title"] == "b"


def test_a_proxy_saves_with_one_update_too(backend, user):
    Task.objects.create(title="a", owner=user)
    archived = ArchivedTask.objects.get()
    archived.title = "b"
    assert len(_task_statements(archived.save)) == 1
    update = backend.deltas[-1]
    assert update["model"] == "Task" and update["oldData"]["title"] == "a" and update["newData"]["title"] == "b"


def test_a_rolled_back_save_does_not_fool_the_next_one(backend, user):
    task = Task.objects.create(title="a", owner=user)
    with pytest.raises(RuntimeError), transaction.atomic():
        task.title = "rolled back"
        task.save()
        raise RuntimeError
    task.title = "b"
    task.save()
    # The instance believed the database had "rolled back": the UPDATE found otherwise, so the
    # row was read, under lock, and the delta carries what browsers were shown.
    assert backend.types() == ["insert", "update"]
    update = backend.deltas[-1]
    assert update["oldData"]["title"] == "a" and update["newData"]["title"] == "b"
    task.title = "c"
    assert len(_task_statements(task.save)) == 1  # what the read found is remembered


def test_saving_some_fields_then_all_carries_the_database_row(backend, user):
    task = Task.objects.create(title="a", owner=user)
    task.title, task.done = "b", True
    task.save(update_fields=["title"])  # done stays False in the database
    assert backend.deltas[-1]["oldData"]["done"] is False and backend.deltas[-1]["newData"]["done"] is True
    task.priority = 5
    assert len(_task_statements(task.save)) == 1
    update = backend.deltas[-1]
    assert update["oldData"]["title"] == "b" and update["oldData"]["done"] is False
    assert update["newData"]["done"] is True and update["newData"]["priority"] == 5


def test_a_row_deleted_since_it_was_loaded_is_inserted_again(backend, user):
    task = Task.objects.create(title="a", owner=user)
    Task.objects.filter(pk=task.pk).delete()
    task.title = "back"
    task.save()
    assert backend.types() == ["insert", "delete", "insert"]
    assert backend.deltas[-1]["data"]["title"] == "back"


def test_delete_publishes_the_database_row_and_cascades(backend, user):
    task = Task.objects.create(title="t", owner=user)
    Note.objects.create(task=task, text="n", written=datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC))
    backend.requests.clear()
    user.delete()
    assert len(backend.requests) == 1
    deleted = {d["model"]: d["data"] for d in backend.deltas if d["type"] == "delete"}
    assert deleted["Note"] == {
        "id": deleted["Note"]["id"],
        "task": task.pk,
        "text": "n",
        "written": "2030-01-01T12:00:00Z",
    }
    assert deleted["Task"]["title"] == "t"


def test_a_float_that_is_not_finite_is_sent_as_null(backend, user, monkeypatch):
    task = Task.objects.create(title="t", owner=user)
    monkeypatch.setattr(Note, "jsonify", lambda self: {"id": self.pk, "inf": float("inf"), "flat": float("nan")})
    note = Note.objects.create(task=task, text="n")
    assert backend.deltas[-1]["data"] == {"id": note.pk, "inf": None, "flat": None}


def test_jsonify_drf_and_field_serialization(backend, user, monkeypatch):
    team = Team.objects.create(slug="s", name="S")
    task = Task.objects.create(title="t", owner=user, team=team, estimate=decimal.Decimal("2"))
    drf = serialization.serialize(task)
    assert drf["team"] == team.pk and drf["owner"] == user.pk and drf["estimate"] == "2.00"
    monkeypatch.setattr(serialization, "_drf_installed", lambda: False)
    serialization.forget_delta_data()
    plain = serialization.serialize(Task.objects.get(pk=task.pk))
    serialization.forget_delta_data()
    # Without DRF, no view serializer: Django's values of the concrete fields (no many-to-many).
    assert plain == {key: value for key, value in drf.items() if key != "labels"}
    assert serialization.jsonable({"d": datetime.timedelta(seconds=90), "b": b"\x00\x01"}) == {"d": 90.0, "b": "AAE="}
    with pytest.raises(TypeError, match="cannot encode"):
        serialization.jsonable(object())


def test_uuid_keys_custom_names_and_proxies(backend, user):
    label = Label.objects.create(name="bug")
    assert backend.deltas[0] == {
        "type": "insert",
        "model": "Tag",
        "data": {"id": str(label.pk), "name": "bug", "color": "grey", "tasks": []},
    }
    archived = ArchivedTask.objects.create(title="old", owner=user)
    assert backend.deltas[1]["model"] == "Task" and backend.deltas[1]["data"]["id"] == archived.pk
    assert options_for(ArchivedTask) is options_for(Task)


def test_the_automatic_manager_became_subscribable():
    assert isinstance(Task.objects, SubscribableManager)
    assert isinstance(Task._default_manager, SubscribableManager)
    assert isinstance(Team.objects, type(Team.objects)) and not isinstance(Team.objects, SubscribableManager)


def test_bulk_operations_join_the_transaction(backend, user):
    with transaction.atomic():
        tasks = Task.objects.bulk_create([Task(title=f"t{i}", owner=user) for i in range(3)])
        Task.objects.filter(title__in=["t0", "t1"]).update(priority=1)
        for task in tasks:
            task.title = task.title.upper()
        Task.objects.bulk_update(tasks, ["title"], batch_size=2)
        Task.objects.filter(title="T2").delete()
    assert len(backend.requests) == 1
    assert backend.types() == ["insert"] * 3 + ["update"] * 2 + ["update"] * 3 + ["delete"]
    bulk_updates = backend.deltas[5:8]
    assert [d["newData"]["title"] for d in bulk_updates] == ["T0", "T1", "T2"]
    assert bulk_updates[0]["oldData"]["priority"] == 1  # read before the change, after update()


def test_bulk_created_rows_carry_what_was_stored_and_save_with_one_update(backend, user):
    stamped, plain = Task.objects.bulk_create(
        [Task(title="stamped", owner=user, created=Now()), Task(title="plain", owner=user, priority="4")]
    )
    inserted = {delta["data"]["title"]: delta["data"] for delta in backend.deltas}
    # The expression is read back (one query for such rows); the others carry what was inserted.
    assert inserted == {task.title: serialization.serialize(Task.objects.get(pk=task.pk)) for task in (stamped, plain)}
    assert inserted["plain"]["priority"] == 4 and inserted["stamped"]["created"].endswith("Z")
    plain.title = "changed"
    assert len(_task_statements(plain.save)) == 1  # the inserted row is remembered
    assert backend.deltas[-1]["oldData"]["title"] == "plain"


def test_upsert_publishes_updates_for_existing_rows(backend):
    Label.objects.create(name="a", color="red")
    backend.requests.clear()
    Label.objects.bulk_create(
        [Label(name="a", color="blue"), Label(name="b", color="green")],
        update_conflicts=True,
        unique_fields=["name"],
        update_fields=["color"],
    )
    update, insert = backend.deltas
    assert update["type"] == "update" and update["oldData"]["color"] == "red" and update["newData"]["color"] == "blue"
    assert insert["type"] == "insert" and insert["data"]["name"] == "b"


def test_related_manager_updates_publish(backend, user):
    Task.objects.create(title="t", owner=user)
    user.tasks.update(done=True)
    assert backend.types() == ["insert", "update"]


def test_hand_made_deltas_join_the_transaction(backend):
    with transaction.atomic():
        publish_deltas([{"type": "insert", "model": "Task", "data": {"id": 99}}])
        assert backend.requests == []
    assert backend.deltas == [{"type": "insert", "model": "Task", "data": {"id": 99}}]


def test_an_on_commit_callback_saving_again_keeps_the_order(backend, user):
    task = Task.objects.create(title="v1", owner=user)
    backend.requests.clear()

    def touch() -> None:
        task.title = "v3"
        task.save()

    with transaction.atomic():
        task.title = "v2"
        task.save()
        transaction.on_commit(touch)
    assert [d["newData"]["title"] for d in backend.deltas] == ["v2", "v3"]


def test_captured_on_commit_callbacks_in_a_test_case(django_capture_on_commit_callbacks, backend, user):
    with django_capture_on_commit_callbacks(execute=True):
        Task.objects.create(title="captured", owner=user)
    assert backend.types() == ["insert"]


def test_unreachable_server_is_logged_counted_and_signalled(backend, user, caplog):
    backend.error = SnorkyConnectionError("cannot reach the Snorky backend")
    failures: list[Any] = []
    delivery.delivery_failed.connect(lambda **kw: failures.append(kw), weak=False, dispatch_uid="test")
    try:
        with caplog.at_level(logging.ERROR, logger="snorky_django"):
            Task.objects.create(title="lost?", owner=user)  # does not raise
    finally:
        delivery.delivery_failed.disconnect(dispatch_uid="test")
    assert delivery.stats.failed == 1 and delivery.stats.failed_requests == 1
    assert "could not publish 1 delta" in caplog.text
    assert failures[0]["deltas"][0]["data"]["title"] == "lost?"
    assert Task.objects.filter(title="lost?").exists()


def test_a_refused_delta_does_not_take_the_batch_down(backend, user, caplog):
    backend.refuse_model = "Tag"
    with caplog.at_level(logging.ERROR, logger="snorky_django"), transaction.atomic():
        Task.objects.create(title="fine", owner=user)
        Label.objects.create(name="refused")
        Task.objects.create(title="fine too", owner=user)
    assert [d["model"] for d in backend.deltas] == ["Task", "Task"]
    assert delivery.stats.published == 2 and delivery.stats.failed == 1
    assert "Unknown model" in caplog.text


def test_a_wrong_api_key_is_not_blamed_on_the_deltas(backend, user):
    backend.error = BackendError("backend refused the request (HTTP 401): wrong key")
    assert delivery.send_deltas.__name__ == "send_deltas"
    with pytest.raises(BackendError):
        delivery.send_deltas([{"type": "insert", "model": "Task", "data": {}}], backend)  # type: ignore[arg-type]
