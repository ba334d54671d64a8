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
from typing import Any

from django.db import DatabaseError

from snorky_django import pgoutput

__all__ = ["APPLICATION_NAME", "ReplicationError", "ReplicationStream", "wait_readable"]


# Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), for the status updates' clocks.
_POSTGRES_EPOCH_US = 946_684_800 * 1_000_000

# The SQLSTATE of a slot another session is reading (object_in_use): the walsender of a stream
# just closed may still hold it for a moment.
_OBJECT_IN_USE = "55006"

# Seconds a new stream waits for the slot to be given up by a stream that ended (trying again
# after 0.05 s, then twice as long each time).
_SLOT_BUSY_WAIT = 5.0

# Seconds the server may take to answer START_REPLICATION, or to send a block of data out.
_ANSWER_WAIT = 30.0

# Seconds a closing stream waits for the server to end it (the last status update is read by then).
_CLOSE_WAIT = 2.0

# Seconds between status updates at most while nothing else is reported, each asking the server
# for a keepalive back (which proves the connection alive). A third of the server's
# wal_sender_timeout when that is shorter: told nothing for so long, the server ends the stream.
_STATUS_INTERVAL = 10.0

# Status intervals without a word from the server after which the connection is taken for dead (a
# network cut can leave a socket that never becomes readable, and never fails, for hours).
_SILENT_INTERVALS = 3

# What the relay's replication connections are called in pg_stat_replication, unless Django's
# settings name them.
APPLICATION_NAME = "snorky logical relay"


