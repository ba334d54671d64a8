"""The outbox relay: moves committed deltas from the outbox table to the Snorky server.

Every pass (:meth:`OutboxRelay.relay_once`) records which of the oldest entries form the next
batch, under a new idempotency key, and commits that before sending anything; it publishes them in
one request with the key, and deletes them only after the server accepted them. If the server
cannot be reached the entries stay, claimed, for the next try. If the relay dies between the
server's answer and the deletion, the next pass sends the same entries with the same key, and the
server, which remembers recent keys, drops the repeat: each delta reaches the browsers once.

On PostgreSQL a pass is two statements in autocommit and the request: the claim is one
``UPDATE ... RETURNING`` (the entries' ids and deltas), the deletion one ``DELETE``. Order is kept
by letting a single relay work per database at a time: the active relay holds a session advisory
lock on its connection (taken once, kept while the connection lives); the others try to take it at
each pass and find nothing to do until the active one stops, dies or loses its connection, which
releases the lock. A relay that has just taken the lock first sends again any batch left claimed
(by a crashed relay, or a request that failed), oldest first, then claims new ones.

Other databases take two transactions per pass: the claim (``SELECT ... FOR UPDATE`` of the oldest
entries and an ``UPDATE`` of their batch key, committed on its own), then a transaction that locks
the batch's entries (so two relays never send the same batch nor reorder it, on MySQL), publishes
them and deletes them. SQLite has no row locks: there, run a single relay.

Only the server's refusal of a delta itself (one of
:data:`~snorky_django.delivery.DELTA_REFUSALS`, a delta alone over the body limit) sets that entry
aside, with ``error`` set, never to be retried. Anything else ("Internal error", another HTTP
status, a timeout, the server unreachable) leaves the batch where it is, and the relay tries again
with a growing pause (up to ``OUTBOX_MAX_RETRY_DELAY``).

When to look: on PostgreSQL, the transaction writing outbox rows notifies channel
``snorky_outbox`` (:mod:`snorky_django.outbox_writes`), so the notification arrives when, and only
if, it commits; the relay listens (``LISTEN``, on a connection of its own per database) and starts
a pass at once. It also polls every ``OUTBOX_POLL_INTERVAL`` seconds, the only way on other databases and
the safety net on PostgreSQL: a notification sent while the listening connection was down is not
kept, so the listener, once connected again, wakes the relay to look.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, close_old_connections, connections, router, transaction

from snorky.backend import SnorkyBackend, SnorkyError
from snorky_django.conf import snorky_settings
from snorky_django.delivery import describe, get_backend, send_deltas
from snorky_django.outbox_writes import NOTIFY_CHANNEL

if TYPE_CHECKING:
    from snorky_django.models import OutboxEntry

__all__ = ["ADVISORY_LOCK", "NOTIFY_CHANNEL", "OutboxRelay", "batch_key"]

logger = logging.getLogger("snorky_django.relay")


# Only for the tests of exactly-once delivery: the relay process dies between the server's answer
# and the commit that deletes the batch, as a crash there would (never set it elsewhere).
_CRASH_AFTER_PUBLISH = os.environ.get("SNORKY_TEST_RELAY_CRASH") == "after-publish"


def batch_key(using: str, first: int, last: int) -> str:
    """A new idempotency key for the batch of entries ``first``..``last`` of database ``using``.

    The random part makes it unique whatever the database, the site, or a reset of the table's
    ids; the alias and the ids are there for the logs. At most 200 characters (the server's limit).
    """
    prefix, suffix = _key_parts(using)
    return f"{prefix}{first}-{last}{suffix}"


def _key_parts(using: str) -> tuple[str, str]:
    """What comes before and after the ids in a new :func:`batch_key`."""
    return f"snorky-outbox:{using[:40]}:", f":{secrets.token_urlsafe(16)}"


#: The session advisory lock the active relay of a PostgreSQL database holds (64-bit key, derived
#: from a fixed text so that it is the same in every process and unlikely to be anyone else's).
ADVISORY_LOCK = int.from_bytes(
    hashlib.blake2b(b"snorky_django outbox relay", digest_size=8).digest(), "big", signed=True
)


# How often a listener with nothing to report looks whether the relay is stopping, and its first
# pause before connecting again (doubled each time, up to OUTBOX_MAX_RETRY_DELAY), in seconds.
_LISTEN_CHECK = 0.5


class OutboxRelay:
    """Relays the outbox on a background thread (``start()``/``stop()``), or pass by pass.

    ``backend`` defaults to the shared client (``BACKEND_URL``); ``databases`` to every database
    the outbox table is migrated to. ``listen``: wake on PostgreSQL's notifications (see the module
    docs) besides polling.
    """

    #: The session advisory lock the active relay of a PostgreSQL database holds.
    lock_key = ADVISORY_LOCK
    #: What the logs call it.
    name = "outbox relay"

    def __init__(
        self,
        backend: SnorkyBackend | None = None,
        *,
        databases: list[str] | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        max_retry_delay: float | None = None,
        listen: bool = True,
    ) -> None:
        self.backend = backend
        self.databases = databases
        self.batch_size = batch_size or int(snorky_settings.OUTBOX_BATCH_SIZE)
        self.poll_interval = poll_interval if poll_interval is not None else float(snorky_settings.OUTBOX_POLL_INTERVAL)
        self.max_retry_delay = (
            max_retry_delay if max_retry_delay is not None else float(snorky_settings.OUTBOX_MAX_RETRY_DELAY)
        )
        self.listen = listen
        self.relayed = 0
        """Deltas the server accepted through this relay."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[threading.Thread] = []
        self._listening: set[str] = set()
        # PostgreSQL: per database, the DB-API connection on which this relay holds the advisory
        # lock, and whether a batch may be left claimed and unsent (checked once the lock is taken,
        # and after any pass that failed between its claim and its deletion).
        self._lock_holder: dict[str, Any] = {}
        self._unsent: dict[str, bool] = {}

    def _databases(self) -> list[str]:
        if self.databases is not None:
            return self.databases
        from snorky_django.models import OutboxEntry

        return [alias for alias in connections if router.allow_migrate_model(alias, OutboxEntry)]

    def relay_once(self, using: str) -> int:
        """Relays one batch from database ``using``; returns how many deltas the server accepted.

        Raises :class:`~snorky.SnorkyConnectionError` (nothing deleted) when the server is down.
        On PostgreSQL, returns 0 while another relay is the active one (see the module docs); called
        from any thread but the relay's own, it gives the advisory lock back before returning.
        """
        from snorky_django.models import OutboxEntry

        backend = self.backend or get_backend()
        if connections[using].vendor == "postgresql":
            try:
                return self._relay_exclusive(using, backend)
            finally:
                if threading.current_thread() is not self._thread:
                    self._release(using)
        key = self._claim(using)
        if key is None:
            return 0
        entries_of = OutboxEntry.objects.using(using).filter(batch=key, error="").order_by("id")
        if connections[using].features.has_select_for_update:
            # The batch stays locked until it is deleted: another relay waits, then takes the next.
            with transaction.atomic(using=using):
                return self._relay(list(entries_of.select_for_update()), key, backend, using)
        # Without row locks (SQLite), hold no transaction during the request: one relay per database.
        return self._relay(list(entries_of), key, backend, using)

    def _relay_exclusive(self, using: str, backend: SnorkyBackend) -> int:
        """One pass on PostgreSQL: claim (one statement), publish, delete (one statement)."""
        from snorky_django.models import OutboxEntry

        if not self._hold_lock(using):
            return 0
        connection = connections[using]
        table = connection.ops.quote_name(OutboxEntry._meta.db_table)
        rows: list[tuple[int, Any, str]] = []
        with connection.cursor() as cursor:
            if self._unsent.get(using, True):
                # A batch claimed before (by a relay that died, or by a pass whose request failed)
                # goes again first, whole and under its key, so the server recognises a repeat.
                cursor.execute(
                    f"SELECT id, delta, batch FROM {table} WHERE batch = ("
                    f"SELECT batch FROM {table} WHERE error = '' AND batch <> '' ORDER BY id LIMIT 1"
                    ") AND error = '' ORDER BY id"
                )
                rows = cursor.fetchall()
            if not rows:
                self._unsent[using] = False
                # The claim commits by itself (autocommit) before anything is sent: the oldest
                # entries nobody claimed, in id order, under a key naming their first and last ids.
                prefix, suffix = _key_parts(using)
                cursor.execute(
                    f"WITH claimed AS (SELECT id FROM {table} WHERE error = '' AND batch = '' "
                    "ORDER BY id LIMIT %s), "
                    "span AS (SELECT min(id) AS first, max(id) AS last FROM claimed) "
                    f"UPDATE {table} SET batch = %s::text || span.first::text || '-' || span.last::text || %s::text "
                    "FROM span "
                    f"WHERE {table}.id IN (SELECT id FROM claimed) RETURNING {table}.id, {table}.delta, {table}.batch",
                    [self.batch_size, prefix, suffix],
                )
                rows = sorted(cursor.fetchall())
                if not rows:
                    return 0
                self._unsent[using] = True
        key = rows[0][2]
        delta_field: Any = OutboxEntry._meta.get_field("delta")
        entries = [
            OutboxEntry(id=pk, delta=delta_field.from_db_value(delta, None, connection), batch=key)
            for pk, delta, _ in rows
        ]
        count = self._relay(entries, key, backend, using)
        self._unsent[using] = False
        return count

    def _hold_lock(self, using: str) -> bool:
        """Whether this relay holds the advisory lock of ``using`` on its current connection (taking
        it if it is free). A new connection (the old one was lost) must take it again."""
        connection = connections[using]
        connection.ensure_connection()
        if self._lock_holder.get(using) is connection.connection:
            return True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [self.lock_key])
            row = cursor.fetchone()
        if not (row and row[0]):
            return False
        self._lock_holder[using] = connection.connection
        # What this session commits (a batch's record, its deletion) must survive a crash of the
        # database before the batch is sent: with the server's synchronous_commit off, a claim
        # lost that way would send the batch again under a new key.
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = on")
        self._unsent[using] = True
        return True

    def _release(self, using: str) -> None:
        """Gives back the advisory lock of ``using`` if this thread's connection holds it."""
        connection = connections[using]
        holder = self._lock_holder.get(using)
        if holder is None or holder is not connection.connection:
            return
        del self._lock_holder[using]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [self.lock_key])
        except DatabaseError:  # the connection is gone, and the lock with it
            pass

    def _claim(self, using: str) -> str | None:
        """The key of the oldest batch, committed before anything is sent.

        If the oldest entry was sent before (the relay died before deleting it), its batch is
        sent again exactly as it was, under the same key, so the server recognises the repeat.
        Otherwise the oldest entries up to ``batch_size`` (and up to the next batch already
        recorded) become a new batch under a new key. ``None`` when the outbox is empty.
        """
        from snorky_django.models import OutboxEntry

        with transaction.atomic(using=using):
            oldest = OutboxEntry.objects.using(using).filter(error="").order_by("id").only("id", "batch")
            if connections[using].features.has_select_for_update:
                oldest = oldest.select_for_update()
            entries = list(oldest[: self.batch_size])
            if not entries:
                return None
            if entries[0].batch:
                return entries[0].batch
            ids: list[int] = []
            for entry in entries:
                if entry.batch:
                    break
                ids.append(entry.pk)
            key = batch_key(using, ids[0], ids[-1])
            OutboxEntry.objects.using(using).filter(pk__in=ids).update(batch=key)
            return key

    def _relay(self, entries: list[OutboxEntry], key: str, backend: SnorkyBackend, using: str) -> int:
        from snorky_django.models import OutboxEntry

        if not entries:
            return 0  # another relay sent them meanwhile
        refused = send_deltas([entry.delta for entry in entries], backend, key=key)
        if _CRASH_AFTER_PUBLISH:
            os._exit(70)
        failed_ids = set()
        for position, reason in refused:
            entry = entries[position]
            logger.error("Snorky refused outbox entry %d (%s): %s", entry.pk, describe(entry.delta), reason)
            OutboxEntry.objects.using(using).filter(pk=entry.pk).update(error=reason)
            failed_ids.add(entry.pk)
        accepted = [entry.pk for entry in entries if entry.pk not in failed_ids]
        # One DELETE (a queryset's delete() may first select the rows to send signals).
        table = connections[using].ops.quote_name(OutboxEntry._meta.db_table)
        with connections[using].cursor() as cursor:
            cursor.execute(f"DELETE FROM {table} WHERE batch = %s AND error = ''", [key])
        self.relayed += len(accepted)
        logger.debug(
            "Snorky outbox relay: %d delta(s) of %r accepted, %d refused (batch %s)",
            len(accepted),
            using,
            len(failed_ids),
            key,
        )
        return len(accepted)

    def _busy_after_pass(self, using: str) -> bool:
        """Relays one pass of ``using``; whether more may be waiting (the next pass starts at once)."""
        return self.relay_once(using) >= self.batch_size

    def _wait_idle(self) -> None:
        """Waits after a pass that left nothing behind: the poll interval, which a notification
        ends early."""
        self._wake.wait(self.poll_interval)

    def drain(self, timeout: float = 10.0) -> int:
        """Relays until every database's outbox is empty (or ``timeout``); returns the count."""
        deadline = time.monotonic() + timeout
        total = 0
        for using in self._databases():
            while time.monotonic() < deadline:
                count = self.relay_once(using)
                total += count
                if count == 0:
                    break
        return total

    def start(self) -> None:
        """Relays on a daemon thread until :meth:`stop` (and listens, on PostgreSQL)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="snorky-outbox-relay", daemon=True)
        self._thread.start()
        self._listeners = [
            threading.Thread(target=self._listen, args=(alias,), name=f"snorky-outbox-listen-{alias}", daemon=True)
            for alias in (self._listenable() if self.listen else [])
        ]
        for listener in self._listeners:
            listener.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops the thread after its current batch; returns whether it stopped within ``timeout``."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in [self._thread, *self._listeners]:
            if thread is not None:
                thread.join(max(deadline - time.monotonic(), 0.0))
        return not self.running and not any(listener.is_alive() for listener in self._listeners)

    @property
    def running(self) -> bool:
        """Whether the relay thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def active(self) -> frozenset[str]:
        """The PostgreSQL databases this relay is the active one of (it holds their lock)."""
        return frozenset(self._lock_holder)

    @property
    def listening(self) -> frozenset[str]:
        """The databases whose notifications the relay receives right now."""
        return frozenset(self._listening)

    def _listenable(self) -> list[str]:
        """The databases that notify: PostgreSQL through psycopg 3 (psycopg2 is polled)."""
        aliases = [alias for alias in self._databases() if connections[alias].vendor == "postgresql"]
        if not aliases:
            return []
        try:
            from django.db.backends.postgresql.psycopg_any import is_psycopg3
        except ImportError:  # pragma: no cover (psycopg missing: Django could not connect either)
            return []
        if not is_psycopg3:
            logger.info("Snorky outbox relay: psycopg2 cannot be waited on here; polling %s", ", ".join(aliases))
            return []
        return aliases

    def _listen(self, using: str) -> None:
        """Wakes the relay on each notification of database ``using``, reconnecting when cut."""
        import psycopg

        delay = _LISTEN_CHECK
        failing = False
        while not self._stop.is_set():
            try:
                params = connections[using].get_connection_params()
                with psycopg.connect(**params, autocommit=True) as listener:
                    listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._listening.add(using)
                    # Whatever committed while nobody listened is found by this pass.
                    self._wake.set()
                    if failing:
                        logger.warning("Snorky outbox relay: listening to %r again", using)
                    failing, delay = False, _LISTEN_CHECK
                    while not self._stop.is_set():
                        for _ in listener.notifies(timeout=_LISTEN_CHECK, stop_after=1):
                            self._wake.set()
            except Exception as err:
                if not failing:
                    logger.warning("Snorky outbox relay: cannot listen to %r (%s); polling meanwhile", using, err)
                failing = True
            finally:
                self._listening.discard(using)
            self._stop.wait(min(delay, self.max_retry_delay))
            delay *= 2

    def _run(self) -> None:
        delay = self.poll_interval
        failing_since: float | None = None
        try:
            while not self._stop.is_set():
                # Cleared before the pass: a notification arriving during it starts another.
                self._wake.clear()
                try:
                    busy = False
                    for using in self._databases():
                        busy = self._busy_after_pass(using) or busy
                except (SnorkyError, DatabaseError) as err:
                    if failing_since is None:
                        failing_since = time.monotonic()
                        logger.warning("Snorky %s: %s; retrying", self.name, err)
                    else:
                        logger.debug("Snorky %s still failing: %s", self.name, err)
                    close_old_connections()
                    delay = min(max(delay * 2, self.poll_interval), self.max_retry_delay)
                    self._stop.wait(delay)
                    continue
                except Exception:
                    logger.exception("Snorky %s: unexpected error; retrying", self.name)
                    self._stop.wait(self.max_retry_delay)
                    continue
                if failing_since is not None:
                    logger.warning(
                        "Snorky %s: delivering again after %.1f s", self.name, time.monotonic() - failing_since
                    )
                    failing_since = None
                delay = self.poll_interval
                if not busy:
                    self._wait_idle()
        finally:
            # Closing the connections also gives back the advisory locks held on them.
            for connection in connections.all(initialized_only=True):
                connection.close()
            self._lock_holder.clear()
            self._close_own_connections()

    def _close_own_connections(self) -> None:
        """Closes the connections this relay opened itself, besides Django's (on stopping)."""

    def __repr__(self) -> str:
        return f"<OutboxRelay running={self.running} relayed={self.relayed}>"
