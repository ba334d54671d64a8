"""Deltas for the changes Django makes to subscribable rows without a save or a queryset method:
many-to-many changes, and ``on_delete`` handlers that update rows directly.

Both work the same way: before the change, read the rows it concerns (locked) and keep their
data; after it, read them again and publish an ``update`` delta for each row whose data changed,
in the transaction's batch like any other delta. A row whose data does not mention the relation
(its serializer leaves the field out) changes nothing and publishes nothing.

- **Many-to-many** (``m2m_changed``): ``add()``, ``remove()``, ``clear()`` and ``set()``, from
  either side. The rows concerned are the instance and the related objects (the ones added or
  removed, or for ``clear()`` the ones it had), each side only if its model is subscribable: a
  task's ``labels`` list changes, and so does the label's ``tasks`` list when its deltas carry it.
- **on_delete**: when a row another subscribable model points to is deleted, and the foreign key's
  ``on_delete`` updates the pointing rows without a queryset (Django's ``SET(callable)``, its
  ``SET_DEFAULT`` from Django 5.0, or any handler of your own), the deleted row's
  ``pre_delete``/``post_delete`` bracket the update. Handlers Django runs through the base
  manager's queryset (``SET_NULL``, ``SET(value)``) publish through the subscribable base manager
  instead (see :mod:`snorky_django.changes`); ``CASCADE`` deletes with signals.

Connecting a ``pre_delete`` receiver to the parent model means Django no longer deletes its rows
with the "fast delete" shortcut; each deleted parent costs two queries per such foreign key.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import m2m_changed

from snorky_django.delivery import captures_changes, enqueue

__all__ = ["connect_relations"]

_M2M_BEFORE = "_snorky_m2m_before"
_SET_BEFORE = "_snorky_on_delete_before"

# The many-to-many field of each through model connected, and the foreign keys each parent model's
# deletion updates directly: {parent: [(pointing model, foreign key), ...]}.
_through_fields: dict[type[models.Model], Any] = {}
_direct_updates: dict[type[models.Model], list[tuple[type[models.Model], models.ForeignKey[Any, Any]]]] = {}

# on_delete handlers that do not change the pointing rows, or do so with signals.
_NO_UPDATE = (models.CASCADE, models.PROTECT, models.RESTRICT, models.DO_NOTHING)


def connect_relations(model: type[models.Model]) -> None:
    """Connects the receivers for subscribable ``model``'s many-to-many fields (both sides) and for
    the parents whose deletion updates its rows directly."""
    for many in model._meta.many_to_many:
        _connect_through(many)
    for relation in model._meta.related_objects:
        if relation.many_to_many:
            _connect_through(relation.field)
    for field in model._meta.concrete_fields:
        if isinstance(field, models.ForeignKey) and _updates_directly(model, field):
            parent = field.remote_field.model
            if not isinstance(parent, type):
                continue  # not resolved yet (a model declared after this one in an isolated test)
            entries = _direct_updates.setdefault(parent, [])
            if (model, field) not in entries:
                entries.append((model, field))
            _connect_parent(parent, captures_changes())


def _connect_parent(parent: type[models.Model], connect: bool) -> None:
    """Connects (or disconnects, under logical delivery, where the database says what changed) the
    receivers around the deletion of ``parent``'s rows."""
    from snorky_django.changes import toggle_delete_receivers

    uid = f"snorky_django:on_delete:{parent._meta.label}"
    toggle_delete_receivers(parent, uid, _parent_pre_delete, _parent_post_delete, connect)


def sync_parent_receivers(connect: bool) -> None:
    """Connects or disconnects the receivers of every parent whose deletion updates rows directly."""
    for parent in _direct_updates:
        _connect_parent(parent, connect)


def _connect_through(field: Any) -> None:
    through = field.remote_field.through
    if not (isinstance(through, type) and issubclass(through, models.Model)):
        return  # not resolved yet
    _through_fields[through] = field
    m2m_changed.connect(
        _m2m_changed, sender=through, weak=False, dispatch_uid=f"snorky_django:m2m:{through._meta.label}"
    )


