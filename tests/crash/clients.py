"""Subscribed clients that behave as the JavaScript client does, and check what they receive.

Each client belongs to a user, fetches the demo's ``/api/todos/`` with ``X-Snorky: Subscribe``
(the rows and a subscription token for exactly them), opens the WebSocket with the user's
connection token and acquires the subscription. Deltas are applied as ``ArrayCollection`` applies
them: an insert replaces or adds the row, an update replaces a row the client holds, a delete
removes it. When the connection drops the client reconnects and acquires the same token again
(a *resume*: the server sends what it missed); when the server answers "No such subscription"
it fetches again (a *resync*: a full refetch), as ``resyncNeeded`` makes an application do;
"Service unavailable" (a node that cannot reach Redis) is tried again later, as the JavaScript
client does.

Clients ask for delivery offsets (``"offsets": true``); when the server gives them, a resume
starts exactly after the last delta applied (``"after"``), and "Offset not retained" is a resync
too. A server without offsets ignores the parameter, and a resume then starts after the last delta
the server wrote to the old connection.

Checks, per *lineage* (one token, acquired once and resumed any number of times), on the versions
todos carry (see :mod:`crash.writers`): while a todo is in the client's view, each update brings
the next version and a delete the last one seen (its old data); once deleted (it left the view)
only an insert of a later version may come. A delta lost, delivered twice or out of order is a
violation. Deltas older than the row the client already holds are counted as *stale*: they are
expected only just after a fetch, since a token is authorized before the rows are read (a change
committed in between is in both).

``cut(delay, abrupt)`` leaves and reconnects after ``delay`` seconds: with a close frame, reading
what the server still sends before its own (a clean close), or by dropping the connection with
whatever is in flight (a network failure).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from crash import version_of

#: How long a handshake may take before it counts as failed.
STEP_TIMEOUT = 10.0
#: How long a call may wait for its reply: longer than the server's longest wait for a
#: subscription's previous holder (15 s), since the JavaScript client puts no timeout on a call
#: sent on an open connection.
CALL_TIMEOUT = 20.0

#: What a fetch answers: the rows by id and the subscription token, or ``None`` when it failed.
Fetched = tuple[dict[int, dict[str, Any]], str] | None


@dataclass
class Restarts:
    """How many times the server (or, with several nodes, the broker they share) was started
    again: subscriptions held before a restart are gone after it, whatever the client does.
    ``cause`` names the last one, as resyncs it caused are counted."""

    count: int = 0
    cause: str = "a server restart"


@dataclass
class Tally:
    """What the clients did and saw; reset at each phase."""

    deltas: int = 0
    stale: int = 0
    closed_1008: int = 0
    cuts: Counter[str] = field(default_factory=Counter)
    resumes: Counter[str] = field(default_factory=Counter)
    resyncs: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    #: Clients that refetched after a lost connection (not a cut of their own, not a restart):
    #: what the server said, and the client's events then.
    lost: list[str] = field(default_factory=list)
    offsets: bool | None = None

    def reset(self) -> None:
        self.deltas = self.stale = self.closed_1008 = 0
        for counter in (self.cuts, self.resumes, self.resyncs):
            counter.clear()
        self.violations.clear()
        self.lost.clear()


class Client:
    """One subscribed client. ``fetch`` blocks (Django's test client and the ORM): it runs on a
    worker thread."""

    def __init__(
        self,
        index: int,
        user_id: int,
        urls: list[str],
        fetch: Callable[[], Fetched],
        connection_token: Callable[[], str],
        tally: Tally,
        restarts: Restarts,
        resume_timeout: float,
        seed: int,
        offsets: bool = True,
    ) -> None:
        self.index = index
        self.user_id = user_id
        #: The nodes' WebSocket URLs: the first is this client's, the others are where it goes
        #: when that one cannot be reached (one entry for a single node).
        self.urls = urls
        self.fetch = fetch
        self.connection_token = connection_token
        self.tally = tally
        self.restarts = restarts
        #: The restart count when the token was last acquired.
        self.acquired_in = restarts.count
        self.resume_timeout = resume_timeout
        self.random = random.Random(seed)
        self.rows: dict[int, dict[str, Any]] = {}
        self.token: str | None = None
        self.lineage = 0
        self.history: dict[int, tuple[str, int]] = {}
        self.ws: ClientConnection | None = None
        self.acquired = False
        self.stopping = False
        #: Whether the current token was acquired before: acquiring it again is a resume.
        self.resumable = False
        #: Whether the server gives offsets (``None`` until an acquire says; ``False`` for a
        #: client that does not ask), and the offset after the last delta applied: where a
        #: resume starts.
        self.offsets: bool | None = None if offsets else False
        self.after: str | None = None
        #: The client's last events (when, what), shown when something is wrong with it.
        self.events: collections.deque[tuple[float, Any]] = collections.deque(maxlen=80)
        self._cut_delay: float | None = None
        self._call_id = 0
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None

    def note(self, event: Any) -> None:
        """Records an event: text, or a tuple of a delta's kind, todo and version (formatted
        only when shown: a client notes every delta)."""
        self.events.append((time.monotonic(), event))

    def history_text(self) -> str:
        lines = []
        for when, event in self.events:
            text = event if isinstance(event, str) else "{} {} v{}".format(*event)
            lines.append(f"{when:.3f} {text}")
        return "\n  ".join(lines)

    def start(self) -> None:
        self._task = asyncio.create_task(self._live(), name=f"client-{self.index}")

    async def stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def ready(self) -> bool:
        """Connected, with its subscription acquired."""
        return self.acquired and self.ws is not None

    def version(self, row_id: int) -> int | None:
        row = self.rows.get(row_id)
        return None if row is None else version_of(row["title"])

    def cut(self, delay: float, abrupt: bool) -> bool:
        """Leaves and comes back after ``delay`` s; ``False`` when not connected. ``abrupt``: the
        connection is dropped at once, without a close frame, and whatever is in flight is lost
        (a network failure); otherwise the client closes it with a close frame and still reads
        what the server sends before its own close frame."""
        ws = self.ws
        if not self.ready or self._cut_delay is not None or ws is None:
            return False
        self._cut_delay = delay
        kind = "abrupt" if abrupt else "clean"
        self.tally.cuts[kind] += 1
        self.note(f"{kind} cut for {delay:.2f} s")
        if abrupt:
            ws.transport.abort()
        else:
            self._closing = asyncio.create_task(ws.close())
        return True

    async def _live(self) -> None:
        backoff = 0.1
        cut: float | None = None  # the delay of our own cut, on the way back from it
        while not self.stopping:
            if self.token is None:
                fetched = await asyncio.to_thread(self.fetch)
                if fetched is None:
                    await asyncio.sleep(backoff * self.random.uniform(0.5, 1.5))
                    backoff = min(backoff * 2, 2.0)
                    continue
                self.rows, self.token = fetched
                self.note(f"fetched {sorted(self.rows)}")
                self.lineage += 1
                self.history = {}
                self.resumable = False
                self.after = None
            outcome = await self._connection(cut)
            if outcome != "failed":
                # Back from the cut (a connection that failed before acquiring, say to a node
                # killed meanwhile, does not end it: the next one comes back from the same cut).
                cut = None
            if outcome == "stopped":
                return
            if outcome == "resynced":
                continue
            if outcome == "acquired":
                backoff = 0.1
            if self._cut_delay is not None:
                cut, self._cut_delay = self._cut_delay, None
                await asyncio.sleep(cut)
                continue
            await asyncio.sleep(backoff * self.random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 1.0)

    async def _connection(self, cut: float | None) -> str:
        """One connection: open, acquire, read until it closes. Returns ``"stopped"``,
        ``"resynced"`` (the token is gone: fetch again), ``"acquired"`` (it worked, then closed)
        or ``"failed"``."""
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                ws = await connect(f"{self.urls[0]}?token={self.connection_token()}", ping_interval=None)
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
            self.urls.append(self.urls.pop(0))
            return "failed"
        self.ws = ws
        try:
            reply = await self._acquire(ws)
            self.note(f"acquire from port {ws.local_address[1]}: {reply}")
            if reply.get("message") == "Service unavailable":
                # The server cannot reach what it shares with other nodes (Redis): the
                # JavaScript client tries again later, keeping its token and offset.
                return "failed"
            if reply.get("type") == "error":
                self._resync(str(reply.get("message")), cut)
                return "resynced"
            self.acquired = True
            self.acquired_in = self.restarts.count
            if self.resumable:
                self.tally.resumes["after a cut" if cut is not None else "after a lost connection"] += 1
            self.resumable = True
            async for raw in ws:
                self._frame(json.loads(raw))
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        finally:
            self.ws = None
            await ws.close()
        acquired, self.acquired = self.acquired, False
        if self.stopping:
            return "stopped"
        if ws.close_code == 1008:
            self.tally.closed_1008 += 1
            if not self.offsets:
                # The server dropped what it had queued for this client: without offsets a
                # resume would leave a gap, so the JavaScript client resyncs.
                self._resync("closed with 1008", None)
                return "resynced"
        return "acquired" if acquired else "failed"

    async def _acquire(self, ws: ClientConnection) -> dict[str, Any]:
        """Acquires the token, asking for offsets (and resuming after the last one applied, when
        the server gives them); deltas that arrive before the reply are applied. Returns the
        reply's message."""
        params: dict[str, Any] = {"token": self.token}
        if self.offsets is not False:
            params["offsets"] = True
            if self.offsets and self.after is not None:
                params["after"] = self.after
        message, applied_before_reply = await self._call(ws, "acquireSubscription", params)
        if self.offsets is None and message.get("message") == "Invalid params":
            # A server without offsets refuses the parameter: acquire as a 0.1 client does.
            self.offsets = self.tally.offsets = False
            del params["offsets"]
            message, applied_before_reply = await self._call(ws, "acquireSubscription", params)
        if message.get("type") == "response":
            data = message.get("data")
            self.offsets = self.tally.offsets = isinstance(data, dict) and "offset" in data
            if isinstance(data, dict) and self.offsets and not applied_before_reply:
                self.after = data["offset"]
        return message

    async def _call(self, ws: ClientConnection, command: str, params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Sends a DataSync request; applies the deltas that arrive before its reply. Returns the
        reply's message and whether deltas came first."""
        self._call_id += 1
        call_id = self._call_id
        request = {"command": command, "params": params, "callId": call_id}
        await ws.send(json.dumps({"service": "datasync", "message": request}))
        deltas_first = False
        async with asyncio.timeout(CALL_TIMEOUT):
            while True:
                frame = json.loads(await ws.recv())
                message: dict[str, Any] = frame.get("message", {})
                if message.get("callId") == call_id:
                    return message, deltas_first
                self._frame(frame)
                deltas_first = True

    def _resync(self, reason: str, cut: float | None) -> None:
        """The token cannot be acquired again: the next loop fetches the rows and a new token."""
        if self.acquired_in != self.restarts.count and reason != "closed with 1008":
            cause = self.restarts.cause
        elif cut is None:
            cause = "closed with 1008" if reason == "closed with 1008" else "a lost connection"
        elif cut > self.resume_timeout:
            cause = "a cut past the resume timeout"
        else:
            cause = "a cut within the resume timeout"
        self.note(f"resync after {cause}: {reason}")
        self.tally.resyncs[cause] += 1
        if cause == "a lost connection":
            self.tally.lost.append(f"client {self.index}: {reason}; its last events:\n  {self.history_text()}")
        if cause == "a cut within the resume timeout":
            self.tally.violations.append(
                f"client {self.index}: refetched after a cut of {cut:.2f} s, within the resume timeout ({reason})"
            )
        self.token = None

    def _frame(self, frame: dict[str, Any]) -> None:
        message = frame.get("message", {})
        if frame.get("service") != "datasync" or message.get("type") != "delta":
            self.tally.violations.append(f"client {self.index}: unexpected frame {frame}")
            return
        self._apply(message["delta"])
        if "offset" in message:
            self.after = message["offset"]

    def _apply(self, delta: dict[str, Any]) -> None:
        self.tally.deltas += 1
        kind = delta["type"]
        data = delta["newData"] if kind == "update" else delta["data"]
        row_id, version = data["id"], version_of(data["title"])
        self.note((kind, row_id, version))
        previous = self.history.get(row_id)
        if previous is not None:
            last_kind, last_version = previous
            if last_kind == "delete":
                allowed = kind == "insert" and version > last_version
            elif kind == "delete":
                allowed = version == last_version
            else:
                allowed = kind == "update" and version == last_version + 1
            if not allowed:
                self.tally.violations.append(
                    f"client {self.index} (lineage {self.lineage}): {kind} v{version} of todo {row_id} "
                    f"after {last_kind} v{last_version}"
                )
        self.history[row_id] = (kind, version)
        held = self.version(row_id)
        if held is not None and kind != "delete" and version < held:
            self.tally.stale += 1
        # As ArrayCollection: an insert adds or replaces, an update replaces a row held, a delete
        # removes it.
        if kind == "insert":
            self.rows[row_id] = data
        elif kind == "update":
            if row_id in self.rows:
                self.rows[row_id] = data
        else:
            self.rows.pop(row_id, None)
