"""A logical replication slot read over PostgreSQL's streaming replication protocol.

The relay opens a replication connection (``replication=database``) and sends ``START_REPLICATION
SLOT ... LOGICAL``. From then on the server decodes the WAL as it is flushed and sends the
``pgoutput`` messages of each transaction as soon as it reads its commit, keeping its decoding
state from one transaction to the next. (The SQL interface, ``pg_logical_slot_peek_binary_changes``,
sets up a decoding context on every call and decodes again from the slot's restart point, which
moves only every few seconds: its cost grows with the write rate.) The client says how far it has
delivered with standby status updates, and the slot's ``confirmed_flush_lsn`` follows them; while
the stream is open the slot is ``active`` and no other session can read it.

psycopg 3 opens the connection, from Django's connection parameters (passwords, TLS, services work
as they do for Django); the stream itself is read with psycopg's libpq binding (``psycopg.pq``), as
psycopg has no replication API of its own. The message formats are those of "Streaming Replication
Protocol" in PostgreSQL's documentation.
"""

from __future__ import annotations

import select
import struct
import time
from typing import Any, Final

from django.db import DatabaseError

from snorky_django import pgoutput

__all__ = ["KEEPALIVE", "Keepalive", "ReplicationError", "ReplicationStream", "lsn_text", "wait_readable"]


class Keepalive:
    """What :meth:`ReplicationStream.read` returns for a keepalive (only :data:`KEEPALIVE`): the
    server's word of how far it has read, with no message (it may have moved
    :attr:`ReplicationStream.received`)."""

    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE: Final = Keepalive()

# Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), for the status updates' clocks.
_POSTGRES_EPOCH_US = 946_684_800 * 1_000_000

# The SQLSTATE of a slot another session is reading (object_in_use): the walsender of a stream
# just closed may still hold it for a moment.
_OBJECT_IN_USE = "55006"

# Seconds a new stream waits for the slot to be given up by a stream that ended.
_SLOT_BUSY_WAIT = 5.0

# Seconds a closing stream waits for the server to end it (the last status update is read by then).
_CLOSE_WAIT = 2.0