def _updates_directly(model: type[models.Model], field: models.ForeignKey[Any, Any]) -> bool:
    """Whether deleting the row ``field`` points to updates ``model``'s rows with no queryset of a
    subscribable manager: Django evaluates the rows first (the handler is not "lazy"), or the
    model's base manager does not publish."""
    from snorky_django.changes import SubscribableQuerySet

    on_delete = field.remote_field.on_delete
    if on_delete in _NO_UPDATE:
        return False
    base_queryset = getattr(model._base_manager, "_queryset_class", None)
    publishes = isinstance(base_queryset, type) and issubclass(base_queryset, SubscribableQuerySet)
    return not (getattr(on_delete, "lazy_sub_objs", False) and publishes)


def _data_by_pk(model: type[models.Model], pks: Any, using: str) -> dict[Any, dict[str, Any]]:
    """The delta data of ``model``'s rows ``pks``, read locked (in a transaction)."""
    from snorky_django.changes import _locked
    from snorky_django.serialization import serialize

    return {row.pk: serialize(row) for row in _locked(model, using).filter(pk__in=list(pks))}


def _changed(before: dict[tuple[type[models.Model], Any], dict[str, Any]], using: str) -> list[dict[str, Any]]:
    """Update deltas for the rows of ``before`` whose data changed, read again now."""
    from snorky_django.changes import _name
    from snorky_django.serialization import serialize

    by_model: dict[type[models.Model], list[Any]] = {}
    for model, pk in before:
        by_model.setdefault(model, []).append(pk)
    now = {model: model._base_manager.using(using).in_bulk(pks) for model, pks in by_model.items()}
    deltas: list[dict[str, Any]] = []
    for (model, pk), old_data in before.items():
        row = now[model].get(pk)
        if row is None:
            continue  # deleted meanwhile: its own delete delta says so
        new_data = serialize(row)
        if new_data != old_data:
            deltas.append({"type": "update", "model": _name(model), "newData": new_data, "oldData": old_data})
    return deltas


def _m2m_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    reverse: bool,
    model: type[models.Model],
    pk_set: set[Any] | None,
    using: str,
    **kwargs: Any,
) -> None:
    from snorky_django.changes import options_for

    phase, _, kind = action.partition("_")
    if kind not in ("add", "remove", "clear"):
        return
    key = f"{_M2M_BEFORE}:{sender._meta.label}:{kind}"
    if phase == "post":
        found = instance.__dict__.pop(key, None)
        if found:
            enqueue(_changed(found, using), using)
        return
    related = pk_set if pk_set is not None else _related_pks(sender, instance, reverse, using)
    before: dict[tuple[type[models.Model], Any], dict[str, Any]] = {}
    own = type(instance)
    if options_for(own) is not None and instance.pk is not None:
        for pk, data in _data_by_pk(own, [instance.pk], using).items():
            before[own, pk] = data
    if options_for(model) is not None and related:
        for pk, data in _data_by_pk(model, related, using).items():
            before[model, pk] = data
    instance.__dict__[key] = before


def _related_pks(through: type[models.Model], instance: models.Model, reverse: bool, using: str) -> list[Any]:
    """The objects ``instance`` is related to through ``through`` (what ``clear()`` removes)."""
    field = _through_fields[through]
    source, target = field.m2m_field_name(), field.m2m_reverse_field_name()
    if reverse:
        source, target = target, source
    rows = through._base_manager.using(using).filter(**{source: instance})
    return list(rows.values_list(target, flat=True))


def _parent_pre_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    from snorky_django.changes import _locked
    from snorky_django.serialization import serialize

    before: dict[tuple[type[models.Model], Any], dict[str, Any]] = {}
    for model, field in _direct_updates.get(sender, []):
        for row in _locked(model, using).filter(**{field.name: instance}):
            before[model, row.pk] = serialize(row)
    instance.__dict__[_SET_BEFORE] = before


def _parent_post_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    before = instance.__dict__.pop(_SET_BEFORE, None)
    if before:
        enqueue(_changed(before, using), using)