class ReplicationError(DatabaseError):
    """The server refused or ended the stream, or went silent (``sqlstate`` as it said, if it did)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def wait_readable(streams: list[ReplicationStream], timeout: float) -> None:
    """Waits until one of ``streams`` has data to read, or ``timeout`` seconds."""
    _wait([stream.fileno() for stream in streams], select.POLLIN, timeout)


def _wait(fds: list[int], events: int, timeout: float) -> None:
    # (poll, not select: a process with many connections has descriptors past select's 1024.)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, events)
    poller.poll(max(timeout, 0.0) * 1000)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ReplicationStream:
    """One ``START_REPLICATION`` of a slot, from its confirmed position (see the module docs).

    Nothing here blocks while holding the interpreter: libpq's waiting calls (``get_result``, a
    blocking ``get_copy_data``) would stop every thread of the process, so the socket is waited
    on with ``poll`` and libpq is only asked for what it already has.
    """

    def __init__(self, connection: Any, slot: str, status_interval: float = _STATUS_INTERVAL) -> None:
        self._connection = connection
        self.status_interval = status_interval
        self._pgconn = connection.pgconn
        self.slot = slot
        self.received = 0
        """The highest position the stream is known to have given whole: the end of the last
        commit read, or, between transactions, where the server said it had read to."""
        self.confirmed = 0
        """The position last reported as delivered (the slot's ``confirmed_flush_lsn`` follows)."""
        self.in_transaction = False
        """Whether a transaction's ``Begin`` was read and its ``Commit`` not yet."""
        self._ahead: pgoutput.Message | None = None
        now = time.monotonic()
        self._last_heard = self._last_report = now

    @classmethod
    def open(
        cls,
        params: dict[str, Any],
        *,
        timezone: str,
        slot: str,
        publication: str,
        sender_timeout: float = 0.0,
    ) -> ReplicationStream:
        """Starts streaming ``slot`` (through ``publication``) on a new connection made from Django's
        connection ``params``; values are printed in ``timezone``, as Django's sessions print them.
        ``sender_timeout``: the server's ``wal_sender_timeout`` in seconds (0: none)."""
        interval = min(_STATUS_INTERVAL, sender_timeout / 3) if sender_timeout > 0 else _STATUS_INTERVAL
        deadline = time.monotonic() + _SLOT_BUSY_WAIT
        pause = 0.05
        while True:
            stream = cls(_connect(params, timezone), slot, interval)
            try:
                stream._start(publication)
                return stream
            except ReplicationError as err:
                stream.close(graceful=False)
                if err.sqlstate != _OBJECT_IN_USE or time.monotonic() + pause > deadline:
                    raise
            except BaseException:
                stream.close(graceful=False)
                raise
            time.sleep(pause)
            pause *= 2

    def _start(self, publication: str) -> None:
        from psycopg import pq

        options = f"proto_version '1', publication_names '{_quoted(publication)}', messages 'true'"
        command = f"START_REPLICATION SLOT {_quoted(self.slot)} LOGICAL 0/0 ({options})"
        self._pgconn.send_query(command.encode())
        self._send_all()
        result = self._result(time.monotonic() + _ANSWER_WAIT)
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise self._error(result)

    def _result(self, deadline: float) -> Any:
        """libpq's next result, once it has all of it (waiting on the socket until ``deadline``)."""
        pgconn = self._pgconn
        while pgconn.is_busy():
            if time.monotonic() > deadline:
                raise self._failed("no answer from PostgreSQL")
            _wait([self.fileno()], select.POLLIN, min(deadline - time.monotonic(), 1.0))
            self._consume()
        return pgconn.get_result()

    def fileno(self) -> int:
        return int(self._pgconn.socket)

    @property
    def backend_pid(self) -> int:
        """The server process serving the stream."""
        return int(self._pgconn.backend_pid)

    def read(self, timeout: float, until: int | None = None) -> pgoutput.Message | None:
        """The next pgoutput message, waiting for it up to ``timeout`` seconds; ``None`` when none
        came (sooner, with ``until``, once :attr:`received` has reached it). Keepalives are
        handled here, as are the status updates the server must get now and then."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            return ahead
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            message = self._next()
            if message is not None:
                return message
            if until is not None and self.received >= until:
                return None
            if waited:
                self._keep_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait_readable([self], remaining)
            waited = True  # what arrived since libpq last read the socket is taken first, unwaited
            self._consume()

    def has_message(self) -> bool:
        """Whether a pgoutput message is there to read now (keepalives are handled meanwhile)."""
        if self._ahead is None:
            self._consume()
            self._ahead = self._next()
            if self._ahead is None:
                self._keep_alive()
        return self._ahead is not None

    def _next(self) -> pgoutput.Message | None:
        """The next message libpq already holds; keepalives and messages of no use are taken in
        passing."""
        while True:
            try:
                size, data = self._pgconn.get_copy_data(1)
            except Exception as err:  # psycopg's OperationalError: the connection failed
                raise self._failed(str(err)) from err
            if size == 0:
                return None
            if size < 0:  # the server ended the stream (with an error, or shutting down)
                raise self._error(self._result(time.monotonic() + _CLOSE_WAIT))
            self._last_heard = time.monotonic()
            message = self._take(bytes(data))
            if message is not None:
                return message

    def _take(self, data: bytes) -> pgoutput.Message | None:
        kind = data[:1]
        if kind == b"w":  # XLogData: start, server's WAL end, clock, then the plugin's message
            message = pgoutput.parse(data[25:])  # (None: a kind of message delivery has no use for)
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
            return None
        raise self._failed(f"unexpected message {kind!r} in the stream")

    def _consume(self) -> None:
        try:
            self._pgconn.consume_input()
        except Exception as err:  # psycopg's OperationalError: the connection is gone
            raise self._failed(str(err)) from err

    def keep_alive(self) -> None:
        """Sends a status update if none went for a while (call it during long work between reads)."""
        if time.monotonic() - self._last_report >= self.status_interval:
            self._report(reply=True)

    def _keep_alive(self) -> None:
        self.keep_alive()
        silent = time.monotonic() - self._last_heard
        if silent > self.status_interval * _SILENT_INTERVALS:
            raise ReplicationError(
                f"replication slot {self.slot!r}: no word from PostgreSQL for {silent:.0f} s; taking the "
                "connection for dead"
            )

    def confirm(self, position: int) -> None:
        """Tells the server that everything up to ``position`` is delivered: the slot may move there."""
        if position > self.confirmed:
            self.confirmed = position
            self._report()

    def _report(self, reply: bool = False) -> None:
        """Sends a standby status update: received, delivered (twice: flushed and applied), clock,
        and whether the server should answer at once."""
        clock = time.time_ns() // 1000 - _POSTGRES_EPOCH_US
        received = max(self.received, self.confirmed)
        update = b"r" + struct.pack(">QQQqB", received, self.confirmed, self.confirmed, clock, int(reply))
        try:
            self._pgconn.put_copy_data(update)
        except Exception as err:  # psycopg's OperationalError: the connection failed
            raise self._failed(str(err)) from err
        self._send_all()
        self._last_report = time.monotonic()

    def _send_all(self) -> None:
        """Sends what libpq holds (the connection is non-blocking: a flush may need several goes)."""
        deadline = time.monotonic() + _ANSWER_WAIT
        try:
            while self._pgconn.flush():
                if time.monotonic() > deadline:
                    raise self._failed("PostgreSQL stopped reading")
                _wait([self.fileno()], select.POLLOUT, 1.0)
        except ReplicationError:
            raise
        except Exception as err:  # psycopg's OperationalError: the connection failed
            raise self._failed(str(err)) from err

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
                    if size < 0:  # the server ended its side too: the slot is free once it answers
                        while self._result(deadline) is not None:
                            pass
                        break
                    if size == 0:
                        wait_readable([self], deadline - time.monotonic())
                        self._consume()
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
            message = self._pgconn.error_message.decode(errors="replace").strip()
        return self._failed(message or "PostgreSQL ended the stream (shutting down?)", sqlstate)

    def _failed(self, why: str, sqlstate: str | None = None) -> ReplicationError:
        """The error saying ``why`` (libpq's text, on one line) this slot's stream failed."""
        return ReplicationError(f"replication slot {self.slot!r}: {_one_line(why)}", sqlstate)


def _connect(params: dict[str, Any], timezone: str) -> Any:
    import psycopg

    # The slot's values are printed in the walsender's session formats: make them Django's.
    zone = timezone.replace("\\", "\\\\").replace(" ", "\\ ")
    options = f"{params.get('options') or ''} -c TimeZone={zone}".strip()
    named = {"application_name": APPLICATION_NAME, **params}
    return psycopg.connect(**{**named, "options": options}, autocommit=True, replication="database")
