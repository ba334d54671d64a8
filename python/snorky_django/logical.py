"""Logical delivery (``DELIVERY = "logical"``): deltas read from PostgreSQL's own record of commits.

Saving a row costs nothing more than it would without ``@subscribable``: the saving thread renders
nothing, writes no outbox row and sends nothing. The relay (run by ``manage.py snorky``) reads the
committed changes of the subscribable tables from a logical replication slot (PostgreSQL's
built-in ``pgoutput`` plugin, through ``pg_logical_slot_peek_binary_changes``), turns each row
into the model instance it stands for, renders it as the model's deltas always are, and publishes
the deltas in commit order. What a connection changes by other means reaches the browsers too:
``QuerySet.update()`` on any manager, raw SQL, ``loaddata``, cascades the database runs itself.

Set up once per database by :func:`prepare` (the relay calls it at start, so ``manage.py snorky``
fails there with a message saying what to set): ``wal_level = logical`` (PostgreSQL 14 or later,
psycopg 3), ``REPLICA IDENTITY FULL`` on each subscribable table (updates and deletes then carry
the whole old row, the delta's ``oldData``), a publication of those tables, and the slot.

Exactly once: a pass peeks at the slot, and only after the server accepted a batch does it
advance the slot past the transactions the batch completed. Each delta has a *position* (its
transaction's commit LSN, the change's place in the transaction, its place among the deltas of
that change), so the stream the slot gives is the same every time it is read. Before sending a
batch the relay records its first and last positions and its idempotency key (table
:class:`~snorky_django.models.LogicalClaim`, committed first); a relay that died after sending
finds the record, sends the same positions again under the same key (the server drops a repeat),
and skips what earlier batches sent. A transaction larger than a batch is sent in several.

What is read from the database after the commit: a serializer that follows relations (a foreign
key's object, a many-to-many list) reads them when the relay renders the row, not as they were at
the commit. Many-to-many changes and :func:`snorky_django.publish_deltas` still make their deltas
in the saving thread, and write them into the stream with ``pg_logical_emit_message``, so they
keep their place among the row changes.

When to look: the relay reads ``pg_current_wal_flush_lsn()`` every ``LOGICAL_POLL_INTERVAL``
seconds (a trivial query) and peeks only when the flushed position moved. Decoding reads flushed
WAL only: with ``synchronous_commit = off`` a change becomes visible when PostgreSQL flushes it
(``wal_writer_delay``, 200 ms by default).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, models, router, transaction

from snorky.backend import SnorkyBackend
from snorky_django import pgoutput
from snorky_django.conf import snorky_settings
from snorky_django.delivery import describe, get_backend, send_deltas
from snorky_django.relay import OutboxRelay

__all__ = ["LOCK", "MESSAGE_PREFIX", "LogicalRelay", "Position", "emit", "prepare"]

logger = logging.getLogger("snorky_django.logical")

#: The prefix of the logical messages carrying deltas made in the saving thread.
MESSAGE_PREFIX = "snorky"

#: The session advisory lock the active logical relay of a database holds (a slot serves one
#: reader at a time; the others wait their turn rather than fail).
LOCK = int.from_bytes(hashlib.blake2b(b"snorky_django logical relay", digest_size=8).digest(), "big", signed=True)

# Only for the tests of exactly-once delivery: the relay dies between the server's answer and the
# slot's advance, as a crash there would (never set it elsewhere).
_CRASH_AFTER_PUBLISH = os.environ.get("SNORKY_TEST_RELAY_CRASH") == "after-publish"

# Seconds a relay that found the slot's lock taken waits before trying again.
_STANDBY_CHECK = 0.5

# Rows fetched from the peek at a time: the decoded stream is never held whole in memory.
_FETCH = 500


def emit(deltas: list[dict[str, Any]], using: str) -> None:
    """Writes ``deltas`` into the stream the relay reads, in the current transaction (they commit,
    or vanish, with it)."""
    text = json.dumps(deltas, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_logical_emit_message(true, %s, %s)", [MESSAGE_PREFIX, text])


@dataclass(frozen=True, order=True)
class Position:
    """Where a delta is in the slot's stream (see the module docs); ordered as the stream is."""

    commit_lsn: int
    change: int
    part: int

    def __str__(self) -> str:
        return f"{self.commit_lsn:X}.{self.change}.{self.part}"

    @classmethod
    def parse(cls, text: str) -> Position:
        lsn, change, part = text.split(".")
        return cls(int(lsn, 16), int(change), int(part))


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass
class _Target:
    """What the relay reads from one database."""

    slot: str
    publication: str
    models: dict[str, type[models.Model]]
    """The subscribable models by table name."""


