"""A changed row's ``oldData``, mostly taken from its ``newData``.

An ``update`` delta carries the row both before and after the save, each as the model's DRF
serializer renders it. Rendering the old row costs as much as rendering the new one (most of what
``@subscribable`` adds to a small model's ``save()``), yet a save usually changes a field or two:
every other field renders the same in both.

So the old row is rendered from the new one: a field is copied when it reads a single column (its
``source`` starts with a concrete field) which holds the same value in both rows, and is rendered
again, by DRF on the old row, otherwise. A copy is made only where the result is certain to be
what DRF would render:

- the serializer renders with DRF's own ``to_representation`` (one that overrides it may combine
  fields any way it likes, so the whole old row is rendered instead);
- the field is one of DRF's value fields or primary-key, slug or string relations, of exactly that
  class (a subclass may render from anything), so its output depends on its value alone;
- the column holds the same value: the same object, or equal values of the same type whose
  ``repr`` is the same where equality is looser than the rendering (``1.0`` and ``1.00``, an
  aware time in two zones, ``0.0`` and ``-0.0``).

A field that follows a foreign key (``source="owner.username"``) is copied when the key is the
same: the old row then renders the same related object, which is what a full rendering of the old
row does too (it is given the related objects the saved instance has loaded).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import models

__all__ = ["PlannedField", "Replaced", "ReusePlan", "render_old", "reuse_plan"]


class Replaced:
    """The row a save replaced: its column values (by ``attname``), and the model instance they
    make, built only if a field has to be rendered from it."""

    __slots__ = ("_build", "_instance", "values")

    def __init__(self, values: Mapping[str, Any], build: Callable[[models.Model], models.Model]) -> None:
        self.values = values
        self._build = build
        self._instance: models.Model | None = None

    @classmethod
    def loaded(cls, instance: models.Model, share: Callable[[models.Model, models.Model], models.Model]) -> Replaced:
        """The row as an instance read from the database; ``share(row, saved)`` gives it the related
        objects the saved instance has loaded, and returns it."""
        return cls(instance.__dict__, lambda saved: share(instance, saved))

    def instance(self, saved: models.Model) -> models.Model:
        """The replaced row as an instance of ``saved``'s model."""
        if self._instance is None:
            self._instance = self._build(saved)
        return self._instance


@dataclass(frozen=True)
class PlannedField:
    """One readable field of a serializer, as :func:`render_old` treats it."""

    name: str
    field: Any
    column: str | None
    """The column it renders from (``None``: rendered again for the old row, from its instance)."""
    reads_column: bool
    """Whether DRF's ``get_attribute`` returns the column's value itself (a plain attribute of
    the model), so that the old value renders without an instance of the old row."""


@dataclass(frozen=True)
class ReusePlan:
    """The readable fields of one serializer, in its order."""

    fields: tuple[PlannedField, ...]


# Only these exact classes: DRF's own value and relation fields render their value and nothing
# else. (The names are looked up, so a DRF without one of them still works.)
_VALUE_FIELDS = (
    "BooleanField",
    "CharField",
    "EmailField",
    "RegexField",
    "SlugField",
    "URLField",
    "UUIDField",
    "IPAddressField",
    "IntegerField",
    "BigIntegerField",
    "FloatField",
    "DecimalField",
    "DateTimeField",
    "DateField",
    "TimeField",
    "DurationField",
    "ChoiceField",
    "MultipleChoiceField",
    "FilePathField",
    "JSONField",
    "ReadOnlyField",
)
_RELATION_FIELDS = ("PrimaryKeyRelatedField", "SlugRelatedField", "StringRelatedField")

# Types whose equal values always render alike (no precision, zone or sign hidden by ``==``).
_EQUAL_RENDERS_ALIKE = frozenset({str, int, bool, bytes, datetime.date, uuid.UUID, type(None)})


def _rendering_field_classes() -> frozenset[type]:
    from rest_framework import fields, relations

    found = [getattr(fields, name, None) for name in _VALUE_FIELDS]
    found += [getattr(relations, name, None) for name in _RELATION_FIELDS]
    return frozenset(cls for cls in found if isinstance(cls, type))


def reuse_plan(serializer: Any, model: type[models.Model]) -> ReusePlan | None:
    """How ``serializer`` (built, for rows of ``model``) renders an old row from a new one;
    ``None`` when it must render the whole old row."""
    from django.db.models.query_utils import DeferredAttribute
    from rest_framework import fields, serializers

    kind = type(serializer)
    if (
        kind.to_representation is not serializers.Serializer.to_representation
        or kind._readable_fields is not serializers.Serializer._readable_fields
    ):
        return None
    rendering = _rendering_field_classes()
    columns: dict[str, str] = {}
    plain: set[str] = set()  # attributes that are the column's value (no descriptor of their own)
    for model_field in model._meta.concrete_fields:
        columns[model_field.name] = columns[model_field.attname] = model_field.attname
        if model_field.descriptor_class is DeferredAttribute:
            plain.add(model_field.attname)
    planned = []
    for field in serializer._readable_fields:
        attrs: list[str] = getattr(field, "source_attrs", None) or []
        column = None
        if type(field) in rendering and attrs and field.source != "*":
            column = columns.get(attrs[0])
        # Field.get_attribute (not a relation's) of one plain attribute: getattr(row, attribute).
        reads_column = (
            column is not None
            and len(attrs) == 1
            and attrs[0] in plain
            and type(field).get_attribute is fields.Field.get_attribute
        )
        planned.append(PlannedField(field.field_name, field, column, reads_column))
    return ReusePlan(tuple(planned))


_ABSENT = object()  # a column the instance does not hold (deferred)


def _same(old: Any, new: Any) -> bool:
    """Whether a column holding ``old`` before and ``new`` after renders the same."""
    if old is _ABSENT or new is _ABSENT:
        return False
    if old is new:
        return True
    kind = type(old)
    if kind is not type(new):
        return False
    try:
        if old != new:
            return False
    except Exception:  # a value that cannot be compared is rendered again
        return False
    return kind in _EQUAL_RENDERS_ALIKE or repr(old) == repr(new)


def render_old(plan: ReusePlan, old: Replaced, saved: models.Model, new_data: Mapping[str, Any]) -> dict[str, Any]:
    """The old row as the serializer renders it, copying ``new_data`` (the serializer's rendering
    of ``saved``) wherever the field's column did not change."""
    from rest_framework.fields import SkipField
    from rest_framework.relations import PKOnlyObject

    state = saved.__dict__
    values = old.values
    data: dict[str, Any] = {}
    for planned in plan.fields:
        name, field, column = planned.name, planned.field, planned.column
        if column is not None:
            before = values.get(column, _ABSENT)
            if _same(before, state.get(column, _ABSENT)):
                if name in new_data:  # else DRF skipped the field, for both rows alike
                    data[name] = new_data[name]
                continue
            if planned.reads_column and before is not _ABSENT and not callable(before):
                data[name] = None if before is None else field.to_representation(before)
                continue
        # DRF's own rendering of one field, as Serializer.to_representation does it.
        try:
            attribute = field.get_attribute(old.instance(saved))
        except SkipField:
            continue
        value = attribute.pk if isinstance(attribute, PKOnlyObject) else attribute
        data[name] = None if value is None else field.to_representation(attribute)
    return data
