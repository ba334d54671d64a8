"""Getting deltas from a committed transaction to the Snorky server.

:func:`enqueue` is where every delta goes (from the model signals, the bulk operations of
:class:`~snorky_django.SubscribableQuerySet`, and :func:`snorky_django.publish_deltas`). What
happens next depends on ``SNORKY["DELIVERY"]``:

``"direct"`` (the default)
    Deltas wait for the transaction to commit; then, with ``DIRECT_SEND = "background"`` (the
    default), the transaction's deltas join the process's send queue and the committing thread goes
    on at once: one sender thread per process posts the queue in order, several transactions per
    ``publishDeltas`` request when they pile up (see :class:`_Sender`). With ``"inline"``, every
    delta of the transaction goes in one request sent from the committing thread, which waits for
    the answer. Outside an atomic block each save is its own transaction. A rolled-back
    transaction, or a rolled-back savepoint, publishes nothing of what it did. When the server
    cannot be reached the deltas are logged (logger ``snorky_django``) and counted in
    :data:`stats`, and :data:`delivery_failed` is sent; the request that made the change is never
    broken. :func:`flush` waits until what was queued has been sent.

``"logical"``
    Saves, deletes and bulk operations make no delta here: ``manage.py snorky`` reads the committed
    rows from PostgreSQL's logical decoding (:mod:`snorky_django.logical`). The deltas that only
    Python knows of (many-to-many changes, :func:`snorky_django.publish_deltas`) are written into
    that stream in the transaction.

``"outbox"``
    Deltas are written to the :class:`~snorky_django.models.OutboxEntry` table *in the
    transaction*, so they commit or roll back with the change itself. ``manage.py snorky`` relays
    them in order and deletes each batch only once the server accepted it: a server or relay that
    dies loses nothing (a batch in flight when the relay dies is sent again: at least once).

How a transaction's deltas become one request: each :func:`enqueue` inside an atomic block
registers a *step* with ``transaction.on_commit`` (so a savepoint rollback discards the steps of
what it undid, exactly as Django discards on_commit callbacks). A step moves its deltas to this
thread's ready queue, and the transaction's last step sends the queue. Should the last step be
discarded by a savepoint rollback, a *flush* entry registered outside any savepoint sends instead.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.transaction import TransactionManagementError
from django.dispatch import Signal

from snorky import _core
from snorky.backend import BackendError, SnorkyBackend, SnorkyError
from snorky_django import outbox_writes
from snorky_django.conf import snorky_settings

__all__ = [
    "DELTA_REFUSALS",
    "DeliveryQueueFullError",
    "DeliveryStats",
    "captures_changes",
    "delivery_failed",
    "enqueue",
    "flush",
    "get_backend",
    "refuses_the_deltas",
    "send_deltas",
    "stats",
]

logger = logging.getLogger("snorky_django")

#: Sent (``sender=None``) when deltas could not be delivered in direct mode, with ``deltas`` (the
#: list) and ``error`` (the exception). Receivers run in the thread that sent them: the process's
#: sender thread (``DIRECT_SEND = "background"``; a full queue signals from the committing thread),
#: or the thread that committed (``"inline"``).
delivery_failed = Signal()


class DeliveryQueueFullError(SnorkyError):
    """The ``error`` of :data:`delivery_failed` for deltas dropped because the process's send queue
    stayed full (``DIRECT_QUEUE_SIZE``) for ``BACKEND_TIMEOUT`` seconds."""


class DeliveryStats:
    """Counters of direct delivery, for metrics and health checks (read ``stats``)."""

    failed: int
    """Deltas that could not be delivered (server unreachable or refusing them)."""
    failed_requests: int
    """``publishDeltas`` requests that failed."""
    queue_full: int
    """Deltas dropped (and counted in ``failed``) because the send queue stayed full."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published = 0
        self.failed = self.failed_requests = self.queue_full = 0

    @property
    def published(self) -> int:
        """Deltas the server accepted."""
        with self._lock:
            # The sender thread counts its own without the GIL; collected when read.
            self._published += _sender.take_published()
            return self._published

    def _add(self, *, published: int = 0, failed: int = 0, failed_requests: int = 0, queue_full: int = 0) -> None:
        with self._lock:
            self._published += published
            self.failed += failed
            self.failed_requests += failed_requests
            self.queue_full += queue_full

    def reset(self) -> None:
        """Sets every counter back to zero."""
        with self._lock:
            _sender.take_published()
            self._published = self.failed = self.failed_requests = self.queue_full = 0

    def __repr__(self) -> str:
        return (
            f"DeliveryStats(published={self.published}, failed={self.failed}, "
            f"failed_requests={self.failed_requests}, queue_full={self.queue_full})"
        )