def slot_name(using: str) -> str:
    """The replication slot of database ``using`` (``LOGICAL_SLOT``, with the alias unless it is
    ``default``: slots are named per PostgreSQL server)."""
    base = str(snorky_settings.LOGICAL_SLOT)
    if using == "default":
        return base
    suffix = "".join(c if c.isalnum() else "_" for c in using.lower())
    return f"{base}_{suffix}"[:63]


def _subscribable_models(using: str) -> list[type[models.Model]]:
    from snorky_django.changes import registered

    return [options.model for options in registered() if router.allow_migrate_model(using, options.model)]


def prepare(using: str) -> _Target:
    """Checks and sets up logical decoding of the subscribable tables of database ``using`` (see
    the module docs); raises ``ImproperlyConfigured`` saying what to change."""
    connection = connections[using]
    slot, publication = slot_name(using), str(snorky_settings.LOGICAL_PUBLICATION)
    if connection.vendor != "postgresql":
        raise ImproperlyConfigured(
            f'SNORKY["DELIVERY"] = "logical" needs PostgreSQL; database {using!r} is {connection.vendor} '
            '(use "outbox" or "direct" there).'
        )
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        raise ImproperlyConfigured('SNORKY["DELIVERY"] = "logical" needs psycopg 3 (pip install "psycopg[binary]").')
    found = _subscribable_models(using)
    inherited = [model.__name__ for model in found if model._meta.parents]
    if inherited:
        raise ImproperlyConfigured(
            f'SNORKY["DELIVERY"] = "logical" cannot rebuild rows of models that inherit a table: '
            f'{", ".join(inherited)} (use "outbox" or "direct").'
        )
    target = _Target(slot, publication, {model._meta.db_table: model for model in found})
    if not found:
        return target
    try:
        with connection.cursor() as cursor:
            _check_server(cursor, using)
            _set_up(cursor, connection, target)
    except DatabaseError as err:
        raise ImproperlyConfigured(
            f"Cannot set up logical delivery on database {using!r}: {err}. The database user needs the "
            "REPLICATION attribute (or your provider's replication role) and must own the subscribable tables."
        ) from err
    return target


def _check_server(cursor: Any, using: str) -> None:
    cursor.execute("SELECT current_setting('wal_level'), current_setting('server_version_num')::int")
    level, version = cursor.fetchone()
    if version < 140000:
        raise ImproperlyConfigured(
            f'SNORKY["DELIVERY"] = "logical" needs PostgreSQL 14 or later; database {using!r} runs {version}.'
        )
    if level != "logical":
        raise ImproperlyConfigured(
            f'SNORKY["DELIVERY"] = "logical" needs wal_level = logical on database {using!r} (it is {level}): '
            "run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL (or set it in postgresql.conf, "
            "or your provider's parameter group)."
        )


