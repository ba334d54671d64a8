"""``@subscribable``: models whose committed changes become DataSync deltas.

For a decorated model:

- ``save()`` publishes an ``insert`` delta for a new row and an ``update`` delta (``newData`` and
  ``oldData``, the row as it was in the database) for an existing one; an update that changes
  nothing publishes nothing. ``oldData`` is the row the instance was loaded as (or last saved as),
  confirmed by the ``UPDATE`` itself, or else read under ``SELECT ... FOR UPDATE`` (see
  :mod:`snorky_django.old_rows`). ``delete()`` publishes a ``delete`` delta, for the cascade too.
- Each ``save()`` runs in a transaction (``atomic(savepoint=False)``: a no-op inside an existing
  one), so the old row, the change and, in outbox mode, the outbox row are consistent.
- The model's automatic ``objects`` manager becomes a :class:`SubscribableManager`, whose querysets
  publish deltas for ``update()``, ``bulk_create()`` and ``bulk_update()`` too (``delete()`` goes
  through Django's signals). A model that declares its own manager should build it from
  :class:`SubscribableQuerySet` (the ``snorky.W002`` check says so). Its automatic *base* manager
  (the one Django itself uses for related objects) becomes one too, so the updates Django makes
  through it publish: a reverse foreign key's ``add()``, and the ``on_delete=SET_NULL`` (and
  ``SET_DEFAULT``, ``SET(value)``) updates of rows whose parent is deleted.
- :mod:`snorky_django.relations` covers what Django changes without any queryset method of the
  model: many-to-many changes (``m2m_changed``), and ``on_delete`` handlers whose updates bypass
  querysets (``SET(callable)``; ``SET_DEFAULT`` on Django 5).
- The server gets two dealers for it: a BroadcastDealer named after the model (``"Task"``, as in
  Snorky 0.1) and a SimpleDealer keyed by primary key (``"TaskById"``), used by
  :class:`~snorky_django.rest_framework.RetrieveSubscribeModelMixin`.

Not covered, because they do not go through the ORM's models: raw SQL (``cursor.execute``,
``QuerySet.raw``), fixture loading (``loaddata`` saves ``raw``), ``QuerySet.update()`` on a manager
that is not subscribable, and changes made by the database itself (triggers, ``ON DELETE`` rules
with ``DO_NOTHING``). Publish those with :func:`snorky_django.publish_deltas` in the same
transaction, or by saving the objects again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from django.apps import apps
from django.core.signals import setting_changed
from django.db import connections, models, router, transaction
from django.db.models import Q
from django.db.models.options import Options
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver
from django.utils.functional import cached_property

from snorky_django import old_rows
from snorky_django.delivery import captures_changes, enqueue
from snorky_django.old_data import Replaced
from snorky_django.serialization import forget_delta_data, jsonable, serialize, serialize_update, unstored_fields

__all__ = ["SubscribableManager", "SubscribableOptions", "SubscribableQuerySet", "options_for", "subscribable"]

logger = logging.getLogger("snorky_django")

M = TypeVar("M", bound=type[models.Model])

_REPLACED = "_snorky_replaced"
_CHECK = "_snorky_check"
_BEFORE = "_snorky_before"
_DELETED_DATA = "_snorky_deleted_data"
_CHUNK = 500

# Set while a bulk operation publishes its own deltas, so the QuerySet.update() calls Django's
# bulk_update() makes inside it do not publish them a second time.
_bulk_in_progress: ContextVar[bool] = ContextVar("snorky_bulk_in_progress", default=False)


@dataclass(frozen=True)
class SubscribableOptions:
    """What ``@subscribable`` recorded about a model."""

    model: type[models.Model]
    name: str
    """The model name deltas carry (``delta["model"]``) and the broadcast dealer's name."""
    serializer: type[Any] | str | None
    """A DRF serializer class (or its dotted path), when given to the decorator."""
    fields: tuple[str, ...] | None
    """The fields deltas carry, when given to the decorator."""
    dealers: bool
    """Whether the default dealers are registered on the server."""

    @property
    def pk_dealer(self) -> str:
        """The name of the default dealer keyed by primary key."""
        return f"{self.name}ById"

    @property
    def pk_field(self) -> str:
        """The key of the primary key in serialized data."""
        return self.model._meta.pk.name