#: The process-wide delivery counters.
stats = DeliveryStats()

_backend_lock = threading.Lock()
_backend: SnorkyBackend | None = None


def get_backend() -> SnorkyBackend:
    """The shared backend client (``BACKEND_URL``, ``API_KEY``, ``BACKEND_TIMEOUT``)."""
    global _backend
    with _backend_lock:
        if _backend is None:
            url, api_key, timeout = _backend_settings()
            _backend = SnorkyBackend(url, api_key, timeout=timeout)
        return _backend


def _backend_settings() -> tuple[str, str, float]:
    """``BACKEND_URL``, ``API_KEY`` and ``BACKEND_TIMEOUT``; a :class:`SnorkyError` without a key."""
    api_key = snorky_settings.API_KEY
    if not api_key:
        raise SnorkyError('SNORKY["API_KEY"] is not set')
    return snorky_settings.BACKEND_URL, api_key, float(snorky_settings.BACKEND_TIMEOUT)


def reset_backend() -> None:
    """Forgets the shared client and sender (their settings changed)."""
    global _backend
    with _backend_lock:
        _backend = None
    _sender.retire()


#: The texts with which ``publishDeltas`` refuses a delta itself (docs/protocol.md): a missing field, an
#: unknown type, a model that is not a string or that no dealer handles, a delta that is not an
#: object. Only these say that sending the delta again cannot help.
DELTA_REFUSALS = ("Missing field", "Invalid delta type", "model must be string", "Unknown model", "Invalid params")


def send_deltas(
    deltas: list[Any], backend: SnorkyBackend | None = None, *, key: str | None = None
) -> list[tuple[int, str]]:
    """Publishes ``deltas`` in one request; returns the positions of the deltas the server refused,
    with its reason.

    ``key`` is the batch's idempotency key (the server drops a batch whose key it has seen
    recently); a delta sent on its own gets the key ``<key>/<its position>``, as stable as the
    batch.

    The server validates a batch as a whole, so when it refuses one (with one of
    :data:`DELTA_REFUSALS`, or a body too large), each delta is sent again on its own and only
    those refused alone are returned. Every other error propagates, however the server words it
    ("Internal error", any other HTTP status, a timeout, a connection error): nothing says the
    deltas are wrong, so the caller should retry them.
    """
    if not deltas:
        return []
    backend = backend or get_backend()
    try:
        backend.publish_deltas(deltas, service=snorky_settings.DATASYNC_BACKEND_SERVICE, key=key)
        return []
    except BackendError as err:
        return _one_by_one(deltas, err, backend, key)


def _one_by_one(deltas: list[Any], error: Exception, backend: SnorkyBackend, key: str | None) -> list[tuple[int, str]]:
    """After ``deltas`` failed together with ``error``: raises it unless it refuses the deltas, or
    sends each alone and returns those refused alone (see :func:`send_deltas`)."""
    if not isinstance(error, BackendError) or not refuses_the_deltas(error):
        raise error
    if len(deltas) == 1:
        return [(0, str(error))]
    service = snorky_settings.DATASYNC_BACKEND_SERVICE
    refused: list[tuple[int, str]] = []
    for position, delta in enumerate(deltas):
        try:
            backend.publish_deltas([delta], service=service, key=None if key is None else f"{key}/{position}")
        except BackendError as err:
            if not refuses_the_deltas(err):
                raise
            refused.append((position, str(err)))
    return refused


def refuses_the_deltas(err: BackendError) -> bool:
    """Whether ``err`` refuses the deltas sent, not the request: a validation text of
    ``publishDeltas``, or HTTP 413 (a body over the server's limit: for a single delta, a delta
    that can never be accepted, which must not hold up those behind it forever)."""
    status = getattr(err, "status", None)
    if status is not None:
        return bool(status == 413)
    return str(err).startswith(DELTA_REFUSALS)