def _set_up(cursor: Any, connection: Any, target: _Target) -> None:
    quote = connection.ops.quote_name
    tables = sorted(target.models)
    cursor.execute(
        "SELECT relname FROM pg_class WHERE oid = ANY(%s::text[]::regclass[]) AND relreplident <> 'f'",
        [[quote(table) for table in tables]],
    )
    for (table,) in cursor.fetchall():
        cursor.execute(f"ALTER TABLE {quote(table)} REPLICA IDENTITY FULL")
        logger.info("Snorky: table %s now logs whole old rows (REPLICA IDENTITY FULL)", table)
    cursor.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", [target.publication])
    published = sorted(name for (name,) in cursor.fetchall())
    cursor.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [target.publication])
    listed = ", ".join(quote(table) for table in tables)
    if cursor.fetchone() is None:
        cursor.execute(f"CREATE PUBLICATION {quote(target.publication)} FOR TABLE {listed}")
    elif published != tables:
        cursor.execute(f"ALTER PUBLICATION {quote(target.publication)} SET TABLE {listed}")
    cursor.execute(
        "SELECT plugin, database = current_database() FROM pg_replication_slots WHERE slot_name = %s",
        [target.slot],
    )
    row = cursor.fetchone()
    if row is None:
        cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [target.slot])
        logger.warning(
            "Snorky: created replication slot %r: changes committed from now on are delivered. Drop it "
            "(SELECT pg_drop_replication_slot(%r)) if you stop using logical delivery: PostgreSQL keeps "
            "the WAL a slot has not read.",
            target.slot,
            target.slot,
        )
    elif row[0] != "pgoutput" or not row[1]:
        raise ImproperlyConfigured(
            f"Replication slot {target.slot!r} exists for another database or plugin: set "
            'SNORKY["LOGICAL_SLOT"] to a name of its own.'
        )


class _Table:
    """Turns the column values pgoutput sends for one table into instances of its model."""

    def __init__(self, model: type[models.Model], relation: pgoutput.Relation, using: str) -> None:
        from psycopg.adapt import Transformer
        from psycopg.pq import Format

        connection = connections[using]
        by_column = {field.column: field for field in model._meta.concrete_fields}
        transformer = Transformer(connection.connection)
        self.model = model
        self.using = using
        self.attnames = [field.attname for field in model._meta.concrete_fields]
        # Per column of the relation: its field (None: a column the model does not know), how to
        # load its text, and the converters Django applies to what the database returns.
        self.columns: list[tuple[Any, Any, list[Any], Any]] = []
        for column in relation.columns:
            field = by_column.get(column.name)
            if field is None:
                self.columns.append((None, None, [], None))
                continue
            expression = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
            loader = transformer.get_loader(column.type_oid, Format.TEXT)
            self.columns.append((field, loader, converters, expression))

    def instance(self, values: tuple[pgoutput.Value, ...], before: tuple[pgoutput.Value, ...] | None = None) -> Any:
        """The model instance of a row (an unchanged TOASTed value is taken from ``before``, or
        left deferred: Django reads it when asked)."""
        connection = connections[self.using]
        loaded: dict[str, Any] = {}
        for index, (field, loader, converters, expression) in enumerate(self.columns):
            if field is None or index >= len(values):
                continue
            raw = values[index]
            if raw is pgoutput.UNCHANGED and before is not None and index < len(before):
                raw = before[index]
            if raw is pgoutput.UNCHANGED:
                continue
            value = None if raw is None else loader.load(raw)
            for converter in converters:
                value = converter(value, expression, connection)
            loaded[field.attname] = value
        row = [loaded.get(name, models.DEFERRED) for name in self.attnames]
        return self.model.from_db(self.using, self.attnames, row)