_registry: dict[type[models.Model], SubscribableOptions] = {}


def registered() -> list[SubscribableOptions]:
    """Every ``@subscribable`` model's options, in declaration order."""
    return list(_registry.values())


def options_for(model: type[models.Model]) -> SubscribableOptions | None:
    """The options of ``model`` (or of the concrete model a proxy stands for), if subscribable."""
    options = _registry.get(model)
    if options is None and model._meta.proxy:
        options = _registry.get(model._meta.concrete_model)  # type: ignore[arg-type]
    return options


@overload
def subscribable(model: M, /) -> M: ...


@overload
def subscribable(
    *,
    name: str | None = None,
    serializer: type[Any] | str | None = None,
    fields: Sequence[str] | None = None,
    dealers: bool = True,
) -> Callable[[M], M]: ...


def subscribable(
    model: M | None = None,
    /,
    *,
    name: str | None = None,
    serializer: type[Any] | str | None = None,
    fields: Sequence[str] | None = None,
    dealers: bool = True,
) -> M | Callable[[M], M]:
    """Makes a model publish a delta for every committed insert, update and delete.

    Use bare (``@subscribable``) or with options:

    - ``name``: the model name in deltas and dealers (default: the class name);
    - ``serializer``: a DRF serializer class (or its dotted path, imported when first needed)
      producing the delta data;
    - ``fields``: the field names the delta data carries (instead of ``serializer``);
    - ``dealers``: ``False`` to register no default dealer for this model.

    Without ``serializer`` or ``fields``, the model's ``jsonify()`` decides, else the serializer of
    the views subscribing to it, else every field (check ``snorky.W006`` warns). Secret fields
    (``SNORKY["SECRET_FIELDS"]``) are left out unless named. See :mod:`snorky_django.serialization`.
    """
    if serializer is not None and fields is not None:
        raise TypeError("@subscribable takes serializer or fields, not both")
    if fields is not None and (
        isinstance(fields, str) or not fields or not all(isinstance(f, str) and f for f in fields)
    ):
        raise TypeError(f"@subscribable fields must be a non-empty list of field names, not {fields!r}")

    def decorate(cls: M) -> M:
        meta = cls._meta
        if meta.abstract or meta.proxy or meta.swapped:
            raise TypeError(f"@subscribable applies to concrete models, not to {cls.__name__}")
        options = SubscribableOptions(
            model=cls,
            name=name or cls.__name__,
            serializer=serializer,
            fields=tuple(fields) if fields is not None else None,
            dealers=dealers,
        )
        _registry[cls] = options
        forget_delta_data()
        _install_manager(cls)
        _install_base_manager(cls)
        _make_saves_atomic(cls)
        _check_updates(cls)
        old_rows.remember_loaded_rows(cls)
        old_rows.remember_refreshed_rows(cls)
        connect_signals(cls)
        if apps.ready:  # declared late (a test's isolated models): relations now, not at ready()
            from snorky_django.relations import connect_relations

            connect_relations(cls)
        return cls

    return decorate(model) if model is not None else decorate


def connect_signals(sender: type[models.Model]) -> None:
    """Connects the delta receivers for ``sender`` (a subscribable model or one of its proxies)."""
    uid = f"snorky_django:{sender._meta.label}"
    pre_save.connect(_pre_save, sender=sender, weak=False, dispatch_uid=uid)
    post_save.connect(_post_save, sender=sender, weak=False, dispatch_uid=uid)
    _connect_deletes(sender, captures_changes())


def _connect_deletes(sender: type[models.Model], connect: bool) -> None:
    """Connects (or disconnects) the delete receivers of ``sender``. Not connected under logical
    delivery: a model with delete receivers loses Django's fast delete (a queryset or cascade
    delete then reads every row first), and there they would do nothing."""
    toggle_delete_receivers(sender, f"snorky_django:{sender._meta.label}", _pre_delete, _post_delete, connect)


def toggle_delete_receivers(
    sender: type[models.Model], uid: str, before: Callable[..., None], after: Callable[..., None], connect: bool
) -> None:
    """Connects ``before``/``after`` to ``sender``'s ``pre_delete``/``post_delete`` under ``uid``, or
    disconnects them."""
    if connect:
        pre_delete.connect(before, sender=sender, weak=False, dispatch_uid=uid)
        post_delete.connect(after, sender=sender, weak=False, dispatch_uid=uid)
    else:
        pre_delete.disconnect(sender=sender, dispatch_uid=uid)
        post_delete.disconnect(sender=sender, dispatch_uid=uid)


