"""Every committed change the ORM makes to subscribable rows reaches the browser as the right delta:
many-to-many changes from either side, the updates of on_delete handlers (SET_NULL, SET_DEFAULT,
SET(callable)) and cascades, a reverse foreign key's add(), and QuerySet.update()/delete() through
the default manager. Through the real server, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Upper

from django_tests.testapp.models import Label, Note, Sponsor, Task, Team

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def watch(live, ws_factory):
    """A WebSocket client subscribed to every Task and Tag delta."""
    token = live.backend().authorize_subscription([{"dealer": "Task", "query": None}, {"dealer": "Tag", "query": None}])
    ws = ws_factory(live.ws_url)
    ws.acquire(token)
    return ws


def changes(ws: Any, count: int) -> list[tuple[str, str, Any]]:
    """The next ``count`` deltas as (type, model, the changed object's id), then silence."""
    deltas = ws.deltas(count)
    ws.assert_silent(0.3)
    return [(d["type"], d["model"], (d.get("newData") or d["data"])["id"]) for d in deltas]


def updated(ws: Any, count: int) -> dict[Any, tuple[Any, Any]]:
    """The next ``count`` deltas, all updates: {id: (oldData, newData)}, then silence."""
    deltas = ws.deltas(count)
    ws.assert_silent(0.3)
    assert {d["type"] for d in deltas} == {"update"}, deltas
    return {d["newData"]["id"]: (d["oldData"], d["newData"]) for d in deltas}


def test_many_to_many_add_remove_set_clear_from_both_sides(watch, alice):
    task = Task.objects.create(title="t", owner=alice)
    a, b = Label.objects.create(name="a"), Label.objects.create(name="b")
    watch.deltas(3)
    ta, tb = str(a.pk), str(b.pk)

    task.labels.add(a, b)
    change = updated(watch, 3)  # the task's labels, and each label's tasks
    assert change[task.pk][0]["labels"] == [] and sorted(change[task.pk][1]["labels"]) == sorted([ta, tb])
    assert change[ta][1]["tasks"] == [task.pk] and change[tb][1]["tasks"] == [task.pk]

    task.labels.remove(a)
    change = updated(watch, 2)
    assert change[task.pk][1]["labels"] == [tb] and change[ta][1]["tasks"] == []

    task.labels.set([a])  # removes b, adds a
    change = updated(watch, 4)  # the task twice is one key here: 3 distinct objects
    assert change[task.pk][1]["labels"] == [ta] and change[tb][1]["tasks"] == [] and change[ta][1]["tasks"] == [task.pk]

    b.tasks.add(task)  # the reverse side
    change = updated(watch, 2)
    assert sorted(change[task.pk][1]["labels"]) == sorted([ta, tb]) and change[tb][1]["tasks"] == [task.pk]

    task.labels.clear()
    change = updated(watch, 3)
    assert change[task.pk][1]["labels"] == [] and change[ta][1]["tasks"] == [] == change[tb][1]["tasks"]

    task.labels.add(a)
    task.labels.add(a)  # already there: Django changes nothing, nothing is published
    assert set(updated(watch, 2)) == {task.pk, ta}


def test_many_to_many_changes_follow_the_transaction(watch, alice):
    task = Task.objects.create(title="t", owner=alice)
    label = Label.objects.create(name="l")
    watch.deltas(2)
    with pytest.raises(RuntimeError), transaction.atomic():
        task.labels.add(label)
        raise RuntimeError("roll back")
    with transaction.atomic():
        task.labels.add(label)
        task.title = "renamed"
        task.save()
    # One batch, in the order things happened: the m2m updates, then the save's update.
    deltas = watch.deltas(3)
    watch.assert_silent(0.3)
    assert [d["newData"].get("title") for d in deltas if d["model"] == "Task"] == ["t", "renamed"]


def test_on_delete_set_null_set_default_and_set_callable_publish_updates(watch, alice, bob):
    team = Team.objects.create(slug="core", name="Core")
    sponsor = Sponsor.objects.create(name="ACME")
    task = Task.objects.create(title="t", owner=alice, team=team, reviewer=bob, sponsor=sponsor)
    bobs = Task.objects.create(title="bob's", owner=bob)
    team_pk, sponsor_pk, bob_pk = team.pk, sponsor.pk, bob.pk  # delete() forgets them
    watch.deltas(2)

    team.delete()  # SET_NULL
    old, new = updated(watch, 1)[task.pk]
    assert (old["team"], new["team"]) == (team_pk, None)

    sponsor.delete()  # SET(callable)
    old, new = updated(watch, 1)[task.pk]
    assert (old["sponsor"], new["sponsor"]) == (sponsor_pk, None)

    bob.delete()  # SET_DEFAULT on alice's task, CASCADE on bob's own
    deltas = watch.deltas(2)
    watch.assert_silent(0.3)
    by_type = {d["type"]: d for d in deltas}
    assert by_type["update"]["oldData"]["reviewer"] == bob_pk and by_type["update"]["newData"]["reviewer"] is None
    assert by_type["delete"]["data"]["id"] == bobs.pk
    assert Task.objects.get(pk=task.pk).reviewer is None


def test_a_deleted_row_that_was_also_set_null_is_deleted_once(watch, alice):
    # Deleting the owner cascades to the task, whose team stays: one delete delta, no update.
    team = Team.objects.create(slug="x", name="X")
    task = Task.objects.create(title="t", owner=alice, team=team)
    Note.objects.create(task=task, text="n")
    watch.deltas(1)
    alice.delete()
    assert changes(watch, 1) == [("delete", "Task", task.pk)]


def test_reverse_foreign_key_add_remove_clear(watch, alice):
    team = Team.objects.create(slug="t", name="T")
    one, two = Task.objects.create(title="1", owner=alice), Task.objects.create(title="2", owner=alice)
    watch.deltas(2)
    team.tasks.add(one, two)  # bulk: an UPDATE through the base manager
    change = updated(watch, 2)
    assert change[one.pk][1]["team"] == team.pk == change[two.pk][1]["team"]
    team.tasks.remove(one)
    assert updated(watch, 1)[one.pk][1]["team"] is None
    team.tasks.clear()
    assert updated(watch, 1)[two.pk][1]["team"] is None


def test_queryset_update_and_delete_through_the_default_manager(watch, alice, bob):
    tasks = [Task.objects.create(title=f"{i}", owner=alice if i < 2 else bob) for i in range(3)]
    watch.deltas(3)
    assert Task.objects.filter(owner=alice).update(done=True) == 2
    change = updated(watch, 2)
    assert set(change) == {tasks[0].pk, tasks[1].pk} and all(new["done"] for _, new in change.values())
    assert Task.objects.filter(owner=alice, done=True).update(done=True) == 2  # changes nothing
    watch.assert_silent(0.3)
    Task.objects.filter(owner=alice).delete()
    assert sorted(changes(watch, 2)) == [("delete", "Task", tasks[0].pk), ("delete", "Task", tasks[1].pk)]


def test_saves_with_expressions_publish_what_the_database_stored(watch, alice):
    # The database evaluates F() and functions. Django 6.0 reads the results back into the
    # instance (not for a field left out of update_fields); 4.2 and 5.2 leave the expression there.
    # Either way the delta carries the row as stored, and saving does not fail.
    task = Task.objects.create(title=Upper(Value("new")), owner=alice, priority=1)
    assert watch.deltas(1)[0]["data"]["title"] == "NEW"

    task.priority = F("priority") + 1
    task.save()
    old, new = updated(watch, 1)[task.pk]
    assert (old["priority"], new["priority"]) == (1, 2)

    task.title = "renamed"
    task.priority = F("priority") * 10  # not in update_fields: not written, and the delta says so
    task.save(update_fields=["title"])
    old, new = updated(watch, 1)[task.pk]
    assert (old["title"], new["title"], old["priority"], new["priority"]) == ("NEW", "renamed", 2, 2)
    assert Task.objects.get(pk=task.pk).priority == 2
