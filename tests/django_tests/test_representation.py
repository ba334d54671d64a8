"""A delta's data is what the serializer's own ``to_representation`` returns, although the reads of
plain columns are done directly: for every kind of field and every state an instance can be in."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework import serializers

from django_tests.testapp.models import Label, Task, Team
from snorky_django import representation

pytestmark = pytest.mark.django_db(transaction=True)


class ShoutingField(serializers.CharField):
    """Renders its own way but reads as DRF does: read directly, rendered by it."""

    def to_representation(self, value: Any) -> str:
        return str(value).upper()


class TitleAndPriorityField(serializers.CharField):
    """Reads more than its source: DRF reads it."""

    def get_attribute(self, instance: Task) -> str:
        return f"{instance.title}!{instance.priority}"


class EveryKindSerializer(serializers.ModelSerializer):
    """Plain columns, relations by key (nullable too), chains through foreign keys (with a
    default, and without where the key is empty), methods, the instance itself, a callable and a
    property of the model, a many-to-many, a subclass reading as DRF does and one reading its own
    way, a write-only field."""

    owner_name = serializers.CharField(source="owner.username", read_only=True)
    team_name = serializers.CharField(source="team.name", read_only=True, default=None)
    team_slug = serializers.CharField(source="team.slug", read_only=True, allow_null=True)
    summary = serializers.SerializerMethodField()
    shouting = ShoutingField(source="title", read_only=True)
    title_and_priority = TitleAndPriorityField(source="title", read_only=True)
    label_names = serializers.SlugRelatedField(source="labels", slug_field="name", many=True, read_only=True)
    owner_key = serializers.IntegerField(source="owner_id", read_only=True)
    deadline = serializers.DateField(source="due", format="%d/%m/%Y", read_only=True)
    hours = serializers.DecimalField(source="estimate", max_digits=6, decimal_places=1, read_only=True)
    secret_code = serializers.CharField(write_only=True, required=False)
    described = serializers.CharField(source="__str__", read_only=True)

    class Meta:
        model = Task
        fields = "__all__"

    def get_summary(self, task: Task) -> str:
        return f"{task.title}/{task.priority}"


class KeyedByUuidSerializer(serializers.ModelSerializer):
    """A relation rendered through ``pk_field``: DRF reads and renders it."""

    team = serializers.PrimaryKeyRelatedField(read_only=True, pk_field=serializers.CharField())

    class Meta:
        model = Task
        fields = ("id", "title", "team", "owner", "reviewer")


class OverridingSerializer(serializers.ModelSerializer):
    """Overrides ``to_representation``: nothing is planned."""

    class Meta:
        model = Task
        fields = ("id", "title")

    def to_representation(self, instance: Task) -> dict[str, Any]:
        return {"only": instance.title}


def _tasks(alice: Any, bob: Any) -> dict[str, Callable[[], Task]]:
    team = Team.objects.create(slug="core", name="Core")
    label = Label.objects.create(id=uuid.uuid4(), name="bug")
    first = Task.objects.create(
        title="first",
        owner=alice,
        team=team,
        estimate=decimal.Decimal("2.50"),
        due=datetime.date(2030, 1, 2),
        reviewer=bob,
    )
    first.labels.add(label)
    Task.objects.create(title="bare", owner=bob, created=first.created + datetime.timedelta(seconds=1))
    return {
        "as created": lambda: first,
        "loaded with its relations": lambda: Task.objects.select_related("owner", "team").get(pk=first.pk),
        "loaded alone": lambda: Task.objects.get(pk=first.pk),
        "with deferred columns": lambda: Task.objects.only("id", "title").get(pk=first.pk),
        "with empty keys and values": lambda: Task.objects.get(title="bare"),
        "changed and not saved": lambda: _changed(Task.objects.get(pk=first.pk), bob),
    }


def _changed(task: Task, bob: Any) -> Task:
    task.title = "renamed"
    task.priority = "7"  # the wrong type, as a form may leave it
    task.owner = bob
    task.team = None
    return task


STATES = [
    "as created",
    "loaded with its relations",
    "loaded alone",
    "with deferred columns",
    "with empty keys and values",
    "changed and not saved",
]


@pytest.mark.parametrize("serializer_class", [EveryKindSerializer, KeyedByUuidSerializer])
@pytest.mark.parametrize("state", STATES)
def test_rendering_equals_drf_s_own(backend, alice, bob, serializer_class, state):
    task = _tasks(alice, bob)[state]()
    serializer = serializer_class()
    plan = representation.plan(serializer, Task)
    assert plan is not None
    expected = serializer.to_representation(task)
    rendered = representation.render(plan, task)
    assert rendered == expected
    assert list(rendered) == list(expected)  # the same keys in the same order


def test_plain_columns_are_read_directly_and_the_rest_by_drf():
    plan = representation.plan(EveryKindSerializer(), Task)
    assert plan is not None
    direct = {planned.name for planned in plan.fields if planned.reads_column or planned.key_column}
    assert direct == {
        "id",
        "title",
        "done",
        "priority",
        "estimate",
        "due",
        "created",
        "owner",
        "team",
        "reviewer",
        "sponsor",
        "shouting",
        "deadline",
        "hours",
    }
    assert "secret_code" not in {planned.name for planned in plan.fields}


def test_a_serializer_with_its_own_to_representation_is_not_planned():
    assert representation.plan(OverridingSerializer(), Task) is None


def test_a_property_in_place_of_a_column_is_read_by_drf():
    class Shadowed(Task):
        class Meta:
            proxy = True
            app_label = "testapp"

        @property
        def title(self) -> str:  # type: ignore[override]
            return "from the property"

    class ShadowedSerializer(serializers.ModelSerializer):
        class Meta:
            model = Shadowed
            fields = ("id", "title")

    plan = representation.plan(ShadowedSerializer(), Shadowed)
    assert plan is not None
    assert [planned.reads_column for planned in plan.fields] == [True, False]
