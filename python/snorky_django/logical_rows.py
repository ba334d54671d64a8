"""Turning what logical decoding sends about a row into the deltas of its model.

pgoutput sends each column as text, in the database's output format. :class:`RowReader` loads
it as a Django query would: psycopg's loader for the column's type (a domain's base type), taken
from the Django connection so that Django's own loaders apply (its ``jsonb`` and time zone ones),
then the converters Django applies to what the database returns (the fields' ``from_db_value``).
The instance is made with ``Model.from_db``, as a query makes it. :class:`DeltaMaker` renders
instances with the model's delta data, exactly as the other delivery modes do.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, connections, models

from snorky_django import logical_messages, pgoutput
from snorky_django.logical_setup import Target

__all__ = ["DeltaMaker", "RowReader"]

#: The instances a change stands for: the row after it and the row before it (either may be None).
_Rows = tuple[Any, Any]

# Readers kept between passes at most (one per table and connection: a bound, not a working limit).
_KNOWN_READERS = 1000

logger = logging.getLogger("snorky_django.logical")

#: Errors that say the database, not the row, is the problem: the pass stops and is tried again,
#: rather than the row being given up.
_TRANSIENT: tuple[type[BaseException], ...] = (DatabaseError,)
try:
    import psycopg

    _TRANSIENT = (DatabaseError, psycopg.OperationalError)
except ImportError:  # pragma: no cover (logical delivery needs psycopg 3; prepare() says so)
    pass


class RowReader:
    """Makes instances of ``model`` from the rows pgoutput sends for ``relation``."""

    def __init__(self, model: type[models.Model], relation: pgoutput.Relation, using: str, target: Target) -> None:
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
        self.related = [
            field.name
            for field in (*model._meta.concrete_fields, *model._meta.many_to_many)
            if field.is_relation and (field.many_to_many or field.many_to_one or field.one_to_one)
        ]
        """The relations a serializer may follow, read ahead for several rows at once."""
        self.columns: list[tuple[Any, Any, list[Any], Any]] = []
        for column in relation.columns:
            field = by_column.get(column.name)
            if field is None:
                self.columns.append((None, None, [], None))
                continue
            expression = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
            type_oid = target.domains.get(column.type_oid, column.type_oid)
            self.columns.append((field, transformer.get_loader(type_oid, Format.TEXT), converters, expression))

    def values(
        self,
        row: tuple[pgoutput.Value, ...],
        before: tuple[pgoutput.Value, ...] | None = None,
        *,
        lenient: bool = False,
    ) -> dict[str, Any]:
        """The row's values by field attname. An unchanged TOASTed value is taken from ``before``
        (or left out); ``lenient`` leaves out a value that cannot be loaded instead of raising."""
        connection = connections[self.using]
        loaded: dict[str, Any] = {}
        for index, (field, loader, converters, expression) in enumerate(self.columns):
            if field is None or index >= len(row):
                continue
            raw = row[index]
            if raw is pgoutput.UNCHANGED and before is not None and index < len(before):
                raw = before[index]
            if raw is pgoutput.UNCHANGED:
                continue
            try:
                value = None if raw is None else loader.load(raw)
                for converter in converters:
                    value = converter(value, expression, connection)
            except Exception:
                if not lenient:
                    raise
                continue
            loaded[field.attname] = value
        return loaded

    def instance(self, row: tuple[pgoutput.Value, ...], before: tuple[pgoutput.Value, ...] | None = None) -> Any:
        """The model instance of a row. A column it lacks (a generated one, which pgoutput does
        not send; an unchanged TOASTed value with no whole old row) is deferred: Django reads the
        database's current value if the serializer asks."""
        loaded = self.values(row, before)
        return self.model.from_db(self.using, self.attnames, [loaded.get(n, models.DEFERRED) for n in self.attnames])

    def plain_data(self, row: tuple[pgoutput.Value, ...]) -> dict[str, Any]:
        """The row's own columns, by field name (a foreign key as its key), secrets left out: what
        a delete carries when the serializer cannot render the row."""
        from snorky_django.serialization import jsonable, without_secrets

        loaded = self.values(row, lenient=True)
        data = {
            field.name: loaded[field.attname] for field in self.model._meta.concrete_fields if field.attname in loaded
        }
        return without_secrets(jsonable(data), frozenset())  # type: ignore[no-any-return]