class _Deltas:
    """Turns the decoded stream of one pass into deltas (see :meth:`of`)."""

    def __init__(self, target: _Target, using: str, warned: set[str]) -> None:
        self.target = target
        self.using = using
        self.tables: dict[int, _Table | None] = {}
        self.old_rows_missing = warned
        """The models whose missing old rows were logged (once per relay)."""

    def relation(self, relation: pgoutput.Relation) -> None:
        model = self.target.models.get(relation.name)
        self.tables[relation.oid] = _Table(model, relation, self.using) if model is not None else None

    def of(self, message: pgoutput.Change | pgoutput.Emitted) -> list[Any]:
        """The deltas of one change or emitted message (none for other tables, or when rendering
        failed: that is logged, and the stream goes on)."""
        if isinstance(message, pgoutput.Emitted):
            return self._emitted(message)
        table = self.tables.get(message.relation_oid)
        if table is None:
            return []
        try:
            return self._rendered(table, message)
        except Exception:
            if message.kind == "delete" and message.old is not None:
                # A serializer following a relation the same transaction deleted (a cascade) cannot
                # render the row any more. Browsers must still see it go: its own columns say which
                # row it was and, for the dealers, whose.
                logger.warning(
                    "Snorky: cannot render a deleted %s; its delta carries the row's columns",
                    table.model.__name__,
                    exc_info=True,
                )
                return [self._plain_delete(table, message.old)]
            logger.exception("Snorky: cannot render a %s of %s; no delta for it", message.kind, table.model.__name__)
            return []

    @staticmethod
    def _plain_delete(table: _Table, old: tuple[pgoutput.Value, ...]) -> dict[str, Any]:
        from snorky_django.changes import options_for
        from snorky_django.serialization import field_values, jsonable, without_secrets

        options = options_for(table.model)
        assert options is not None
        data = without_secrets(jsonable(field_values(table.instance(old))), frozenset())
        return {"type": "delete", "model": options.name, "data": data}

    def _emitted(self, message: pgoutput.Emitted) -> list[Any]:
        if message.prefix != MESSAGE_PREFIX:
            return []
        try:
            deltas = json.loads(message.content)
        except ValueError:
            deltas = None
        if not isinstance(deltas, list):
            logger.error("Snorky: a logical message with prefix %r is not a list of deltas; ignored", MESSAGE_PREFIX)
            return []
        return deltas

    def _warn_old_rows_missing(self, table: _Table) -> None:
        name = table.model.__name__
        if name not in self.old_rows_missing:
            self.old_rows_missing.add(name)
            logger.warning(
                "Snorky: updates and deletes of %s carry only the key of the old row (its table's REPLICA "
                "IDENTITY is not FULL): an update's oldData is its newData, a delete's data has only the key. "
                "Restart manage.py snorky to set it (it does at start).",
                name,
            )

    def _rendered(self, table: _Table, change: pgoutput.Change) -> list[dict[str, Any]]:
        from snorky_django.changes import options_for
        from snorky_django.serialization import serialize

        options = options_for(table.model)
        assert options is not None
        name = options.name
        if change.kind == "insert" and change.new is not None:
            return [{"type": "insert", "model": name, "data": serialize(table.instance(change.new))}]
        if change.kind == "delete" and change.old is not None:
            if not change.old_is_whole:
                self._warn_old_rows_missing(table)
            return [{"type": "delete", "model": name, "data": serialize(table.instance(change.old))}]
        if change.kind != "update" or change.new is None:
            return []
        new_data = serialize(table.instance(change.new, change.old if change.old_is_whole else None))
        if change.old is None or not change.old_is_whole:
            self._warn_old_rows_missing(table)
            old_data = new_data
        else:
            old_data = serialize(table.instance(change.old))
            if new_data == old_data:
                return []
        return [{"type": "update", "model": name, "newData": new_data, "oldData": old_data}]


@dataclass
class _Claim:
    first: Position
    last: Position
    key: str


