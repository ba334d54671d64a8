"""Writing outbox rows (``DELIVERY = "outbox"``) in the transaction that made the change.

A transaction's outbox rows must commit or roll back with it. Written as soon as each change is
made, they cost a statement and a database round trip per change, which on a single-row
``save()`` is most of what the outbox adds to it. So on PostgreSQL with psycopg 3 (client-side
binding, Django's default) the rows of a transaction are sent together with its ``COMMIT``, in the
same message: ``INSERT ... ; NOTIFY snorky_outbox; COMMIT``. The ``INSERT`` still runs inside the
transaction (a failure aborts the transaction, and the ``COMMIT`` with it), so nothing changes but
the round trips.

Which rows: each :func:`write` inside an atomic block registers its prepared rows as an
``on_commit`` callback, so a savepoint rollback discards the rows of what it undid exactly as
Django discards its callbacks; at the commit, the rows of the callbacks still registered are
inserted, in order. The callbacks themselves do nothing afterwards, unless the rows did not leave
with a commit (``TestCase.captureOnCommitCallbacks(execute=True)`` runs callbacks of a
transaction that never commits): they are inserted then. A transaction holds about
:data:`DEFERRED_ROWS` rows for its commit; past that, the waiting rows and the new ones are
inserted at once (in order, inside the transaction), so a long transaction does not hold its
deltas in memory (unless rows registered before a savepoint still open are waiting: they, and
so the rows after them, wait for the commit, see ``_take_waiting``).

Other databases, and PostgreSQL with ``server_side_binding`` (which cannot send two statements in
one message), insert the rows at once, one ``INSERT`` per :func:`write` (and on PostgreSQL a
``NOTIFY``).

What a row binds: on PostgreSQL, its delta as JSON text (cast to ``jsonb`` by the statement) and
no time at all (``created`` is the database's ``statement_timestamp()``). Bound as the model's
fields prepare them, they went through the ``JSONField``'s adapter and psycopg's literal of a
``datetime``: a fifth of what the outbox adds to a 100-row ``bulk_create()`` in Python, and
a smaller but measurable share of a single-row ``save()``'s. Elsewhere each row binds ``created``
and ``delta`` as the fields prepare them.
"""

from __future__ import annotations

import functools
import json
import types
from typing import Any

from django.db import connections
from django.utils import timezone

__all__ = ["NOTIFY_CHANNEL", "write"]

#: Outbox rows per ``INSERT``: at most two parameters each, under SQLite's oldest limit of 999.
ROWS_PER_INSERT = 400

#: The channel the relay listens to on PostgreSQL.
NOTIFY_CHANNEL = "snorky_outbox"

#: Wakes the relay (``LISTEN``-ing on :data:`NOTIFY_CHANNEL`) when the transaction commits:
#: PostgreSQL delivers a notification only then, and once however many times a transaction sends
#: it. It is sent with the rows rather than by a trigger, whose function every new connection would
#: compile (about a millisecond) before its first outbox write.
_NOTIFY = f"NOTIFY {NOTIFY_CHANNEL}"

#: The most outbox rows a transaction keeps in memory for its commit to carry; beyond, they are
#: written at once (still in the transaction).
DEFERRED_ROWS = 1000


class _Rows:
    """An ``on_commit`` callback holding one :func:`write`'s prepared rows (their parameters, see
    :func:`_parameters_per_row`) until the commit carries them."""

    __slots__ = ("params", "using", "written")

    def __init__(self, params: list[Any], using: str) -> None:
        self.params = params
        self.using = using
        self.written = False

    def take(self) -> list[Any]:
        """The rows' parameters, for a statement about to write them; they count as written."""
        params, self.written, self.params = self.params, True, []
        return params

    def __call__(self) -> None:
        if not self.written:  # the rows did not leave with a COMMIT (see the module docs)
            _insert_now(connections[self.using], self.take())


def write(deltas: list[dict[str, Any]], using: str) -> None:
    """Writes one outbox row per delta in the current transaction on ``using`` (see the module
    docs). The rows are prepared here, so a delta that cannot be stored fails the change now."""
    connection = connections[using]
    params: list[Any] = []
    if _binds_json_text(connection.vendor):
        # The module docs say why not through the fields. (The model's JSONField has no encoder:
        # this is what it would store.) A NaN or an infinity, which JSON cannot carry, fails here
        # rather than at the commit (a model's deltas never hold one: they become null).
        params.extend(json.dumps(delta, allow_nan=False) for delta in deltas)
    else:
        from snorky_django.models import OutboxEntry

        meta = OutboxEntry._meta
        created_field, delta_field = meta.get_field("created"), meta.get_field("delta")
        created = created_field.get_db_prep_save(timezone.now(), connection)  # type: ignore[union-attr]
        for delta in deltas:
            params.extend((created, delta_field.get_db_prep_save(delta, connection)))  # type: ignore[union-attr]
    if connection.in_atomic_block and _rides_the_commit(connection):
        # The rows waiting for the commit are held in memory: past DEFERRED_ROWS in one
        # transaction (a long loop of saves, a bulk operation), they are written at once instead.
        hooks = connection.run_on_commit
        waiting = connection.__dict__.get("_snorky_outbox_waiting")
        deferred = waiting[1] if waiting is not None and waiting[0] is hooks else 0
        rows = len(params) // _parameters_per_row(connection.vendor)
        waiting_params = _take_waiting(connection) if deferred + rows > DEFERRED_ROWS else None
        if waiting_params is None:
            connection.on_commit(_Rows(params, using))
            # Counted again from zero when they had to keep waiting: the next look is
            # DEFERRED_ROWS later, not at every write.
            counted = deferred + rows if deferred + rows <= DEFERRED_ROWS else 0
            connection.__dict__["_snorky_outbox_waiting"] = (hooks, counted)
            return
        params = [*waiting_params, *params]  # the earlier rows first: ids keep the order
        connection.__dict__["_snorky_outbox_waiting"] = (hooks, 0)
    _insert_now(connection, params)