class ReplicationError(DatabaseError):
    """The server refused or ended the stream (``sqlstate`` as it said, when it said one)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def lsn_text(value: int) -> str:
    """An LSN as PostgreSQL writes it (``16/B374D848``)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def wait_readable(streams: list[ReplicationStream], timeout: float) -> None:
    """Waits until one of ``streams`` has data to read, or ``timeout`` seconds."""
    poller = select.poll()
    for stream in streams:
        poller.register(stream.fileno(), select.POLLIN)
    poller.poll(max(timeout, 0.0) * 1000)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ReplicationStream:
    """One ``START_REPLICATION`` of a slot, from its confirmed position (see the module docs)."""

    def __init__(self, connection: Any, slot: str) -> None:
        self._connection = connection
        self._pgconn = connection.pgconn
        self.slot = slot
        self.received = 0
        """The highest position the stream is known to have given whole: the end of the last
        commit read, or, between transactions, where the server said it had read to."""
        self.confirmed = 0
        """The position last reported as delivered (the slot's ``confirmed_flush_lsn`` follows)."""
        self.in_transaction = False
        """Whether a transaction's ``Begin`` was read and its ``Commit`` not yet."""

    @classmethod
    def open(cls, params: dict[str, Any], *, timezone: str, slot: str, publication: str) -> ReplicationStream:
        """Starts streaming ``slot`` (through ``publication``) on a new connection made from Django's
        connection ``params``; values are printed in ``timezone``, as Django's sessions print them."""
        deadline = time.monotonic() + _SLOT_BUSY_WAIT
        while True:
            stream = cls(_connect(params, timezone), slot)
            try:
                stream._start(publication)
                return stream
            except ReplicationError as err:
                stream.close(graceful=False)
                if err.sqlstate != _OBJECT_IN_USE or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def _start(self, publication: str) -> None:
        from psycopg import pq

        options = f"proto_version '1', publication_names '{_quoted(publication)}', messages 'true'"
        command = f"START_REPLICATION SLOT {_quoted(self.slot)} LOGICAL 0/0 ({options})"
        self._pgconn.send_query(command.encode())
        self._send_all()
        result = self._pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise self._error(result)

    def fileno(self) -> int:
        return int(self._pgconn.socket)

    def read(self, timeout: float) -> pgoutput.Message | Keepalive | None:
        """The next message (a pgoutput message, or :data:`KEEPALIVE`), waiting for it up to
        ``timeout`` seconds; ``None`` when none came."""
        deadline = time.monotonic() + timeout
        pgconn = self._pgconn
        waited = False
        while True:
            size, data = pgconn.get_copy_data(1)
            if size > 0:
                return self._take(bytes(data))
            if size < 0:  # the server ended the stream (with an error), or the connection broke
                raise self._error(pgconn.get_result())
            if waited:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait_readable([self], remaining)
            waited = True  # what arrived since libpq last read the socket is taken first, unwaited
            try:
                pgconn.consume_input()
            except Exception as err:  # psycopg's OperationalError: the connection is gone
                raise ReplicationError(f"replication slot {self.slot!r}: {err}") from err

    def _take(self, data: bytes) -> pgoutput.Message | Keepalive:
        kind = data[:1]
        if kind == b"w":  # XLogData: start, server's WAL end, clock, then the plugin's message
            message = pgoutput.parse(data[25:])
            if isinstance(message, pgoutput.Begin):
                self.in_transaction = True
            elif isinstance(message, pgoutput.Commit):
                self.in_transaction = False
                self.received = max(self.received, message.end_lsn)
            return message
        if kind == b"k":  # keepalive: how far the server has read, clock, whether to answer now
            (position,) = struct.unpack_from(">Q", data, 1)
            if not self.in_transaction:
                # Every transaction committed before it was sent already: the position is one the
                # slot may move to once they are delivered.
                self.received = max(self.received, position)
            if data[17:18] == b"\x01":
                self._report()
            return KEEPALIVE
        raise ReplicationError(f"replication slot {self.slot!r}: unexpected message {kind!r} in the stream")

    def confirm(self, position: int) -> None:
        """Tells the server that everything up to ``position`` is delivered: the slot may move there."""
        if position > self.confirmed:
            self.confirmed = position
            self._report()

    def _report(self) -> None:
        """Sends a standby status update: received, delivered (twice: flushed and applied), clock."""
        clock = time.time_ns() // 1000 - _POSTGRES_EPOCH_US
        received = max(self.received, self.confirmed)
        update = b"r" + struct.pack(">QQQqB", received, self.confirmed, self.confirmed, clock, 0)
        if self._pgconn.put_copy_data(update) != 1:
            raise self._error(None)
        self._send_all()

    def _send_all(self) -> None:
        """Sends what libpq holds (the connection is non-blocking: a flush may need several goes)."""
        pgconn = self._pgconn
        while True:
            pending = pgconn.flush()
            if pending == 0:
                return
            if pending < 0:
                raise self._error(None)
            poller = select.poll()
            poller.register(self.fileno(), select.POLLOUT)
            poller.poll(1000)

    def close(self, graceful: bool = True) -> None:
        """Ends the stream (after a last status update, and once the server has read it, when
        ``graceful``) and closes the connection."""
        try:
            if graceful and not self._connection.closed:
                self._report()
                self._pgconn.put_copy_end(None)
                self._send_all()
                deadline = time.monotonic() + _CLOSE_WAIT
                while time.monotonic() < deadline:
                    size, _ = self._pgconn.get_copy_data(1)
                    if size < 0:
                        while self._pgconn.get_result() is not None:
                            pass
                        break
                    if size == 0:
                        wait_readable([self], deadline - time.monotonic())
                        self._pgconn.consume_input()
        except Exception:  # the stream is going anyway; the server keeps the last update it read
            pass
        finally:
            self._connection.close()

    def _error(self, result: Any) -> ReplicationError:
        from psycopg import pq

        message, sqlstate = "", None
        if result is not None:
            message = result.error_message.decode(errors="replace").strip()
            code = result.error_field(pq.DiagnosticField.SQLSTATE)
            sqlstate = code.decode() if code else None
        if not message:
            message = self._pgconn.error_message.decode(errors="replace").strip() or "the stream ended"
        return ReplicationError(f"replication slot {self.slot!r}: {message}", sqlstate)


def _connect(params: dict[str, Any], timezone: str) -> Any:
    import psycopg

    # The slot's values are printed in the walsender's session formats: make them Django's.
    zone = timezone.replace("\\", "\\\\").replace(" ", "\\ ")
    options = f"{params.get('options') or ''} -c TimeZone={zone}".strip()
    return psycopg.connect(**{**params, "options": options}, autocommit=True, replication="database")