class LogicalRelay(OutboxRelay):
    """Relays the logical replication slot of each PostgreSQL database (see the module docs), on a
    background thread (``start()``/``stop()``) or pass by pass (``relay_once``, ``drain``)."""

    lock_key = LOCK

    def __init__(
        self,
        backend: SnorkyBackend | None = None,
        *,
        databases: list[str] | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        max_retry_delay: float | None = None,
    ) -> None:
        interval = poll_interval if poll_interval is not None else float(snorky_settings.LOGICAL_POLL_INTERVAL)
        super().__init__(
            backend,
            databases=databases,
            batch_size=batch_size,
            poll_interval=interval,
            max_retry_delay=max_retry_delay,
            listen=False,
        )
        self._targets: dict[str, _Target] = {}
        self._flushed: dict[str, int] = {}
        self._standby_until: dict[str, float] = {}
        self.old_rows_missing: set[str] = set()

    def _databases(self) -> list[str]:
        if self.databases is not None:
            return self.databases
        return [alias for alias in connections if _subscribable_models(alias)]

    def prepare(self) -> None:
        """Sets up every database (see :func:`prepare`); raises ``ImproperlyConfigured``."""
        for using in self._databases():
            self._targets[using] = prepare(using)

    def drain(self, timeout: float = 10.0) -> int:
        """Relays until everything committed before the call is delivered (or ``timeout``)."""
        for using in self._databases():
            # Decoding reads flushed WAL only: a commit that wrote WAL, with synchronous_commit on,
            # flushes all of it, asynchronous commits before it included. (The message it writes
            # has a prefix of its own, which the relay skips.)
            with transaction.atomic(using=using), connections[using].cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = on")
                cursor.execute("SELECT pg_logical_emit_message(true, %s, '')", [f"{MESSAGE_PREFIX}-flush"])
        return super().drain(timeout)

    def relay_once(self, using: str) -> int:
        """Relays what committed on ``using`` since the last pass, in batches; returns how many
        deltas the server accepted (0 when another relay is the active one)."""
        try:
            return self._relay_slot(using, self.backend or get_backend())[0]
        finally:
            if threading.current_thread() is not self._thread:
                self._release(using)

    def _busy_after_pass(self, using: str) -> bool:
        return not self._relay_slot(using, self.backend or get_backend())[1]

    def _relay_slot(self, using: str, backend: SnorkyBackend) -> tuple[int, bool]:
        """One pass: the deltas the server accepted, and whether the pass read all there was."""
        if time.monotonic() < self._standby_until.get(using, 0.0):
            return 0, True
        if not self._hold_lock(using):
            # Another relay reads this slot: look again in a while, not at every poll.
            self._standby_until[using] = time.monotonic() + _STANDBY_CHECK
            return 0, True
        target = self._targets.get(using)
        if target is None:
            target = self._targets[using] = prepare(using)
        if not target.models:
            return 0, True
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_current_wal_flush_lsn()::text, (SELECT confirmed_flush_lsn::text FROM "
                "pg_replication_slots WHERE slot_name = %s)",
                [target.slot],
            )
            flushed_text, confirmed_text = cursor.fetchone()
        if confirmed_text is None:
            self._targets[using] = prepare(using)
            logger.error(
                "Snorky: replication slot %r was gone: created it again (changes committed meanwhile are lost)",
                target.slot,
            )
            return 0, True
        flushed = _lsn(flushed_text)
        if self._flushed.get(using) == flushed:
            return 0, True  # nothing was flushed since a pass read everything
        sent, complete = _Pass(self, target, using, backend, _lsn(confirmed_text), flushed).run()
        if complete:
            self._flushed[using] = flushed
        return sent, complete

    def __repr__(self) -> str:
        return f"<LogicalRelay running={self.running} relayed={self.relayed}>"