def _deliver_direct(deltas: list[dict[str, Any]], error: Exception | None = None) -> None:
    """Sends now (or, given the ``error`` with which the batch failed already, whatever sending
    its deltas one by one can still deliver); failures are logged, counted and signalled, never
    raised."""
    try:
        refused = send_deltas(deltas) if error is None else _one_by_one(deltas, error, get_backend(), None)
    except Exception as err:
        _failed(deltas, err)
        return
    stats._add(published=len(deltas) - len(refused), failed=len(refused), failed_requests=1 if refused else 0)
    for position, reason in refused:
        logger.error("Snorky refused %s: %s", describe(deltas[position]), reason)
    if refused:
        _signal_failure([deltas[position] for position, _ in refused], BackendError(refused[0][1]))


def _failed(deltas: list[dict[str, Any]], error: Exception) -> None:
    """Logs, counts and signals deltas that could not be published."""
    stats._add(failed=len(deltas), failed_requests=1)
    logger.error(
        "Snorky: could not publish %d delta(s) to %s: %s",
        len(deltas),
        snorky_settings.BACKEND_URL,
        error,
        extra={"deltas": deltas},
    )
    _signal_failure(deltas, error)


def describe(delta: Any) -> str:
    """A delta in a log line: its type and model (whatever it is)."""
    if isinstance(delta, dict):
        return f"a {delta.get('type')!r} delta of {delta.get('model')!r}"
    return f"a {type(delta).__name__} where a delta should be"


def _signal_failure(deltas: list[dict[str, Any]], error: Exception) -> None:
    for receiver, result in delivery_failed.send_robust(sender=None, deltas=deltas, error=error):
        if isinstance(result, Exception):
            logger.error("Snorky: delivery_failed receiver %r raised %r", receiver, result)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        # Deltas of committed transactions not sent yet, in commit order.
        self.ready: list[dict[str, Any]] = []
        # The open batch per database alias.
        self.batches: dict[str, _Batch] = {}


_state = _ThreadState()


class _Batch:
    """The deltas of one transaction on one connection, between its first enqueue and its commit."""

    __slots__ = ("done", "generation", "hooks")

    def __init__(self, hooks: list[Any]) -> None:
        # Django's list of on_commit callbacks: the list is replaced when the transaction commits
        # or rolls back (and when a savepoint rolls back), so finding another list there means
        # this batch is over, unless a savepoint rollback left some of its entries in it.
        self.hooks = hooks
        self.generation = 0
        self.done = False


class _Step:
    """An on_commit callback: these deltas committed; the transaction's last step sends them."""

    __slots__ = ("batch", "deltas", "generation")

    def __init__(self, batch: _Batch, deltas: list[dict[str, Any]], generation: int) -> None:
        self.batch = batch
        self.deltas = deltas
        self.generation = generation

    def __call__(self) -> None:
        _state.ready.extend(self.deltas)
        if self.generation == self.batch.generation:
            _flush(self.batch)


class _Flush:
    """Sends the ready queue if the batch's last step was discarded by a savepoint rollback."""

    __slots__ = ("batch", "generation")

    def __init__(self, batch: _Batch, generation: int) -> None:
        self.batch = batch
        self.generation = generation

    def __call__(self) -> None:
        if self.generation == self.batch.generation and not self.batch.done:
            _flush(self.batch)


def _flush(batch: _Batch) -> None:
    batch.done = True
    _send_ready()


def _send_ready() -> None:
    ready, _state.ready = _state.ready, []
    if not ready:
        return
    if snorky_settings.DIRECT_SEND == "inline":
        _deliver_direct(ready)
        return
    limit = int(snorky_settings.DIRECT_QUEUE_SIZE)
    wait = float(snorky_settings.BACKEND_TIMEOUT)
    try:
        queued = _sender.put(ready, limit, wait, float(snorky_settings.DIRECT_LINGER))
    except Exception as err:  # no API key, an unusable URL, deltas that are not JSON
        _failed(ready, err)
        return
    if not queued:
        stats._add(failed=len(ready), queue_full=len(ready))
        logger.error(
            "Snorky: dropped %d delta(s): the send queue stayed full (%d deltas) for %.1f s",
            len(ready),
            limit,
            wait,
            extra={"deltas": ready},
        )
        _signal_failure(ready, DeliveryQueueFullError(f"the send queue stayed full ({limit} deltas) for {wait:.1f} s"))