def sync_delete_receivers() -> None:
    """Connects or disconnects every delete receiver for the delivery mode now set (at start, and
    when the ``SNORKY`` setting changes)."""
    from snorky_django.relations import sync_parent_receivers

    connect = captures_changes()
    for model in [options.model for options in registered()]:
        _connect_deletes(model, connect)
    if apps.ready:
        for model in apps.get_models():
            if model._meta.proxy and options_for(model) is not None:
                _connect_deletes(model, connect)
    sync_parent_receivers(connect)


@receiver(setting_changed)
def _delivery_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "SNORKY":
        sync_delete_receivers()


def connect_proxies() -> None:
    """Connects the receivers for proxies of subscribable models, and the relation receivers of
    :mod:`snorky_django.relations` (called once apps are ready)."""
    from snorky_django.relations import connect_relations

    for model in apps.get_models():
        if model._meta.proxy and options_for(model) is not None:
            connect_signals(model)
            _install_base_manager(model)
    for options in registered():
        connect_relations(options.model)


class _SubscribableOptions(Options):  # type: ignore[type-arg]
    """A model's ``_meta`` whose automatic base manager is a :class:`SubscribableManager`.

    Django updates related rows through the base manager (a reverse foreign key's ``add()``, the
    deleting collector's ``SET_NULL`` updates); its automatic one is a plain ``Manager`` that no
    field or option can replace without a migration, so the class of ``_meta`` is swapped for this
    one, which builds the same manager on a subscribable queryset. A base manager the model names
    itself (``Meta.base_manager_name``) is left alone.
    """

    @cached_property
    def base_manager(self) -> models.Manager[Any]:
        manager: models.Manager[Any] = Options.base_manager.func(self)  # type: ignore[attr-defined]
        if getattr(manager, "auto_created", False) and type(manager) is models.Manager:
            replacement = SubscribableManager()
            replacement.name = manager.name
            replacement.model = self.model
            replacement.auto_created = True
            return replacement
        return manager


def _install_base_manager(cls: type[models.Model]) -> None:
    meta = cls._meta
    if type(meta) is Options:
        meta.__class__ = _SubscribableOptions
        meta.__dict__.pop("base_manager", None)


def _install_manager(cls: type[models.Model]) -> None:
    """Replaces the ``objects`` manager Django created automatically by a subscribable one."""
    local = cls._meta.local_managers
    if len(local) != 1:
        return
    manager = local[0]
    if not getattr(manager, "auto_created", False) or type(manager) is not models.Manager:
        return
    local.remove(manager)
    replacement = SubscribableManager()
    replacement.auto_created = True
    cls.add_to_class(manager.name, replacement)