class _Pass:
    """One read of a slot: from its confirmed position to what is flushed, batch by batch."""

    def __init__(
        self, relay: LogicalRelay, target: _Target, using: str, backend: SnorkyBackend, confirmed: int, flushed: int
    ) -> None:
        self.relay = relay
        self.target = target
        self.using = using
        self.backend = backend
        self.confirmed = confirmed
        self.flushed = flushed
        self.claim = self._read_claim()
        self.recovered: list[Any] = []
        self.batch: list[tuple[Position, Any]] = []
        self.last_commit_end: int | None = None
        self.sent = 0

    def run(self) -> tuple[int, bool]:
        """Returns the deltas the server accepted, and whether the peek reached its end (the slot
        had no more than a pass reads)."""
        limit = max(self.relay.batch_size * 4, 1000)
        messages = 0
        for message in self._stream(limit):
            messages += 1
            self._take(message)
        self._send_recovered()
        self._flush()
        complete = messages < limit
        if complete:
            # The peek read every transaction that committed before ``flushed`` (read before it):
            # the slot moves past them all, those of other tables too (pgoutput leaves out
            # transactions with nothing published, and without this the slot would keep their WAL).
            self.last_commit_end = max(self.last_commit_end or 0, self.flushed)
        self._advance()
        return self.sent, complete

    def _stream(self, limit: int) -> Iterator[pgoutput.Message | _Rendered]:
        raw = connections[self.using].connection
        decoder = _Deltas(self.target, self.using, self.relay.old_rows_missing)
        name = f"snorky_logical_{secrets.token_hex(6)}"
        with raw.cursor(name=name, withhold=True) as cursor:
            cursor.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', "
                "'publication_names', %s, 'messages', 'true')",
                [self.target.slot, limit, self.target.publication],
            )
            while rows := cursor.fetchmany(_FETCH):
                for (data,) in rows:
                    message = pgoutput.parse(data)
                    if isinstance(message, pgoutput.Relation):
                        decoder.relation(message)
                        continue
                    if isinstance(message, (pgoutput.Change, pgoutput.Emitted)):
                        yield _Rendered(message, decoder.of(message))
                        continue
                    yield message

    def _take(self, message: Any) -> None:
        if isinstance(message, pgoutput.Begin):
            self.commit_lsn, self.change = message.final_lsn, 0
        elif isinstance(message, _Rendered):
            for part, delta in enumerate(message.deltas):
                self._add(Position(self.commit_lsn, self.change, part), delta)
            self.change += 1
        elif isinstance(message, pgoutput.Commit):
            self.last_commit_end = message.end_lsn
        elif isinstance(message, pgoutput.Truncate):
            logger.warning("Snorky: a table of a subscribable model was truncated; no delta says so")

    def _add(self, position: Position, delta: Any) -> None:
        claim = self.claim
        if claim is not None:
            if position < claim.first:
                return  # sent by an earlier batch, in a transaction not yet complete then
            if position <= claim.last:
                self.recovered.append(delta)
                return
            self._send_recovered()
        self.batch.append((position, delta))
        if len(self.batch) >= self.relay.batch_size:
            self._flush()

    def _send_recovered(self) -> None:
        """Sends again, under its key, the batch a relay recorded and may not have sent."""
        claim = self.claim
        if claim is None:
            return
        self.claim = None
        if self.recovered:
            self._publish(self.recovered, claim.key)
            self.recovered = []

    def _flush(self) -> None:
        if not self.batch:
            return
        first, last = self.batch[0][0], self.batch[-1][0]
        key = f"snorky-logical:{self.using[:40]}:{first}-{last}:{secrets.token_urlsafe(12)}"
        self._write_claim(first, last, key)
        deltas = [delta for _, delta in self.batch]
        self.batch = []
        self._publish(deltas, key)
        self._advance()

    def _publish(self, deltas: list[Any], key: str) -> None:
        refused = send_deltas(deltas, self.backend, key=key)
        if _CRASH_AFTER_PUBLISH:
            os._exit(70)
        for position, reason in refused:
            logger.error("Snorky refused %s from the replication slot: %s", describe(deltas[position]), reason)
        accepted = len(deltas) - len(refused)
        self.sent += accepted
        self.relay.relayed += accepted

    def _advance(self) -> None:
        """Moves the slot past every transaction whose deltas the server has accepted."""
        end = self.last_commit_end
        if end is None or end <= self.confirmed or self.batch or self.recovered:
            return
        with connections[self.using].cursor() as cursor:
            cursor.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", [self.target.slot, _lsn_text(end)])
        self.confirmed = end

    def _read_claim(self) -> _Claim | None:
        from snorky_django.models import LogicalClaim

        found = LogicalClaim.objects.using(self.using).filter(slot=self.target.slot).first()
        if found is None:
            return None
        return _Claim(Position.parse(found.first), Position.parse(found.last), found.key)

    def _write_claim(self, first: Position, last: Position, key: str) -> None:
        from snorky_django.models import LogicalClaim

        table = connections[self.using].ops.quote_name(LogicalClaim._meta.db_table)
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f'INSERT INTO {table} (slot, "first", "last", key) VALUES (%s, %s, %s, %s) '
                'ON CONFLICT (slot) DO UPDATE SET "first" = EXCLUDED."first", "last" = EXCLUDED."last", '
                "key = EXCLUDED.key",
                [self.target.slot, str(first), str(last), key],
            )


@dataclass(frozen=True)
class _Rendered:
    """A change (or emitted message) of the stream, with the deltas it became."""

    message: Any
    deltas: list[Any]
