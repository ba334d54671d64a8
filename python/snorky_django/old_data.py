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
from typing import Any

from django.db import models

from snorky_django.representation import SerializerPlan

__all__ = ["Replaced", "render_old"]


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


# Types whose equal values always render alike (no precision, zone or sign hidden by ``==``).
_EQUAL_RENDERS_ALIKE = frozenset({str, int, bool, bytes, datetime.date, uuid.UUID, type(None)})


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


def render_old(plan: SerializerPlan, old: Replaced, saved: models.Model, new_data: Mapping[str, Any]) -> dict[str, Any]:
    """The old row as the serializer renders it, copying ``new_data`` (the serializer's rendering
    of ``saved``) wherever the field's column did not change."""
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
        except plan.skip_field:
            continue
        value = attribute.pk if isinstance(attribute, plan.pk_only) else attribute
        data[name] = None if value is None else field.to_representation(attribute)
    return data
