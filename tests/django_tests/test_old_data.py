"""A changed row's ``oldData`` is rendered from its ``newData`` where a field's column did not
change: whatever the save changed, it must equal the serializer's full rendering of the old row."""

from __future__ import annotations

import datetime
import decimal
import math
import zoneinfo
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework import serializers

from django_tests.testapp.models import Label, Sponsor, Task, Team
from snorky_django import old_data, serialization

pytestmark = pytest.mark.django_db(transaction=True)


class TitleAndPriorityField(serializers.CharField):
    """A subclass may read more than its source (here, the priority too): it is always rendered
    again."""

    def get_attribute(self, instance: Task) -> str:
        return f"{instance.title}!{instance.priority}"


class RichTaskSerializer(serializers.ModelSerializer):
    """Every kind of field: plain columns, a chain through a foreign key, a method reading two
    columns, the whole instance, a subclass, a many-to-many."""

    owner_name = serializers.CharField(source="owner.username", read_only=True)
    team_name = serializers.CharField(source="team.name", read_only=True, default=None)
    summary = serializers.SerializerMethodField()
    title_and_priority = TitleAndPriorityField(source="title", read_only=True)
    everything = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = "__all__"

    def get_summary(self, task: Task) -> str:
        return f"{task.title}/{task.priority}"

    def get_everything(self, task: Task) -> int:
        return len(task.title) + int(task.priority)


class CombiningSerializer(serializers.ModelSerializer):
    """Overrides ``to_representation``: its old row is rendered whole."""

    class Meta:
        model = Task
        fields = ("id", "title", "priority")

    def to_representation(self, instance: Task) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["label"] = f"{data['title']}#{data['priority']}"
        return data


def _use(serializer: type[Any]) -> None:
    serialization._plans[Task] = serialization.DeltaData(
        serialization._Representer(serializer, Task), "serializer", serialization.serializer_names(serializer)
    )


@pytest.fixture(params=[None, RichTaskSerializer, CombiningSerializer], ids=["view", "rich", "combining"])
def task_serializer(request: pytest.FixtureRequest) -> Iterator[None]:
    serialization.forget_delta_data()
    if request.param is not None:
        _use(request.param)
    yield
    serialization.forget_delta_data()


def _full_rendering(task: Task) -> dict[str, Any]:
    """The old row as the serializer renders it, read from the database before the save."""
    return serialization.serialize(Task.objects.select_related("owner", "team").get(pk=task.pk))


CHANGES = {
    "title": lambda task, ctx: setattr(task, "title", "renamed"),
    "priority as a string": lambda task, ctx: setattr(task, "priority", "7"),
    "estimate, same value": lambda task, ctx: setattr(task, "estimate", decimal.Decimal("2.5")),
    "estimate": lambda task, ctx: setattr(task, "estimate", decimal.Decimal("3.25")),
    "due": lambda task, ctx: setattr(task, "due", datetime.date(2031, 5, 6)),
    "created, same instant in another zone": lambda task, ctx: setattr(
        task, "created", task.created.astimezone(zoneinfo.ZoneInfo("Asia/Tokyo"))
    ),
    "created": lambda task, ctx: setattr(task, "created", task.created + datetime.timedelta(hours=1)),
    "owner": lambda task, ctx: setattr(task, "owner", ctx["bob"]),
    "owner by id": lambda task, ctx: setattr(task, "owner_id", ctx["bob"].pk),
    "team to none": lambda task, ctx: setattr(task, "team", None),
    "team": lambda task, ctx: setattr(task, "team", ctx["other_team"]),
    "sponsor": lambda task, ctx: setattr(task, "sponsor", ctx["sponsor"]),
    "several": lambda task, ctx: (setattr(task, "done", True), setattr(task, "reviewer", ctx["bob"])),
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "saved"])
def test_old_data_equals_the_full_rendering_of_the_old_row(backend, alice, bob, task_serializer, change, loaded):
    team = Team.objects.create(slug="a", name="A")
    context = {
        "bob": bob,
        "other_team": Team.objects.create(slug="b", name="B"),
        "sponsor": Sponsor.objects.create(name="S"),
    }
    task = Task.objects.create(
        title="t", owner=alice, team=team, estimate=decimal.Decimal("2.50"), due=datetime.date(2030, 1, 2)
    )
    task.labels.add(Label.objects.create(name="bug"))
    if loaded:  # checked against the row it was loaded as; else against the row it last saved
        task = Task.objects.select_related("owner", "team").get(pk=task.pk)
    old = _full_rendering(task)
    published = len(backend.deltas)
    CHANGES[change](task, context)
    task.save()
    new = _full_rendering(task)
    if new == old:
        assert len(backend.deltas) == published  # nothing a browser could see changed
        return
    update = backend.deltas[-1]
    assert update["type"] == "update"
    assert update["oldData"] == old
    assert update["newData"] == new


def test_a_row_changed_behind_the_instance_is_rendered_from_the_database(backend, alice, task_serializer):
    task = Task.objects.create(title="t", owner=alice, priority=1)
    Task.objects.filter(pk=task.pk).update(title="changed elsewhere", priority=9)
    old = _full_rendering(task)
    task.done = True
    task.save()
    assert backend.deltas[-1]["oldData"] == old


def test_a_queryset_update_renders_old_rows_alike(backend, alice, task_serializer):
    tasks = [Task.objects.create(title=f"t{i}", owner=alice, priority=i) for i in range(3)]
    olds = [_full_rendering(task) for task in tasks]
    Task.objects.filter(priority__gte=1).update(priority=5)
    updates = [delta for delta in backend.deltas if delta["type"] == "update"]
    assert [delta["oldData"] for delta in updates] == olds[1:]
    assert [delta["newData"] for delta in updates] == [_full_rendering(task) for task in tasks[1:]]


@pytest.mark.parametrize(
    ("before", "after", "same"),
    [
        ("a", "a", True),
        (1, 1, True),
        (1, True, False),  # equal, but a boolean renders differently
        (1, "1", False),
        (decimal.Decimal("1.0"), decimal.Decimal("1.0"), True),
        (decimal.Decimal("1.0"), decimal.Decimal("1.00"), False),
        (0.0, -0.0, False),
        (math.nan, float("nan"), False),
        (
            datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
            datetime.datetime(2030, 1, 1, 9, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo")),
            False,
        ),
        (datetime.date(2030, 1, 1), datetime.date(2030, 1, 1), True),
        ({"a": 1}, {"a": 1.0}, False),
        ({"a": [1]}, {"a": [1]}, True),
        (None, None, True),
    ],
)
def test_only_values_that_render_alike_are_the_same(before, after, same):
    assert old_data._same(before, after) is same
