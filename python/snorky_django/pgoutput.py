"""Reading the messages of PostgreSQL's ``pgoutput`` logical decoding plugin (protocol version 1).

``pg_logical_slot_peek_binary_changes(slot, ..., 'proto_version', '1', 'publication_names', ...)``
returns one message per row: a transaction's ``Begin``, the ``Relation`` describing each table
before its first change, the changes (``Insert``, ``Update``, ``Delete``, ``Truncate``), the
transactional ``Message``s written with ``pg_logical_emit_message`` (with ``'messages', 'true'``),
and ``Commit``. The format is PostgreSQL's "Logical Replication Message Formats"; only what
logical delivery needs is kept (column values stay text, as pgoutput sends them by default).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "UNCHANGED",
    "Begin",
    "Change",
    "Column",
    "Commit",
    "DecodeError",
    "Emitted",
    "Relation",
    "Truncate",
    "parse",
]


class DecodeError(ValueError):
    """A message this reader does not understand (a newer protocol, or corrupt bytes)."""


class _Unchanged:
    """The value of a TOASTed column an update did not change (pgoutput does not send it)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


#: Stands for a column value pgoutput left out because the update did not change it.
UNCHANGED: Final = _Unchanged()

#: A column's value: its text, ``None`` for SQL NULL, or :data:`UNCHANGED`.
Value = bytes | None | _Unchanged


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    """The LSN of the transaction's commit record: it orders transactions, as commits do."""
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    """The position just after the transaction: where a slot advances to once it is delivered."""


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Change:
    kind: str
    """``"insert"``, ``"update"`` or ``"delete"``."""
    relation_oid: int
    old: tuple[Value, ...] | None
    """The row before (update and delete; whole with ``REPLICA IDENTITY FULL``, else its key)."""
    new: tuple[Value, ...] | None
    """The row after (insert and update)."""
    old_is_whole: bool = False
    """Whether ``old`` is the whole row (``REPLICA IDENTITY FULL``), not only its key columns (the
    others then read as NULL)."""


@dataclass(frozen=True)
class Truncate:
    relation_oids: tuple[int, ...]


@dataclass(frozen=True)
class Emitted:
    """A transactional ``pg_logical_emit_message`` (non-transactional ones are not decoded here)."""

    prefix: str
    content: bytes


Message = Begin | Commit | Relation | Change | Truncate | Emitted | None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        end = self.at + size
        if size < 0 or end > len(self.data):
            raise DecodeError("message ends early")
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def byte(self) -> int:
        return self.unpack("!B")[0]

    def int16(self) -> int:
        return self.unpack("!h")[0]

    def int32(self) -> int:
        return self.unpack("!i")[0]

    def uint32(self) -> int:
        return self.unpack("!I")[0]

    def int64(self) -> int:
        return self.unpack("!q")[0]

    def uint64(self) -> int:
        return self.unpack("!Q")[0]

    def text(self) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise DecodeError("unterminated string")
        value = self.data[self.at : end].decode("utf-8")
        self.at = end + 1
        return value

    def tuple_data(self) -> tuple[Value, ...]:
        values: list[Value] = []
        for _ in range(self.int16()):
            kind = self.take(1)
            if kind == b"n":
                values.append(None)
            elif kind == b"u":
                values.append(UNCHANGED)
            elif kind == b"t":
                values.append(self.take(self.int32()))
            else:
                raise DecodeError(f"unknown column value kind {kind!r}")
        return tuple(values)


def parse(data: bytes) -> Message:
    """One pgoutput message; ``None`` for the kinds logical delivery has no use for (origin, type)."""
    reader = _Reader(bytes(data))
    kind = reader.take(1)
    if kind == b"B":
        final_lsn = reader.uint64()
        reader.int64()  # commit time
        return Begin(final_lsn, reader.uint32())
    if kind == b"C":
        reader.byte()  # flags (unused)
        return Commit(reader.uint64(), reader.uint64())
    if kind == b"R":
        oid = reader.uint32()
        namespace, name = reader.text(), reader.text()
        reader.byte()  # replica identity setting
        columns = []
        for _ in range(reader.int16()):
            reader.byte()  # flags (part of the key)
            column_name = reader.text()
            type_oid = reader.uint32()
            reader.int32()  # type modifier
            columns.append(Column(column_name, type_oid))
        return Relation(oid, namespace or "pg_catalog", name, tuple(columns))
    if kind == b"I":
        oid = reader.uint32()
        if reader.take(1) != b"N":
            raise DecodeError("insert without a new tuple")
        return Change("insert", oid, None, reader.tuple_data())
    if kind == b"U":
        oid = reader.uint32()
        marker = reader.take(1)
        old = None
        whole = marker == b"O"
        if marker in (b"K", b"O"):
            old = reader.tuple_data()
            marker = reader.take(1)
        if marker != b"N":
            raise DecodeError("update without a new tuple")
        return Change("update", oid, old, reader.tuple_data(), whole)
    if kind == b"D":
        oid = reader.uint32()
        marker = reader.take(1)
        if marker not in (b"K", b"O"):
            raise DecodeError("delete without an old tuple")
        return Change("delete", oid, reader.tuple_data(), None, marker == b"O")
    if kind == b"T":
        count = reader.int32()
        reader.byte()  # options (CASCADE, RESTART IDENTITY)
        return Truncate(tuple(reader.uint32() for _ in range(count)))
    if kind == b"M":
        transactional = reader.byte() & 1
        reader.uint64()  # the message's LSN
        prefix = reader.text()
        content = reader.take(reader.int32())
        return Emitted(prefix, content) if transactional else None
    if kind in (b"O", b"Y"):
        return None
    raise DecodeError(f"unknown pgoutput message {kind!r}")