class DeltaMaker:
    """The deltas of the changes and messages of one pass over the stream."""

    def __init__(self, target: Target, using: str, warned: set[str], known: dict[Any, RowReader | None]) -> None:
        self.target = target
        self.using = using
        self.readers: dict[int, RowReader | None] = {}
        self.known = known
        """The readers made in earlier passes, by relation and connection (pgoutput describes each
        table again in every pass; building its loaders and converters again is not needed)."""
        self.old_rows_missing = warned
        """The models whose missing old rows were logged (once per relay)."""

    def relation(self, relation: pgoutput.Relation) -> None:
        key = (relation, id(connections[self.using].connection))
        if key not in self.known:
            if len(self.known) > _KNOWN_READERS:
                self.known.clear()
            model = self.target.models.get((relation.namespace, relation.name))
            self.known[key] = RowReader(model, relation, self.using, self.target) if model is not None else None
        self.readers[relation.oid] = self.known[key]

    def model_names(self, relation_oids: tuple[int, ...]) -> list[str]:
        """The names of the subscribable models of these tables."""
        readers = (self.readers.get(oid) for oid in relation_oids)
        return [reader.model.__name__ for reader in readers if reader is not None]

    def concerns(self, change: pgoutput.Change) -> bool:
        """Whether the change is to a subscribable table."""
        return self.readers.get(change.relation_oid) is not None

    def of_many(self, messages: list[pgoutput.Change | pgoutput.Emitted]) -> list[list[Any]]:
        """The deltas of each message, as :meth:`of` makes them, with the rows each serializer
        follows (foreign keys, many-to-many lists) read once for all of them: a delta rendered on
        its own would read its row's related rows in queries of their own, one after another on
        the relay's one thread."""
        built = [self._built(message) for message in messages]
        try:
            self._prefetch(messages, built)
        except Exception:
            # Only a help (a relation the serializer never follows may be unreadable): each row
            # then reads its own, and a database that is really gone fails those reads.
            logger.debug("Snorky: reading related rows ahead failed; each row reads its own", exc_info=True)
        return [self.of(message, rows) for message, rows in zip(messages, built, strict=True)]

    def _built(self, message: pgoutput.Change | pgoutput.Emitted) -> _Rows | None:
        """The instances of a change, made ahead (``None`` for a message, another table, or a row
        that cannot be made: :meth:`of` then makes it, and handles its error)."""
        reader = None if isinstance(message, pgoutput.Emitted) else self.readers.get(message.relation_oid)
        if reader is None or isinstance(message, pgoutput.Emitted):
            return None
        try:
            return self._instances(reader, message)
        except Exception:
            return None

    def _prefetch(self, messages: list[pgoutput.Change | pgoutput.Emitted], built: list[_Rows | None]) -> None:
        from django.db.models import prefetch_related_objects

        by_reader: dict[RowReader, list[Any]] = {}
        for message, rows in zip(messages, built, strict=True):
            if rows is None or isinstance(message, pgoutput.Emitted):
                continue
            reader = self.readers[message.relation_oid]
            if reader is not None and reader.related:
                by_reader.setdefault(reader, []).extend(row for row in rows if row is not None)
        for reader, instances in by_reader.items():
            if len(instances) > 1:
                prefetch_related_objects(instances, *reader.related)

    def of(self, message: pgoutput.Change | pgoutput.Emitted, rows: _Rows | None = None) -> list[Any]:
        """The deltas of one change (its instances ``rows``, when made ahead) or emitted message.
        None for a table that is not subscribable; a row whose rendering fails is logged and given
        up (a delete still leaves, with its columns), unless the database is at fault: that error
        stops the pass, to be tried again."""
        if isinstance(message, pgoutput.Emitted):
            if message.prefix != logical_messages.MESSAGE_PREFIX:
                return []
            return logical_messages.read(message.content) or []
        reader = self.readers.get(message.relation_oid)
        if reader is None:
            return []
        try:
            return self._rendered(reader, message, rows or self._instances(reader, message))
        except _TRANSIENT:
            raise
        except Exception:
            if message.kind == "delete" and message.old is not None:
                # A serializer following a relation the same transaction deleted (a cascade) cannot
                # render the row any more. Browsers must still see it go: its own columns say which
                # row it was and, for the dealers, whose.
                logger.warning(
                    "Snorky: cannot render a deleted %s; its delta carries the row's columns",
                    reader.model.__name__,
                    exc_info=True,
                )
                return [{"type": "delete", "model": _name(reader), "data": reader.plain_data(message.old)}]
            logger.exception("Snorky: cannot render a %s of %s; no delta for it", message.kind, reader.model.__name__)
            return []

    def _warn_old_rows_missing(self, reader: RowReader) -> None:
        name = reader.model.__name__
        if name not in self.old_rows_missing:
            self.old_rows_missing.add(name)
            logger.warning(
                "Snorky: updates and deletes of %s carry only the key of the old row (its table's REPLICA "
                "IDENTITY is not FULL): an update's oldData is its newData, a delete's data has only the key. "
                "Restart manage.py snorky to set it (it does at start).",
                name,
            )

    @staticmethod
    def _instances(reader: RowReader, change: pgoutput.Change) -> _Rows:
        """The instances of the row after the change and before it (each ``None`` when the change
        has no such row; the row before an update only when it was logged whole)."""
        whole_old = change.old if change.old_is_whole else None
        new = None if change.new is None else reader.instance(change.new, whole_old)
        old_row = change.old if change.kind == "delete" else whole_old
        old = None if old_row is None else reader.instance(old_row)
        return new, old

    def _rendered(self, reader: RowReader, change: pgoutput.Change, rows: _Rows) -> list[dict[str, Any]]:
        from snorky_django.serialization import serialize

        name = _name(reader)
        new, old = rows
        if change.kind == "insert" and new is not None:
            return [{"type": "insert", "model": name, "data": serialize(new)}]
        if change.kind == "delete" and old is not None:
            if not change.old_is_whole:
                self._warn_old_rows_missing(reader)
            return [{"type": "delete", "model": name, "data": serialize(old)}]
        if change.kind != "update" or new is None:
            return []
        new_data = serialize(new)
        if old is None:
            self._warn_old_rows_missing(reader)
            old_data = new_data
        else:
            old_data = serialize(old)
            if new_data == old_data:
                return []
        return [{"type": "update", "model": name, "newData": new_data, "oldData": old_data}]


def _name(reader: RowReader) -> str:
    from snorky_django.changes import options_for

    options = options_for(reader.model)
    assert options is not None
    return options.name
