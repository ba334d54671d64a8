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
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.transaction import TransactionManagementError
from django.dispatch import Signal

from snorky.backend import BackendError, SnorkyBackend, SnorkyError
from snorky_django import outbox_writes
from snorky_django.conf import snorky_settings

__all__ = [
    "DELTA_REFUSALS",
    "DeliveryQueueFullError",
    "DeliveryStats",
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


@dataclass
class DeliveryStats:
    """Counters of direct delivery, for metrics and health checks (read ``stats``)."""

    published: int = 0
    """Deltas the server accepted."""
    failed: int = 0
    """Deltas that could not be delivered (server unreachable or refusing them)."""
    failed_requests: int = 0
    """``publishDeltas`` requests that failed."""
    queue_full: int = 0
    """Deltas dropped (and counted in ``failed``) because the send queue stayed full."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _add(self, *, published: int = 0, failed: int = 0, failed_requests: int = 0, queue_full: int = 0) -> None:
        with self._lock:
            self.published += published
            self.failed += failed
            self.failed_requests += failed_requests
            self.queue_full += queue_full

    def reset(self) -> None:
        """Sets every counter back to zero."""
        with self._lock:
            self.published = self.failed = self.failed_requests = self.queue_full = 0


#: The process-wide delivery counters.
stats = DeliveryStats()

_backend_lock = threading.Lock()
_backend: SnorkyBackend | None = None


def get_backend() -> SnorkyBackend:
    """The shared backend client (``BACKEND_URL``, ``API_KEY``, ``BACKEND_TIMEOUT``)."""
    global _backend
    with _backend_lock:
        if _backend is None:
            api_key = snorky_settings.API_KEY
            if not api_key:
                raise SnorkyError('SNORKY["API_KEY"] is not set')
            _backend = SnorkyBackend(
                snorky_settings.BACKEND_URL, api_key, timeout=float(snorky_settings.BACKEND_TIMEOUT)
            )
        return _backend


def reset_backend() -> None:
    """Forgets the shared client (its settings changed)."""
    global _backend
    with _backend_lock:
        _backend = None


#: The texts with which ``publishDeltas`` refuses a delta itself (PROTOCOL.md): a missing field, an
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
    service = snorky_settings.DATASYNC_BACKEND_SERVICE
    try:
        backend.publish_deltas(deltas, service=service, key=key)
        return []
    except BackendError as err:
        if not refuses_the_deltas(err):
            raise
        if len(deltas) == 1:
            return [(0, str(err))]
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


def _deliver_direct(deltas: list[dict[str, Any]]) -> None:
    """Sends now; failures are logged, counted and signalled, never raised."""
    try:
        refused = send_deltas(deltas)
    except Exception as err:
        stats._add(failed=len(deltas), failed_requests=1)
        logger.error(
            "Snorky: could not publish %d delta(s) to %s: %s",
            len(deltas),
            snorky_settings.BACKEND_URL,
            err,
            extra={"deltas": deltas},
        )
        _signal_failure(deltas, err)
        return
    stats._add(published=len(deltas) - len(refused), failed=len(refused), failed_requests=1 if refused else 0)
    for position, reason in refused:
        logger.error("Snorky refused %s: %s", describe(deltas[position]), reason)
    if refused:
        _signal_failure([deltas[position] for position, _ in refused], BackendError(refused[0][1]))


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
    if not _sender.put(ready, limit, wait, float(snorky_settings.DIRECT_LINGER)):
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


class _Sender:
    """The process's sender thread for ``DIRECT_SEND = "background"``.

    Committed transactions are appended to one queue (so in the order their commits ran their
    on_commit callbacks in this process) and posted in that order by a single daemon thread, which
    joins what piled up into requests of up to :data:`SENDER_BATCH` deltas. The queue holds at most
    ``DIRECT_QUEUE_SIZE`` deltas: beyond that the committing thread waits for room, at most
    ``BACKEND_TIMEOUT`` seconds (as long as an inline send to a stalled server would have held it),
    then its deltas are dropped, logged, counted (``stats.queue_full``) and signalled. Room is never
    made by sending from the committing thread: that would overtake what is queued. A transaction
    larger than the whole queue waits for it to empty, then goes.

    Commits that follow each other closely share requests: when the last request ended less than
    ``DIRECT_LINGER`` seconds ago, the thread waits up to that long before the next one, so that
    the commits of that time join it (one request and one thread switch for many commits, instead
    of one each, which is most of what a direct-mode save costs its process). An isolated commit
    (nothing sent for ``DIRECT_LINGER``) is sent at once, so the linger adds latency only while
    commits keep coming.

    At interpreter exit, :func:`flush` runs (for at most ``BACKEND_TIMEOUT``). What a process killed
    outright (SIGKILL, a crash, ``os._exit``) had queued is lost, as with any direct delivery: use
    the outbox where every change must arrive. A forked child starts with an empty queue and its
    own thread (the parent sends what it queued).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[list[dict[str, Any]]] = deque()
        self._queued = 0  # deltas in the queue
        self._sending = 0  # deltas taken by the thread and not done yet
        self._thread: threading.Thread | None = None
        self._linger = 0.0
        self._lingering = False
        self._flushing = 0  # threads in flush(), which cut a linger short
        self._last_sent = -1e9  # time.monotonic() when the last request ended

    def put(self, deltas: list[dict[str, Any]], limit: int, wait: float, linger: float = 0.0) -> bool:
        """Queues one transaction's deltas; ``False`` if the queue stayed full for ``wait`` seconds.
        ``linger``: see the class docs."""
        with self._changed:
            deadline = time.monotonic() + wait
            while self._queued and self._queued + len(deltas) > limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            self._queue.append(deltas)
            self._queued += len(deltas)
            self._linger = linger
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="snorky-direct-sender", daemon=True)
                self._thread.start()
            # A lingering sender wakes at its deadline: waking it for each commit would cost the
            # thread switch that lingering saves.
            if not self._lingering or self._queued >= SENDER_BATCH:
                self._changed.notify_all()
            return True

    def flush(self, timeout: float) -> bool:
        """Waits until everything queued so far is sent (or failed); ``False`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._flushing += 1  # a lingering sender goes at once
            self._changed.notify_all()
            try:
                while self._queued or self._sending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    @property
    def pending(self) -> int:
        """Deltas queued or being sent."""
        with self._lock:
            return self._queued + self._sending

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                self._wait_for_company()
                batch = self._queue.popleft()
                while self._queue and len(batch) + len(self._queue[0]) <= SENDER_BATCH:
                    batch = batch + self._queue.popleft()
                self._queued -= len(batch)
                self._sending = len(batch)
                self._changed.notify_all()  # room for the writers
            try:
                _deliver_direct(batch)
            except Exception:  # pragma: no cover (_deliver_direct reports every failure itself)
                logger.exception("Snorky: the sender thread failed to deliver %d delta(s)", len(batch))
            finally:
                with self._changed:
                    self._sending = 0
                    self._last_sent = time.monotonic()
                    self._changed.notify_all()

    def _wait_for_company(self) -> None:
        """With the lock held and something queued: when the last request ended less than the
        linger ago (commits are following each other closely), waits up to the linger for more
        transactions to join the next request, unless a request's worth is already queued."""
        linger = self._linger
        now = time.monotonic()
        if linger <= 0 or now - self._last_sent >= linger:
            return
        deadline = now + linger
        self._lingering = True
        try:
            while self._queued < SENDER_BATCH and not self._flushing and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
        finally:
            self._lingering = False

    def _after_fork(self) -> None:
        # The parent's thread did not come along; its queue is the parent's to send.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue = deque()
        self._queued = self._sending = 0
        self._thread = None
        self._lingering = False
        self._flushing = 0
        self._last_sent = -1e9


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


def enqueue(deltas: Iterable[dict[str, Any]], using: str = DEFAULT_DB_ALIAS) -> None:
    """Publishes ``deltas`` once the current transaction on ``using`` commits (see the module docs)."""
    deltas = list(deltas)
    if not deltas:
        return
    if snorky_settings.DELIVERY == "outbox":
        outbox_writes.write(deltas, using)
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