def _insert_now(connection: Any, params: list[Any]) -> None:
    with connection.cursor() as cursor:
        for sql, chunk in _inserts(connection, params):
            cursor.execute(sql, chunk)
        if connection.vendor == "postgresql":
            cursor.execute(_NOTIFY)


def _take_waiting(connection: Any) -> list[Any] | None:
    """The parameters of the rows waiting for ``connection``'s commit, now marked written; ``None``
    (and nothing taken) when they must keep waiting.

    Rows registered before a savepoint that is still open must wait for the commit: written
    inside it, their ``INSERT`` would be undone by its rollback while their callback, registered
    outside it, survives, and they would be lost. Rows after them then wait too, so that the
    outbox's ids keep the order of the changes.
    """
    open_savepoints = set(connection.savepoint_ids)
    waiting = [
        (savepoints, func)
        for savepoints, func, _ in connection.run_on_commit
        if isinstance(func, _Rows) and not func.written
    ]
    if any(not open_savepoints <= savepoints for savepoints, _ in waiting):
        return None
    return [param for _, func in waiting for param in func.take()]


def _binds_json_text(vendor: str) -> bool:
    """Whether a row on ``vendor`` binds only its delta, as JSON text (see the module docs)."""
    return vendor == "postgresql"


def _parameters_per_row(vendor: str) -> int:
    """How many parameters an outbox row binds on ``vendor``."""
    return 1 if _binds_json_text(vendor) else 2


def _inserts(connection: Any, params: list[Any]) -> list[tuple[str, list[Any]]]:
    """The ``INSERT`` statements (with their parameters) writing the rows of ``params``."""
    per_row = _parameters_per_row(connection.vendor)
    statements = []
    for start in range(0, len(params), per_row * ROWS_PER_INSERT):
        chunk = params[start : start + per_row * ROWS_PER_INSERT]
        statements.append((_insert_sql(connection.alias, connection.vendor, len(chunk) // per_row), chunk))
    return statements


@functools.lru_cache(maxsize=64)
def _insert_sql(using: str, vendor: str, rows: int) -> str:
    """The text of an ``INSERT`` of ``rows`` outbox rows on ``using`` (whose ``vendor`` is part of
    the key only so that a changed database setting is not served an old text)."""
    from snorky_django.models import OutboxEntry

    meta = OutboxEntry._meta
    quote = connections[using].ops.quote_name
    fields = {field.name: field for field in meta.concrete_fields}
    columns = ", ".join(quote(str(fields[name].column)) for name in ("created", "delta", "error", "batch"))
    row = "(statement_timestamp(), %s::jsonb, '', '')" if _binds_json_text(vendor) else "(%s, %s, '', '')"
    return f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES {', '.join([row] * rows)}"


def _rides_the_commit(connection: Any) -> bool:
    """Whether ``connection``'s commits carry the outbox rows (installing that the first time)."""
    if "_commit" in connection.__dict__:
        return bool(getattr(connection.__dict__["_commit"], "_snorky_outbox", False))
    able = False
    if connection.vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        able = is_psycopg3 and connection.settings_dict.get("OPTIONS", {}).get("server_side_binding") is not True
    if not able:
        return False
    plain_commit = connection._commit

    def commit_with_outbox_rows(self: Any) -> Any:
        rows = [func for _, func, _ in self.run_on_commit if isinstance(func, _Rows) and not func.written]
        if rows and self.connection is not None:
            statements = _inserts(self, [param for batch in rows for param in batch.take()])
            sql = "; ".join(statement for statement, _ in statements) + f"; {_NOTIFY}; COMMIT"
            with self.cursor() as cursor:
                # One message: the INSERTs run in the transaction, then COMMIT; psycopg's own
                # commit below then finds no transaction open and sends nothing.
                cursor.execute(sql, [param for _, chunk in statements for param in chunk])
        return plain_commit()

    commit_with_outbox_rows._snorky_outbox = True  # type: ignore[attr-defined]
    connection._commit = types.MethodType(commit_with_outbox_rows, connection)
    return True
