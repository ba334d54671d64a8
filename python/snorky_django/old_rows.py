"""The row a ``save()`` replaces, learned by the ``UPDATE`` itself instead of a read before it.

An ``update`` delta carries ``oldData``, the row as the database had it just before the save: the
dealers route the change by it (a todo given to someone else leaves its old owner's lists). Reading
that row first (``SELECT ... FOR UPDATE``) costs a statement, a round trip and an ORM query per
save, which on a small model is most of what ``@subscribable`` would add to a ``save()``.

So an instance remembers the row it was loaded as (``from_db``) or last saved as, and the save's
``UPDATE`` checks the memory: the statement gets ``AND <column> IS NOT DISTINCT FROM <remembered
value>`` for every column. When it updates the row, the database has confirmed, under the row's
lock, that the row it replaced is the remembered one: that is ``oldData``, without a read. When it
updates nothing (someone changed the row since, a rolled-back transaction left the memory wrong,
the row is gone), the save reads the old row under lock and runs the plain ``UPDATE``: as before,
one statement more. A wrong memory therefore costs time, never a wrong delta.

The check needs an equality that is exact: it is used on PostgreSQL and SQLite, for models whose
columns all have a type that compares exactly (no ``citext``, no ``json`` or custom types, no
``db_collation``), without multi-table inheritance or ``select_on_save``. Any other model or
database reads the old row first. What is remembered is the values as Python holds them: a value
the database stores differently but compares equal to (``Decimal("1.5")`` in a column holding
``1.50``) is carried in ``oldData`` as the instance held it.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections, models
from django.db.models.sql.where import AND, ExtraWhere

from snorky_django.delivery import captures_changes

__all__ = [
    "Check",
    "check_for",
    "forget",
    "remember_loaded_rows",
    "remember_refreshed_rows",
    "remember_saved",
    "restrict",
    "row_of",
]

#: Where an instance keeps the row it believes the database has (a tuple in ``concrete_fields``
#: order, the layout ``Model.from_db`` receives).
_ROW = "_snorky_row"

_VENDORS = frozenset({"postgresql", "sqlite"})

# Column types whose equality is exact on PostgreSQL (``citext``, ``json``, ``xml``, geometric and
# user types are not: they compare loosely or not at all).
_EXACT_POSTGRESQL_TYPES = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "boolean",
        "varchar",
        "char",
        "text",
        "date",
        "time",
        "timestamp",
        "timestamp with time zone",
        "numeric",
        "double precision",
        "real",
        "uuid",
        "interval",
        "jsonb",
        "bytea",
        "inet",
    }
)
# Django's own fields whose preparation returns a value of this type unchanged (a datetime only
# when aware: Django makes a naive one aware first).
_BOUND_AS_IS: dict[type, type] = {
    **dict.fromkeys(
        (
            models.AutoField,
            models.BigAutoField,
            models.SmallAutoField,
            models.IntegerField,
            models.BigIntegerField,
            models.SmallIntegerField,
            models.PositiveIntegerField,
            models.PositiveBigIntegerField,
            models.PositiveSmallIntegerField,
        ),
        int,
    ),
    **dict.fromkeys((models.CharField, models.TextField, models.SlugField, models.EmailField), str),
    models.BooleanField: bool,
    models.DateTimeField: datetime.datetime,
}
_TYPE_NAME = re.compile(r"^([a-z ]+?)\s*(\(.*\))?$")


@dataclass(frozen=True)
class _Columns:
    """How the rows of one model are checked on one database."""

    fields: tuple[Any, ...]
    attnames: tuple[str, ...]
    where: str
    """``<column> IS NOT DISTINCT FROM %s AND ...`` for every concrete field, in ``fields`` order."""
    as_is: tuple[type | None, ...]
    """For each field, the type of value that its own preparation would return unchanged, so the
    value is bound as it is (``None``: always prepared by the field)."""


@dataclass(frozen=True)
class Check:
    """The row a coming ``UPDATE`` expects to replace."""

    columns: _Columns
    row: tuple[Any, ...]

    def params(self, using: str) -> list[Any]:
        params = list(self.row)
        connection = None
        for position, (field, as_is) in enumerate(zip(self.columns.fields, self.columns.as_is, strict=True)):
            value = params[position]
            if value is None or (type(value) is as_is and getattr(value, "tzinfo", True) is not None):
                continue
            connection = connection or connections[using]
            params[position] = field.get_db_prep_value(value, connection, prepared=False)
        return params


_plans: dict[tuple[type[models.Model], str, str], _Columns | None] = {}


def _columns(model: type[models.Model], using: str) -> _Columns | None:
    """How rows of ``model`` are checked on ``using``; ``None`` when they cannot be."""
    connection = connections[using]
    key = (model, using, connection.vendor)
    if key in _plans:
        return _plans[key]
    meta = model._meta
    plan: _Columns | None = None
    if connection.vendor in _VENDORS and not meta.parents and not meta.select_on_save:
        fields = tuple(meta.concrete_fields)
        if all(_compares_exactly(field, connection) for field in fields):
            quote = connection.ops.quote_name
            same = "IS NOT DISTINCT FROM" if connection.vendor == "postgresql" else "IS"
            where = " AND ".join(f"{quote(str(field.column))} {same} %s" for field in fields)
            as_is = tuple(_bound_as_is(field, connection.vendor) for field in fields)
            plan = _Columns(fields, tuple(field.attname for field in fields), f"({where})", as_is)
    _plans[key] = plan
    return plan


def _bound_as_is(field: Any, vendor: str) -> type | None:
    """The type of value Django's own ``field`` binds unchanged on ``vendor``, if any (a subclass
    may prepare values its own way: it is always asked)."""
    if type(field) in (models.ForeignKey, models.OneToOneField):
        field = field.target_field
    bound = _BOUND_AS_IS.get(type(field))
    if bound is datetime.datetime and vendor != "postgresql":
        return None  # SQLite stores datetimes as text: Django formats them
    return bound


def _compares_exactly(field: Any, connection: Any) -> bool:
    if getattr(field, "db_collation", None):
        return False
    if connection.vendor != "postgresql":
        return True  # SQLite: IS compares values exactly, whatever the declared type
    db_type = field.db_type(connection)
    if not isinstance(db_type, str):
        return False
    match = _TYPE_NAME.match(db_type.lower())
    return match is not None and match.group(1) in _EXACT_POSTGRESQL_TYPES


def remember_loaded_rows(model: type[models.Model]) -> None:
    """Makes instances of ``model`` loaded from the database remember the row they were loaded as."""
    loader = model.from_db.__func__  # type: ignore[attr-defined]
    if getattr(loader, "_snorky_remembers", False):
        return

    def from_db(cls: type[models.Model], db: str | None, field_names: Any, values: Any) -> models.Model:
        instance: models.Model = loader(cls, db, field_names, values)
        if not captures_changes():
            return instance  # logical delivery: saves never check the row they replace
        # Every field loaded: ``values`` are in concrete_fields order (what from_db itself assumes).
        if len(values) == len(cls._meta.concrete_fields):
            instance.__dict__[_ROW] = values
        return instance

    from_db._snorky_remembers = True  # type: ignore[attr-defined]
    model.from_db = classmethod(from_db)  # type: ignore[method-assign, assignment]


def remember_refreshed_rows(model: type[models.Model]) -> None:
    """Makes ``refresh_from_db()`` of ``model``'s instances update the row they remember: the
    fields it reloaded now hold what the database has."""
    refresh = model.refresh_from_db
    if getattr(refresh, "_snorky_remembers", False):
        return

    @functools.wraps(refresh)
    def refresh_from_db(self: models.Model, *args: Any, **kwargs: Any) -> None:
        refresh(self, *args, **kwargs)
        fields = kwargs["fields"] if "fields" in kwargs else (args[1] if len(args) > 1 else None)
        if fields is None:
            remember_saved(self, None, None)  # every loaded field was reloaded
            return
        row = row_of(self)
        if row is None:
            return
        reloaded = set(fields)
        state = self.__dict__
        state[_ROW] = tuple(
            state[field.attname] if field.attname in reloaded or field.name in reloaded else value
            for field, value in zip(self._meta.concrete_fields, row, strict=True)
        )

    refresh_from_db._snorky_remembers = True  # type: ignore[attr-defined]
    model.refresh_from_db = refresh_from_db  # type: ignore[method-assign]


def row_of(instance: models.Model) -> tuple[Any, ...] | None:
    """The row ``instance`` believes the database has, if it knows one."""
    row = instance.__dict__.get(_ROW)
    if row is None or len(row) != len(instance._meta.concrete_fields):
        return None
    return tuple(row)


def check_for(instance: models.Model, using: str) -> Check | None:
    """What the ``UPDATE`` of ``instance`` on ``using`` can check, if anything."""
    if instance._state.db != using:
        return None
    row = row_of(instance)
    if row is None:
        return None
    # A proxy has its concrete model's rows (and a parent in _meta.parents, which is no inheritance).
    columns = _columns(instance._meta.concrete_model or type(instance), using)
    return None if columns is None else Check(columns, row)


def restrict(queryset: models.QuerySet[Any], check: Check, using: str) -> Callable[[], None]:
    """Restricts ``queryset``, in place, to the row ``check`` expects; returns what lifts the
    restriction again.

    In place, because a save's ``UPDATE`` starts from a queryset made for it alone, and cloning
    one (as ``extra()`` does) costs more than the check itself.
    """
    condition = ExtraWhere([check.columns.where], check.params(using))
    where = queryset.query.where
    where.add(condition, AND)
    return lambda: where.children.remove(condition)  # type: ignore[arg-type]


def remember_saved(instance: models.Model, update_fields: Any, before: tuple[Any, ...] | None) -> None:
    """After a save of ``instance`` (its ``update_fields``; ``before``: the row it replaced, when
    known), remembers the row it wrote, or forgets when that is not known (an expression was
    saved, a field is deferred, only some fields were written over an unknown row)."""
    state = instance.__dict__
    row: list[Any] = []
    for position, field in enumerate(instance._meta.concrete_fields):
        if update_fields is not None and field.name not in update_fields and field.attname not in update_fields:
            if before is None:
                state.pop(_ROW, None)
                return
            row.append(before[position])
            continue
        value = state.get(field.attname, _ROW)
        if value is _ROW or hasattr(value, "resolve_expression"):
            state.pop(_ROW, None)
            return
        row.append(value)
    state[_ROW] = tuple(row)


def forget(instance: models.Model) -> None:
    """Drops what ``instance`` remembers of its row."""
    instance.__dict__.pop(_ROW, None)