#: At most this many deltas per request when the sender joins queued transactions (a transaction
#: larger than that still goes whole, in one request, as inline delivery sends it).
SENDER_BATCH = 500

#: The sender thread's name, which ``delivery_failed`` receivers and log records see.
SENDER_THREAD = "snorky-direct-sender"


class _Sender:
    """The process's sender for ``DIRECT_SEND = "background"``.

    Committed transactions are appended to one queue (so in the order their commits ran their
    on_commit callbacks in this process) and posted in that order by a single thread, which joins
    what piled up into requests of up to :data:`SENDER_BATCH` deltas. The queue and the thread are
    the extension's (``snorky._core.DeltaSender``): the committing thread converts its deltas to
    JSON and queues them, and the thread posts them without the GIL, so a process that keeps saving
    is not interrupted for it. The thread takes the GIL only to hand back a batch that failed
    (:func:`_sender_failed`).

    The queue holds at most ``DIRECT_QUEUE_SIZE`` deltas: beyond that the committing thread waits
    for room, at most ``BACKEND_TIMEOUT`` seconds (as long as an inline send to a stalled server
    would have held it), then its deltas are dropped, logged, counted (``stats.queue_full``) and
    signalled. Room is never made by sending from the committing thread: that would overtake what
    is queued. A transaction larger than the whole queue waits for it to empty, then goes.

    Commits that follow each other closely share requests: when the last request ended less than
    ``DIRECT_LINGER`` seconds ago, the thread waits up to that long before the next one, so that
    the commits of that time join it. An isolated commit (nothing sent for ``DIRECT_LINGER``) is
    sent at once, so the linger adds latency only while commits keep coming.

    At interpreter exit, :func:`flush` runs (for at most ``BACKEND_TIMEOUT``). What a process killed
    outright (SIGKILL, a crash, ``os._exit``) had queued is lost, as with any direct delivery: use
    the outbox where every change must arrive. A forked child starts with an empty queue and its
    own thread (the parent sends what it queued).

    A sender posts to one ``BACKEND_URL`` with one ``API_KEY``: when the settings change, it is
    closed (it still sends what it has) and the next commit starts a new one. Across such a change
    the order of the two senders' deltas is not kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: _core.DeltaSender | None = None
        self._closing: list[_core.DeltaSender] = []  # retired, maybe still sending
        self._retired_published = 0  # counted by retired senders since forgotten
        # A forked child's copies of its parent's senders: never used nor freed (their locks may
        # have been held by the parent's thread at the fork).
        self._abandoned: list[_core.DeltaSender] = []

    def put(self, deltas: list[dict[str, Any]], limit: int, wait: float, linger: float) -> bool:
        """Queues one transaction's deltas; ``False`` if the queue stayed full for ``wait`` seconds.
        Raises what the settings or the deltas make impossible (no API key, deltas not JSON)."""
        while True:
            sender = self._current or self._start()
            try:
                return sender.put(deltas, limit, wait, linger)
            except SnorkyError:
                if sender is self._current:
                    raise
                # Closed by a settings change in the meantime: the next sender takes them.

    def _start(self) -> _core.DeltaSender:
        with self._lock:
            if self._current is None:
                url, api_key, timeout = _backend_settings()
                service = snorky_settings.DATASYNC_BACKEND_SERVICE
                self._current = _core.DeltaSender(url, api_key, timeout, service, _sender_failed, SENDER_BATCH)
            return self._current

    def retire(self) -> None:
        """Closes the current sender (it sends what it has); the next commit starts another."""
        with self._lock:
            sender, self._current = self._current, None
            if sender is not None:
                sender.close()
                self._closing.append(sender)
            self._forget_finished()

    def _forget_finished(self) -> None:
        """With the lock held: drops the retired senders that have sent everything, keeping their
        count. Finished first, then counted: a sender counts a batch before it is done with it."""
        finished = [sender for sender in self._closing if not sender.pending]
        self._retired_published += sum(sender.take_published() for sender in finished)
        self._closing = [sender for sender in self._closing if sender not in finished]

    def _senders(self) -> list[_core.DeltaSender]:
        with self._lock:
            return self._all()

    def _all(self) -> list[_core.DeltaSender]:
        return [*self._closing, *([self._current] if self._current is not None else [])]

    def flush(self, timeout: float) -> bool:
        """Waits until everything queued so far is sent (or failed); ``False`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        return all(sender.flush(max(0.0, deadline - time.monotonic())) for sender in self._senders())

    @property
    def pending(self) -> int:
        """Deltas queued or being sent."""
        return sum(sender.pending for sender in self._senders())

    def take_published(self) -> int:
        """Deltas the server accepted since the last call."""
        with self._lock:
            self._forget_finished()
            published = self._retired_published + sum(sender.take_published() for sender in self._all())
            self._retired_published = 0
        return published

    def _after_fork(self) -> None:
        # The parent's thread did not come along; its queue is the parent's to send.
        self._abandoned += self._all()
        self._lock = threading.Lock()
        self._current = None
        self._closing = []
        self._retired_published = 0


def _sender_failed(deltas: list[dict[str, Any]], error: Exception) -> None:
    """Called by the sender thread, with the GIL, for a batch the server did not take: sends what
    it can delta by delta when the server refused the batch, then logs, counts and signals the
    rest, as inline delivery would."""
    thread = threading.current_thread()
    if thread.name != SENDER_THREAD:  # a thread Python did not start is "Dummy-N" to it
        thread.name = SENDER_THREAD
    _deliver_direct(deltas, error)


_sender = _Sender()
os.register_at_fork(after_in_child=_sender._after_fork)


def flush(timeout: float | None = None) -> bool:
    """Waits until the deltas this process has queued for sending (``DIRECT_SEND =
    "background"``) are sent or have failed; returns ``False`` if that took longer than ``timeout``
    seconds (default ``BACKEND_TIMEOUT``). Runs by itself at interpreter exit."""
    return _sender.flush(float(snorky_settings.BACKEND_TIMEOUT) if timeout is None else timeout)


@atexit.register
def _flush_at_exit() -> None:
    pending = _sender.pending
    if not pending:
        return
    try:
        timeout = float(snorky_settings.BACKEND_TIMEOUT)
    except Exception:  # settings unusable this late: still give the queue a moment
        timeout = 5.0
    if not _sender.flush(timeout):
        logger.error("Snorky: exiting with %d delta(s) not sent after %.1f s", _sender.pending, timeout)


def _current_batch(using: str, hooks: list[Any]) -> _Batch:
    """The open batch of this transaction on ``using``, or a new one."""
    batch = _state.batches.get(using)
    if batch is not None and not batch.done:
        if batch.hooks is hooks:
            return batch
        # A savepoint rollback replaced the list: the batch goes on if its entries are still there
        # (the most recent Snorky entry is enough to tell).
        for _, func, _ in reversed(hooks):
            if isinstance(func, (_Step, _Flush)):
                if func.batch is batch:
                    batch.hooks = hooks
                    return batch
                break
    batch = _Batch(hooks)
    _state.batches[using] = batch
    return batch


def captures_changes() -> bool:
    """Whether saves, deletes and bulk operations make their deltas in the process that runs them:
    not under logical delivery, where the relay reads the committed rows from the database."""
    return snorky_settings.DELIVERY != "logical"


def enqueue(deltas: Iterable[dict[str, Any]], using: str = DEFAULT_DB_ALIAS) -> None:
    """Publishes ``deltas`` once the current transaction on ``using`` commits (see the module docs)."""
    deltas = list(deltas)
    if not deltas:
        return
    mode = snorky_settings.DELIVERY
    if mode == "outbox":
        outbox_writes.write(deltas, using)
        return
    if mode == "logical":
        from snorky_django.logical_messages import emit

        emit(deltas, using)
        return
    connection = connections[using]
    if not connection.in_atomic_block:
        if not connection.get_autocommit():
            # Manual transaction management: Django cannot tell us about the commit.
            logger.warning("Snorky: publishing deltas immediately: %r is not in autocommit mode", using)
        _state.ready.extend(deltas)
        _send_ready()
        return
    batch = _current_batch(using, connection.run_on_commit)
    batch.generation += 1
    try:
        connection.on_commit(_Step(batch, deltas, batch.generation), robust=True)
    except TransactionManagementError:  # pragma: no cover (on_commit refuses nothing in an atomic block)
        _state.ready.extend(deltas)
        _send_ready()
        return
    if connection.savepoint_ids:
        # The step may be discarded with its savepoint; this entry, outside every savepoint, may not.
        hooks: list[Any] = connection.run_on_commit
        hooks.append((set(), _Flush(batch, batch.generation), True))
