"""Logical delivery (``DELIVERY = "logical"``): deltas read from PostgreSQL's own record of commits.

Saving a row costs nothing more than it would without ``@subscribable``: the saving thread renders
nothing, writes no outbox row and sends nothing. The relay (run by ``manage.py snorky``) streams
the committed changes of the subscribable tables from a logical replication slot (PostgreSQL's
built-in ``pgoutput`` plugin, over the streaming replication protocol: see
:mod:`snorky_django.logical_stream`), turns each row into the model instance it stands for,
renders it as the model's deltas always are, and publishes the deltas in commit order. What a
connection changes by other means reaches the browsers too: ``QuerySet.update()`` on any manager,
raw SQL, ``loaddata``, cascades the database runs itself.

Set up once per database by :func:`snorky_django.logical_setup.prepare` (the relay calls it at
start, so ``manage.py snorky`` fails there with a message saying what to set). Rows become deltas
in :mod:`snorky_django.logical_rows`; the deltas only Python knows of join the stream through
:mod:`snorky_django.logical_messages`.

Exactly once: the server sends each transaction once it reads its commit, and the relay tells it
to move the slot only past what the server (Snorky's) accepted: to the end of the last commit
read, or, between transactions, to where the server said it had read (never to the flushed
position, which may cut a commit record: a transaction whose commit starts before the slot is
skipped for good). A new stream starts again from the slot's confirmed position. Each delta has a
*position* (its transaction's commit LSN, the change's place in the transaction, its place among
the deltas of that change), so the stream is the same every time it is read. Before sending a
batch the relay records its first and last positions and its idempotency key (table
:class:`~snorky_django.models.LogicalClaim`, committed first); a relay that died after sending
finds the record (read whenever the lock is taken, and after a failed stream), sends the same
positions again under the same key (the server drops a repeat), and skips what earlier batches
sent. A transaction larger than a batch is sent in several.

What is read from the database after the commit: a serializer that follows relations (a foreign
key's object, a many-to-many list) reads them when the relay renders the row, not as they were at
the commit. Many-to-many changes and :func:`snorky_django.publish_deltas` still make their deltas
in the saving thread, and write them into the stream with ``pg_logical_emit_message``, so they
keep their place among the row changes.

When: the relay waits on the replication connection and reads as soon as the server sends.
Decoding reads flushed WAL only: with ``synchronous_commit = off`` a change becomes visible when
PostgreSQL flushes it (``wal_writer_delay``, 200 ms by default).

A slot that can no longer be read (invalidated by ``max_slot_wal_keep_size``, or its publication
dropped) is dropped and created again, with an error saying that the changes committed in between
are lost; anything else that fails a stream leaves the slot where it was, to be read again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections, transaction

from snorky.backend import SnorkyBackend
from snorky_django import pgoutput
from snorky_django.delivery import describe, get_backend, send_deltas
from snorky_django.logical_messages import MESSAGE_PREFIX
from snorky_django.logical_rows import DeltaMaker
from snorky_django.logical_setup import Target, prepare, recreate_slot, relayed_databases
from snorky_django.logical_stream import ReplicationStream, wait_readable
from snorky_django.relay import OutboxRelay

__all__ = ["LOCK", "LogicalRelay", "Position"]

logger = logging.getLogger("snorky_django.logical")

#: The session advisory lock the active logical relay of a database holds (a slot serves one
#: reader at a time; the others wait their turn rather than fail).
LOCK = int.from_bytes(hashlib.blake2b(b"snorky_django logical relay", digest_size=8).digest(), "big", signed=True)

# Only for the tests of exactly-once delivery: the relay dies between the server's answer and the
# slot's advance, as a crash there would (never set it elsewhere).
_CRASH_AFTER_PUBLISH = os.environ.get("SNORKY_TEST_RELAY_CRASH") == "after-publish"

# Seconds the relay thread waits on its streams before it looks at its other duties (a stop, a
# lock another relay gave up); data on a stream ends the wait at once.
_WAIT = 0.1

# Seconds the relay waits for the next message of a transaction it is reading before it looks at
# its other duties (the server sends them back to back; a large one may take a while to decode).
_REST_OF_TRANSACTION = 0.1

# Seconds between looks at the connection holding the lock while a stream is open.
_LOCK_CHECK = 5.0

# Seconds a relay that found the slot's lock taken waits before trying again.
_STANDBY_CHECK = 0.5

# Changes rendered together at most (their related rows read in one query per relation).
_RENDER_TOGETHER = 200

# The SQLSTATE of a stream whose publication is gone (undefined_object).
_UNDEFINED_OBJECT = "42704"


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


@dataclass
class _Claim:
    first: Position
    last: Position
    key: str


class LogicalRelay(OutboxRelay):
    """Relays the logical replication slot of each PostgreSQL database (see the module docs), on a
    background thread (``start()``/``stop()``) or on demand (``relay_once``, ``drain``)."""

    lock_key = LOCK
    name = "logical relay"

    def __init__(self, backend: SnorkyBackend | None = None, **options: Any) -> None:
        options.setdefault("poll_interval", _WAIT)
        super().__init__(backend, listen=False, **options)
        self._targets: dict[str, Target] = {}
        # Per database where another relay holds the lock: when to try to take it again.
        self._standby_until: dict[str, float] = {}
        # Per database: the batch recorded last and maybe not sent (read from the database when
        # the lock is taken, or after a stream failed; kept here otherwise), the readers of the
        # tables as pgoutput last described them, and the open stream's reader.
        self._claims: dict[str, _Claim | None] = {}
        self._readers: dict[str, dict[Any, Any]] = {}
        self._slot_readers: dict[str, _SlotReader] = {}
        self._lock_checked: dict[str, float] = {}
        # Per database: the server process of the last stream this relay dropped (see _drop_stream).
        self._abandoned: dict[str, int] = {}
        self.old_rows_missing: set[str] = set()
        """The models whose missing old rows were logged (once per relay)."""

    def _databases(self) -> list[str]:
        return self.databases if self.databases is not None else relayed_databases()

    def prepare(self) -> None:
        """Sets up every database (see :mod:`snorky_django.logical_setup`); raises
        ``ImproperlyConfigured`` saying what to set."""
        for using in self._databases():
            self._targets[using] = prepare(using)

    def start(self) -> None:
        """Relays on a daemon thread until :meth:`stop`, after sending what an earlier outbox
        delivery left in the outbox table (this relay does not read it)."""
        if not self.running:
            self._send_outbox_left()
        super().start()

    def _send_outbox_left(self) -> None:
        from snorky_django.models import OutboxEntry

        for using in self._databases():
            try:
                waiting = OutboxEntry.objects.using(using).filter(error="").exists()
            except DatabaseError:  # the table is not there (not migrated): nothing left in it
                continue
            if not waiting:
                continue
            try:
                sent = OutboxRelay(self.backend, databases=[using]).drain(timeout=60.0)
            except Exception as err:
                logger.warning(
                    "Snorky: deltas an earlier outbox delivery left in %r could not be sent (%s); they stay "
                    'there: run manage.py snorky --relay-only with DELIVERY = "outbox" to send them',
                    using,
                    err,
                )
                continue
            logger.warning("Snorky: sent %d delta(s) an earlier outbox delivery left in %r", sent, using)

    def drain(self, timeout: float = 10.0) -> int:
        """Relays until everything committed before the call is delivered (or ``timeout``)."""
        return self._relay_on_demand(self._databases(), timeout, marker=True)

    def relay_once(self, using: str, timeout: float = 10.0) -> int:
        """Relays what ``using`` had flushed when called (or what ``timeout`` seconds allow);
        returns how many deltas the server accepted (0 when another relay is the active one).
        Not while the relay runs its own thread (``start()``)."""
        return self._relay_on_demand([using], timeout, marker=False)

    def _relay_on_demand(self, databases: list[str], timeout: float, marker: bool) -> int:
        """Reads each database's slot up to its flushed position (after a marker transaction
        flushed everything committed before, with ``marker``), on a stream opened and closed here."""
        if self.running and threading.current_thread() is not self._thread:
            raise RuntimeError("the relay is running on its own thread: stop() it before relaying from another")
        deadline = time.monotonic() + timeout
        total = 0
        try:
            for using in databases:
                if marker:
                    _write_marker(using)
                with connections[using].cursor() as cursor:
                    cursor.execute("SELECT pg_current_wal_flush_lsn()::text")
                    until = _lsn(cursor.fetchone()[0])
                while time.monotonic() < deadline:
                    sent, complete = self._relay_slot(using, self.backend or get_backend(), until, deadline)
                    total += sent
                    if complete:
                        break
        finally:
            for using in databases:
                self._release(using)
            self._close_own_connections()
        return total

    def _busy_after_pass(self, using: str) -> bool:
        return not self._relay_slot(using, self.backend or get_backend())[1]

    def _wait_idle(self) -> None:
        """Waits for a message on the open streams, for ``poll_interval`` at most (see ``_WAIT``).
        The keepalives the server sends after every flush of the WAL, whatever the table, are
        taken here in passing, not by a pass each."""
        if not self._slot_readers:
            self._wake.wait(self.poll_interval)
            return
        deadline = time.monotonic() + self.poll_interval
        while not self._stop.is_set():
            for using, reader in list(self._slot_readers.items()):
                try:
                    if reader.stream.has_message():
                        return
                except Exception as err:
                    logger.warning("Snorky %s: %s; opening the stream again", self.name, err)
                    self._claims.pop(using, None)  # as after any failed stream
                    self._drop_stream(using)
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._slot_readers:
                return
            wait_readable([reader.stream for reader in self._slot_readers.values()], remaining)

    def _relay_slot(
        self, using: str, backend: SnorkyBackend, until: int | None = None, deadline: float = 0.0
    ) -> tuple[int, bool]:
        """Reads what the slot's stream has (waiting until it has given ``until``, or ``deadline``):
        the deltas the server accepted, and whether the stream had no more."""
        if time.monotonic() < self._standby_until.get(using, 0.0):
            return 0, True
        if not self._hold_lock(using):
            # Another relay reads this slot: look again in a while, not at every poll.
            if using not in self._standby_until:
                logger.info("Snorky: another relay reads the slot of %r; this one waits to take over", using)
            self._standby_until[using] = time.monotonic() + _STANDBY_CHECK
            self._drop_stream(using)
            return 0, True
        if self._standby_until.pop(using, None) is not None:
            logger.info("Snorky: this relay now reads the slot of %r", using)
        self._check_lock_connection(using)
        if self._unsent.pop(using, False):
            # The lock was just taken (again): another relay may have worked meanwhile, so the
            # record of the batch in flight is read from the database, not from memory.
            self._claims.pop(using, None)
            self._drop_stream(using)
        target = self._targets.get(using)
        if target is None:
            target = self._targets[using] = prepare(using)
        if not target.models:
            return 0, True
        try:
            reader = self._slot_readers.get(using)
            if reader is None:
                reader = self._open_stream(using, target)
                if reader is None:
                    return 0, True
            return reader.pump(backend, until, deadline)
        except Exception as err:
            self._claims.pop(using, None)  # whether the last batch went out is not known
            self._drop_stream(using)  # it may be cut, or in the middle of a transaction
            if getattr(err, "sqlstate", None) != _UNDEFINED_OBJECT:
                import psycopg

                if isinstance(err, psycopg.Error):
                    raise DatabaseError(str(err)) from err  # the stream's connection: retried as Django's are
                raise
            self._targets[using] = recreate_slot(using, f"cannot be decoded any more ({err})")
            return 0, True

    def _check_lock_connection(self, using: str) -> None:
        """Asks the lock's connection a trivial question now and then while streaming: if the
        server ended that session (``idle_session_timeout``, an administrator), the lock went with
        it and another relay may hold it now, so this one must stop streaming the slot."""
        if using not in self._slot_readers or time.monotonic() < self._lock_checked.get(using, 0.0) + _LOCK_CHECK:
            return
        self._lock_checked[using] = time.monotonic()
        try:
            with connections[using].cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError:
            self._drop_stream(using)
            raise

    def _open_stream(self, using: str, target: Target) -> _SlotReader | None:
        """Starts streaming the slot of ``using``, or creates it again (``None``) if it is gone."""
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_current_wal_flush_lsn()::text, confirmed_flush_lsn::text, wal_status, "
                "extract(epoch FROM current_setting('wal_sender_timeout')::interval), active_pid "
                "FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots ON slot_name = %s",
                [target.slot],
            )
            flushed_text, confirmed_text, wal_status, sender_timeout, holder = cursor.fetchone()
            abandoned = self._abandoned.pop(using, None)
            if holder is not None and holder == abandoned:
                logger.info("Snorky: ending the server process %d of a stream this relay gave up", holder)
                cursor.execute("SELECT pg_terminate_backend(%s)", [holder])
        if confirmed_text is None or wal_status == "lost":
            why = "was gone" if confirmed_text is None else "was invalidated (its WAL was removed)"
            self._targets[using] = recreate_slot(using, why)
            return None
        stream = ReplicationStream.open(
            connection.get_connection_params(),
            timezone=connection.timezone_name,
            slot=target.slot,
            publication=target.publication,
            sender_timeout=float(sender_timeout),
        )
        try:
            reader = _SlotReader(self, target, using, stream, _lsn(confirmed_text), _lsn(flushed_text))
        except BaseException:
            stream.close(graceful=False)  # (left open, it would hold the slot against the next try)
            raise
        self._slot_readers[using] = reader
        self._lock_checked[using] = time.monotonic()
        return reader

    def _drop_stream(self, using: str) -> None:
        reader = self._slot_readers.pop(using, None)
        if reader is not None:
            # Its server process may not know yet (after a network cut, not until
            # wal_sender_timeout): it would hold the slot against the next stream meanwhile.
            self._abandoned[using] = reader.stream.backend_pid
            reader.stream.close(graceful=False)

    def _close_own_connections(self) -> None:
        for using in list(self._slot_readers):
            reader = self._slot_readers.pop(using)
            reader.stream.close()  # after a last status update: the slot is where this relay left it
        self._claims.clear()  # whoever relays next reads the records again

    def __repr__(self) -> str:
        return f"<LogicalRelay running={self.running} relayed={self.relayed}>"


def _write_marker(using: str) -> None:
    """Commits a transaction holding only a logical message the relay skips (its prefix is not
    :data:`MESSAGE_PREFIX`), with synchronous_commit on: a flush of the WAL up to everything
    committed before."""
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = on")
        cursor.execute("SELECT pg_logical_emit_message(true, %s, '')", [f"{MESSAGE_PREFIX}-marker"])


class _SlotReader:
    """What a relay has read of a slot through one stream: the transaction it is in, the batch it
    fills, the recorded batch it may have to send again. It lives as long as the stream."""

    def __init__(
        self,
        relay: LogicalRelay,
        target: Target,
        using: str,
        stream: ReplicationStream,
        confirmed: int,
        flushed: int,
    ) -> None:
        self.relay = relay
        self.target = target
        self.using = using
        self.stream = stream
        self.confirmed = confirmed
        self.flushed = flushed
        self.backend: SnorkyBackend | None = None
        self.claim = self._claim()
        self.recovered: list[Any] = []
        self.batch: list[tuple[Position, Any]] = []
        self.commit_lsn = self.change = 0
        self.maker = DeltaMaker(target, using, relay.old_rows_missing, relay._readers.setdefault(using, {}))
        # Changes waiting to be rendered together (their related rows read once for all of them).
        self.pending: list[tuple[Position, pgoutput.Change | pgoutput.Emitted]] = []
        self.sent = 0

    def pump(self, backend: SnorkyBackend, until: int | None, deadline: float) -> tuple[int, bool]:
        """Reads what the stream has now (waiting, with ``until``, until it has given that
        position), sends it, and moves the slot past what was delivered. Returns the deltas the
        server accepted, and whether the stream had nothing more (or reached ``until``)."""
        self.backend, self.sent = backend, 0
        limit = max(self.relay.batch_size * 4, 1000)  # then the relay looks at its other duties
        read = 0
        while read < limit:
            if until is not None and self.stream.received < until:
                wait = max(deadline - time.monotonic(), 0.0)
            elif self.stream.in_transaction:
                # The server sends a transaction's messages one after the other, each on its own:
                # the rest of it is a moment away, and a pass per message would cost a pass each.
                wait = _REST_OF_TRANSACTION
            else:
                wait = 0.0
            message = self.stream.read(wait, until)
            if message is None:
                break
            read += 1
            self._take(message)
        self._render()
        if self.claim is not None and self.stream.received > self.claim.last.commit_lsn:
            self._send_recovered()  # the stream is past the recorded batch: all of it is read
        self._flush()
        self._advance()
        complete = read < limit and (until is None or self.stream.received >= until)
        return self.sent, complete

    def _take(self, message: pgoutput.Message) -> None:
        if isinstance(message, pgoutput.Begin):
            self.commit_lsn, self.change = message.final_lsn, 0
        elif isinstance(message, pgoutput.Relation):
            self.maker.relation(message)
        elif isinstance(message, (pgoutput.Change, pgoutput.Emitted)):
            first = Position(self.commit_lsn, self.change, 0)
            self.change += 1
            if self.claim is not None and first < self.claim.first and isinstance(message, pgoutput.Change):
                return  # sent by an earlier batch: not even rendered again
            if isinstance(message, pgoutput.Change) and not self.maker.concerns(message):
                return
            self.pending.append((first, message))
            if len(self.pending) >= min(self.relay.batch_size, _RENDER_TOGETHER):
                self._render()
        elif isinstance(message, pgoutput.Commit):
            self._render()
        elif isinstance(message, pgoutput.Truncate):
            names = ", ".join(self.maker.model_names(message.relation_oids)) or "a subscribable table"
            logger.warning("Snorky: %s truncated (TRUNCATE); no delta says so: clients keep their rows", names)

    def _render(self) -> None:
        """Renders the waiting changes (together: see :meth:`DeltaMaker.of_many`) and adds their
        deltas in stream order."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        for (first, _), deltas in zip(pending, self.maker.of_many([m for _, m in pending]), strict=True):
            for part, delta in enumerate(deltas):
                self._add(Position(first.commit_lsn, first.change, part), delta)

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
        self.relay._claims[self.using] = None  # settled: whatever follows is recorded anew
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

    def _publish(self, deltas: list[Any], key: str) -> None:
        self.stream.keep_alive()  # (a pass sending many batches reads nothing meanwhile)
        refused = send_deltas(deltas, self.backend, key=key)
        if _CRASH_AFTER_PUBLISH:
            os._exit(70)
        for position, reason in refused:
            logger.error("Snorky refused %s from the replication slot: %s", describe(deltas[position]), reason)
        accepted = len(deltas) - len(refused)
        self.sent += accepted
        self.relay.relayed += accepted
        logger.debug(
            "Snorky logical relay: %d delta(s) of %r accepted, %d refused (batch %s)",
            accepted,
            self.using,
            len(refused),
            key,
        )

    def _advance(self) -> None:
        """Lets the slot move past everything delivered: to the end of the last commit read, or to
        where the server said it had read, when nothing read waits to be sent."""
        if self.batch or self.recovered or self.pending or self.claim is not None:
            return
        self.stream.confirm(self.stream.received)

    def _claim(self) -> _Claim | None:
        """The batch recorded last, if it may not have been sent (its transactions are not all
        behind the slot), and if it belongs to this server's stream. Read from the database once
        per holder of the lock (and after a failed stream); this relay knows its own otherwise."""
        from snorky_django.models import LogicalClaim

        known = self.relay._claims
        if self.using in known:
            return known[self.using]
        found = LogicalClaim.objects.using(self.using).filter(slot=self.target.slot).first()
        claim = None
        if found is not None:
            claim = self._usable(Position.parse(found.first), Position.parse(found.last), found.key)
        known[self.using] = claim
        return claim

    def _usable(self, first: Position, last: Position, key: str) -> _Claim | None:
        claim = _Claim(first, last, key)
        if claim.last.commit_lsn < self.confirmed:
            return None  # sent, and the slot moved past it
        if claim.first.commit_lsn > self.flushed:
            # Ahead of all this server ever wrote: copied with the data from another server (a
            # restore, an upgrade by replication). Honouring it would skip the whole stream.
            logger.warning(
                "Snorky: ignoring the logical delivery claim of slot %r: its position is ahead of this "
                "server's WAL (a copy from another server?)",
                self.target.slot,
            )
            return None
        return claim

    def _write_claim(self, first: Position, last: Position, key: str) -> None:
        """Records the batch before it is sent (durably: the relay's session commits with
        ``synchronous_commit`` on, see :meth:`OutboxRelay._hold_lock`)."""
        from snorky_django.models import LogicalClaim

        table = connections[self.using].ops.quote_name(LogicalClaim._meta.db_table)
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f'INSERT INTO {table} (slot, "first", "last", key) VALUES (%s, %s, %s, %s) '
                'ON CONFLICT (slot) DO UPDATE SET "first" = EXCLUDED."first", "last" = EXCLUDED."last", '
                "key = EXCLUDED.key",
                [self.target.slot, str(first), str(last), key],
            )
        # Sent next; should the stream fail before it is, the next one reads this record again.
        self.relay._claims[self.using] = None