def _make_saves_atomic(cls: type[models.Model]) -> None:
    save_base = cls.save_base
    if getattr(save_base, "_snorky_atomic", False):
        return

    @functools.wraps(save_base)
    def atomic_save_base(self: models.Model, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 3 or not captures_changes():
            # `using` given positionally: leave the call as it is. Logical delivery reads the
            # change from the database: the save needs no transaction of its own.
            return save_base(self, *args, **kwargs)
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        kwargs["using"] = using
        with transaction.atomic(using=using, savepoint=False):
            return save_base(self, *args, **kwargs)

    atomic_save_base._snorky_atomic = True  # type: ignore[attr-defined]
    cls.save_base = atomic_save_base  # type: ignore[method-assign]


def _locked(model: type[models.Model], using: str) -> models.QuerySet[Any]:
    """A plain queryset of ``model`` that locks what it reads when a transaction is open."""
    queryset = model._base_manager.using(using)
    if connections[using].in_atomic_block:
        queryset = queryset.select_for_update()
    return queryset


def _name(model: type[models.Model]) -> str:
    options = options_for(model)
    assert options is not None, f"{model.__name__} is not subscribable"
    return options.name


def _check_updates(cls: type[models.Model]) -> None:
    """Makes the ``UPDATE`` of a save confirm the row it replaces (see :mod:`snorky_django.old_rows`)."""
    do_update = cls._do_update
    if getattr(do_update, "_snorky_checks", False):
        return

    @functools.wraps(do_update)
    def checked_update(
        self: models.Model, base_qs: models.QuerySet[Any], using: str, pk_val: Any, values: Any, *rest: Any
    ) -> Any:
        check: old_rows.Check | None = self.__dict__.pop(_CHECK, None)
        if check is None or not values:
            return do_update(self, base_qs, using, pk_val, values, *rest)
        unrestrict = old_rows.restrict(base_qs, check, using)
        updated = do_update(self, base_qs, using, pk_val, values, *rest)
        if updated:
            # The database replaced the row this instance remembered: that row is the old data.
            self.__dict__[_REPLACED] = _replaced_row(type(self), using, check)
            self.__dict__[_BEFORE] = check.row
            return updated
        # The row changed since (or is gone): read it under lock, then update it as Django would.
        unrestrict()
        _read_old_data(self, using)
        return do_update(self, base_qs, using, pk_val, values, *rest)

    checked_update._snorky_checks = True  # type: ignore[attr-defined]
    cls._do_update = checked_update  # type: ignore[method-assign, assignment]


def _replaced_row(model: type[models.Model], using: str, check: old_rows.Check) -> Replaced:
    """The row a checked ``UPDATE`` confirmed it replaced; an instance is made of it only if the
    old data needs one."""
    attnames = check.columns.attnames

    def build(saved: models.Model) -> models.Model:
        return _share_relations(model.from_db(using, list(attnames), check.row), saved)

    return Replaced(dict(zip(attnames, check.row, strict=True)), build)


def _read_old_data(instance: models.Model, using: str) -> None:
    """Reads the row ``instance`` is about to replace, under lock, as the delta's old data."""
    replaced = before = None
    old = _locked(type(instance), using).filter(pk=instance.pk).first()
    if old is not None:
        replaced = Replaced.loaded(old, _share_relations)
        before = old_rows.row_of(old)
    instance.__dict__[_REPLACED] = replaced
    instance.__dict__[_BEFORE] = before


def _pre_save(sender: type[models.Model], instance: models.Model, raw: bool, using: str, **kwargs: Any) -> None:
    if not captures_changes():
        return
    state = instance.__dict__
    state.pop(_CHECK, None)
    state.pop(_BEFORE, None)
    state[_REPLACED] = None
    if raw:
        old_rows.forget(instance)
        return
    pk_field = instance._meta.pk
    # A new instance whose primary key has a default is inserted without looking (as Django does).
    has_db_default = getattr(pk_field, "has_db_default", None)  # Django 5.0+
    new_with_default = (
        instance._state.adding
        and pk_field is not None
        and (pk_field.has_default() or (callable(has_db_default) and has_db_default()))
    )
    if instance.pk is None or new_with_default:
        return
    check = old_rows.check_for(instance, using)
    if check is not None:
        state[_CHECK] = check  # the UPDATE confirms the remembered row (or reads it, if it changed)
    else:
        _read_old_data(instance, using)


def _post_save(
    sender: type[models.Model], instance: models.Model, created: bool, raw: bool, using: str, **kw: Any
) -> None:
    if not captures_changes():
        return
    state = instance.__dict__
    replaced: Replaced | None = state.pop(_REPLACED, None)
    before = state.pop(_BEFORE, None)
    state.pop(_CHECK, None)
    if raw:
        return
    model = _name(sender)
    if created or replaced is None:
        enqueue([{"type": "insert", "model": model, "data": serialize(instance)}], using)
    else:
        new_data, old_data = serialize_update(instance, replaced)
        if new_data != old_data:
            enqueue([{"type": "update", "model": model, "newData": new_data, "oldData": old_data}], using)
    old_rows.remember_saved(instance, kw.get("update_fields"), None if created else before)


def _pre_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    data = None
    if kwargs.get("origin") is instance:
        # `instance.delete()`: the caller's copy may be stale, the database's is what clients saw.
        # (Objects collected by a queryset delete or a cascade were just read by Django.)
        current = _locked(type(instance), using).filter(pk=instance.pk).first()
        if current is not None:
            data = serialize(_share_relations(current, instance))
    instance.__dict__[_DELETED_DATA] = data if data is not None else serialize(instance)


def _post_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    data = instance.__dict__.pop(_DELETED_DATA, None)
    if data is None:
        data = serialize(instance)
    enqueue([{"type": "delete", "model": _name(sender), "data": data}], using)


def _share_relations(row: models.Model, source: models.Model) -> models.Model:
    """Gives ``row`` (just read from the database) the related objects ``source`` (the caller's
    copy of the same row) has loaded, where both point to the same one; returns ``row``.

    A row read back loads nothing related, so a serializer reading ``owner.username`` would run
    one query per row: with the caller's objects, it runs none, as it would for the caller.
    """
    for field in row._meta.concrete_fields:
        if (
            field.is_relation
            and (field.many_to_one or field.one_to_one)
            and field.is_cached(source)  # type: ignore[attr-defined]
            and not field.is_cached(row)  # type: ignore[attr-defined]
            and getattr(row, field.attname) == getattr(source, field.attname)
        ):
            field.set_cached_value(row, field.get_cached_value(source))  # type: ignore[attr-defined]
    return row


def _share_all(rows: dict[Any, models.Model], objs: Iterable[models.Model]) -> None:
    """:func:`_share_relations` for every row of ``rows`` (by primary key) from ``objs``."""
    for obj in objs:
        row = rows.get(obj.pk)
        if row is not None and row is not obj:
            _share_relations(row, obj)


def _load_relations(model: type[models.Model], rows: Iterable[models.Model]) -> None:
    """Loads the objects the rows' foreign keys point to, one query per foreign key, so that
    serializing rows that nobody loaded (a queryset's ``update()``) does not query once per row."""
    names = [
        field.name
        for field in model._meta.concrete_fields
        if field.is_relation and (field.many_to_one or field.one_to_one)
    ]
    if names:
        models.prefetch_related_objects(list(rows), *names)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SubscribableQuerySet(models.QuerySet[Any]):
    """A QuerySet whose bulk operations publish deltas (for ``@subscribable`` models).

    ``update()``, ``bulk_create()`` and ``bulk_update()`` read the affected rows before (locked)
    and after the change, in one transaction, and publish one delta per changed row, together
    with the transaction's other deltas. That costs two extra queries and holds the rows in
    memory: for millions of rows, prefer batches. ``delete()`` publishes through Django's signals.
    """

    def _subscribable(self) -> bool:
        return options_for(self.model) is not None and not _bulk_in_progress.get() and captures_changes()

    def update(self, **kwargs: Any) -> int:
        """Updates the rows and publishes an ``update`` delta for each row that changed."""
        if not self._subscribable():
            return super().update(**kwargs)
        using = self.db
        with transaction.atomic(using=using, savepoint=False):
            pks = list(self.values_list("pk", flat=True))
            old = _locked(self.model, using).in_bulk(pks)
            updated = 0
            for chunk in _chunks(pks):
                updated += super(SubscribableQuerySet, self.filter(pk__in=chunk)).update(**kwargs)
            new = self.model._base_manager.using(using).in_bulk(pks)
            _load_relations(self.model, [*old.values(), *new.values()])
            enqueue(_update_deltas(self.model, pks, old, new), using)
        return updated

    update.alters_data = True  # type: ignore[attr-defined]

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Creates the objects and publishes an ``insert`` delta for each.

        With ``update_conflicts=True`` and ``unique_fields``, rows that existed get an ``update``
        delta instead (rows are matched by their unique fields). Rows whose primary key the
        database does not return (``ignore_conflicts``, or a backend without ``RETURNING``)
        cannot be read back: that is logged as a warning.
        """
        if not self._subscribable():
            return super().bulk_create(objs, *args, **kwargs)
        objs = list(objs)
        using = self.db
        with transaction.atomic(using=using, savepoint=False):
            unique = self._unique_fields(kwargs)
            before = self._rows_by_key(objs, unique) if unique else {}
            reset = _bulk_in_progress.set(True)
            try:
                created = super().bulk_create(objs, *args, **kwargs)
            finally:
                _bulk_in_progress.reset(reset)
            if unique:
                after = self._rows_by_key(objs, unique)
                keys = list(dict.fromkeys(self._key(obj, unique) for obj in objs))
                enqueue(_update_deltas(self.model, keys, before, after, insert_missing=True), using)
                return created
            pks = [obj.pk for obj in created if obj.pk is not None]
            if len(pks) < len(created):
                logger.warning(
                    "Snorky: bulk_create on %s did not return %d primary key(s): no delta for those rows",
                    self.model.__name__,
                    len(created) - len(pks),
                )
            # The objects hold what was inserted, as a save()d instance does; only those holding
            # an expression (a database default, F()) are read back, in one query.
            new = {obj.pk: obj for obj in created if obj.pk is not None}
            for obj in new.values():
                old_rows.remember_saved(obj, None, None)  # forgets those holding an expression
            unstored = [pk for pk, obj in new.items() if unstored_fields(obj)]
            if unstored:
                read = self.model._base_manager.using(using).in_bulk(unstored)  # they remember theirs
                _share_all(read, objs)
                new.update(read)
            enqueue(_update_deltas(self.model, pks, {}, new, insert_missing=True), using)
        return created

    bulk_create.alters_data = True  # type: ignore[attr-defined]

    def _unique_fields(self, kwargs: dict[str, Any]) -> list[Any]:
        """The fields identifying the rows of an upsert (``update_conflicts`` with ``unique_fields``)."""
        names = kwargs.get("unique_fields")
        if not kwargs.get("update_conflicts") or not names:
            return []
        meta = self.model._meta
        return [meta.pk if name == "pk" else meta.get_field(name) for name in names]

    @staticmethod
    def _key(obj: models.Model, fields: list[Any]) -> tuple[Any, ...]:
        return tuple(getattr(obj, field.attname) for field in fields)

    def _rows_by_key(self, objs: list[Any], fields: list[Any]) -> dict[Any, models.Model]:
        """The rows whose unique fields equal those of ``objs``, by those values (locked)."""
        rows: dict[Any, models.Model] = {}
        for chunk in _chunks(objs, 100):
            condition = Q()
            for obj in chunk:
                condition |= Q(**{field.attname: getattr(obj, field.attname) for field in fields})
            for row in _locked(self.model, self.db).filter(condition):
                rows[self._key(row, fields)] = row
        return rows

    def bulk_update(self, objs: Iterable[Any], fields: Iterable[str], batch_size: int | None = None) -> int:
        """Updates the objects' ``fields`` and publishes an ``update`` delta for each changed row."""
        if not self._subscribable():
            return super().bulk_update(objs, fields, batch_size=batch_size)
        objs = list(objs)
        using = self.db
        with transaction.atomic(using=using, savepoint=False):
            pks = list(dict.fromkeys(obj.pk for obj in objs))
            old = _locked(self.model, using).in_bulk(pks)
            reset = _bulk_in_progress.set(True)
            try:
                updated = super().bulk_update(objs, fields, batch_size=batch_size)
            finally:
                _bulk_in_progress.reset(reset)
            new = self.model._base_manager.using(using).in_bulk(pks)
            _share_all(old, objs)
            _share_all(new, objs)
            enqueue(_update_deltas(self.model, pks, old, new), using)
        return updated

    bulk_update.alters_data = True  # type: ignore[attr-defined]


def _update_deltas(
    model: type[models.Model],
    keys: Iterable[Any],
    old: dict[Any, models.Model],
    new: dict[Any, models.Model],
    *,
    insert_missing: bool = False,
) -> list[dict[str, Any]]:
    """Deltas for rows read before (``old``) and after (``new``) a bulk change, in ``keys`` order."""
    name = _name(model)
    deltas: list[dict[str, Any]] = []
    for key in keys:
        after = new.get(key)
        if after is None:
            continue
        before = old.get(key)
        if before is None:
            if insert_missing:
                deltas.append({"type": "insert", "model": name, "data": serialize(after)})
            continue
        new_data, old_data = serialize_update(after, Replaced.loaded(before, _share_relations))
        if old_data != new_data:
            deltas.append({"type": "update", "model": name, "newData": new_data, "oldData": old_data})
    return deltas


class SubscribableManager(models.Manager.from_queryset(SubscribableQuerySet)):  # type: ignore[misc]
    """The default manager of ``@subscribable`` models: its bulk operations publish deltas."""


def pk_query(value: Any) -> Any:
    """A primary key as the default primary-key dealer sees it in serialized data."""
    return jsonable(value.pk if isinstance(value, models.Model) else value)
