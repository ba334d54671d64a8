"""Services written in Python: subclass :class:`RPCService` and mark commands with
:func:`rpc_command`.

How calls run
-------------
The Rust server hands each call to a worker thread (tokio's blocking pool) and holds the GIL only
there, so a slow command never stalls the event loop, the built-in services, or other
connections. Calls from one connection run one at a time, in the order they arrived; calls from
different connections may run at the same time on different threads, so protect shared state
with a lock when a command does more than one step. ``async def`` commands run on one asyncio
event loop in a background thread; the connection's next call does not wait for them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

from snorky import _core
from snorky._core import Client, Request, SnorkyError

__all__ = ["Client", "RPCError", "RPCService", "Request", "rpc_asynchronous", "rpc_command"]

logger = logging.getLogger("snorky.services")

F = TypeVar("F", bound=Callable[..., Any])

# The attribute marking a method as a command: its value is the command's kind.
_MARK = "_snorky_command"
_SIMPLE_TYPES = (int, float, str, bool, list, dict)


class RPCError(SnorkyError):
    """Raise it from a command to answer with an error reply whose text is ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@overload
def rpc_command(method: F) -> F: ...
@overload
def rpc_command(*, name: str) -> Callable[[F], F]: ...
def rpc_command(method: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Marks a method as a command. Its return value is the reply's data.

    The command is called with the :class:`Request` and the request's params as keyword
    arguments; params that do not fit the signature (missing, extra, or of the wrong type for a
    parameter annotated ``int``, ``float``, ``str``, ``bool``, ``list`` or ``dict``) are answered
    "Invalid params" without calling it. ``async def`` methods are supported.
    """

    def mark(function: F) -> F:
        setattr(function, _MARK, ("async" if inspect.iscoroutinefunction(function) else "sync", name))
        return function

    return mark(method) if method is not None else mark


def rpc_asynchronous(method: F) -> F:
    """Marks a command that answers later, through ``request.reply()`` or ``request.error()``
    (from any thread); its return value is ignored."""
    setattr(method, _MARK, ("deferred", None))
    return method


class RPCService:
    """Base class of services written in Python.

    >>> class Counter(RPCService):
    ...     def __init__(self, name):
    ...         super().__init__(name)
    ...         self.count = 0
    ...
    ...     @rpc_command
    ...     def increment(self, req, by: int = 1):
    ...         self.count += by
    ...         self.broadcast({"type": "count", "value": self.count})
    ...         return self.count

    Set the class attribute ``side = "backend"`` for a service the web application calls over
    ``POST /backend`` (then ``req.client`` is None).

    A connection may have at most ``max_pending_calls`` (class attribute, default 100) calls
    waiting for an answer that comes later (``async def`` and ``@rpc_asynchronous`` commands);
    while it has, every further call to the service (a synchronous command too) is answered "Too
    many pending calls". When the connection closes, its waiting calls
    are cancelled: ``async def`` commands get :class:`asyncio.CancelledError`, and deferred ones
    can check ``req.cancelled`` or register ``req.on_cancel(callback)``.
    """

    side: str = "frontend"
    max_pending_calls: int = 100

    def __init__(self, name: str) -> None:
        self.name = name
        self._commands: dict[str, tuple[str, str]] = {}
        for attribute in dir(type(self)):
            mark = getattr(getattr(type(self), attribute, None), _MARK, None)
            if mark is not None:
                kind, command = mark
                self._commands[command or attribute] = (attribute, kind)
        events = _overrides(self, "client_connected") or _overrides(self, "client_disconnected")
        self._core = _core.ExternalService(name, self, self.side, events, self.max_pending_calls)

    @property
    def commands(self) -> list[str]:
        """The command names this service answers, sorted."""
        return sorted(self._commands)

    @property
    def pending_calls(self) -> int:
        """How many calls wait for an answer that comes later, over every connection."""
        return self._core.pending_calls

    def client_connected(self, client: Client) -> None:
        """Called (on a worker thread) when a WebSocket client connects to the server."""

    def client_disconnected(self, client: Client) -> None:
        """Called (on a worker thread) when a WebSocket client disconnects."""

    def broadcast(self, message: Any) -> int:
        """Pushes ``message`` to every connected client; returns how many it reached."""
        return self._core.broadcast(message)

    def send_message_to(self, client: Client, message: Any) -> bool:
        """Pushes ``message`` to ``client`` (from any thread); False when it is gone."""
        return self._core.send_message_to(client, message)

    def _dispatch(self, request: Request) -> None:
        """Runs one call (called by the server on a worker thread)."""
        entry = self._commands.get(request.command)
        if entry is None:
            request.error("Unknown command")
            return
        attribute, kind = entry
        method = getattr(self, attribute)
        params = dict(request.params)
        if not _params_fit(method, request, params):
            request.error("Invalid params")
            return
        try:
            if kind == "async":
                future = asyncio.run_coroutine_threadsafe(method(request, **params), _event_loop())
                future.add_done_callback(lambda done: self._finish_async(request, done))
                # A client that leaves does not leave its coroutines running.
                request.on_cancel(future.cancel)
                return
            result = method(request, **params)
            if kind == "sync" and not request.answered:
                request.reply(result)
        except Exception as error:
            self._fail(request, error)

    def _finish_async(self, request: Request, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            return
        try:
            result = future.result()
            if not request.answered:
                request.reply(result)
        except Exception as error:
            self._fail(request, error)

    def _fail(self, request: Request, error: Exception) -> None:
        if isinstance(error, RPCError):
            text = error.message
        else:
            logger.error("service %r: command %r failed", self.name, request.command, exc_info=error)
            text = "Internal error"
        if not request.answered:
            request.error(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _overrides(instance: RPCService, method: str) -> bool:
    return getattr(type(instance), method) is not getattr(RPCService, method)


def _params_fit(method: Callable[..., Any], request: Request, params: dict[str, Any]) -> bool:
    """Whether ``params`` bind to ``method``'s signature, with simple annotated types checked."""
    signature = inspect.signature(method)
    try:
        bound = signature.bind(request, **params)
    except TypeError:
        return False
    for name, value in bound.arguments.items():
        annotation = signature.parameters[name].annotation
        if isinstance(annotation, str):
            annotation = {t.__name__: t for t in _SIMPLE_TYPES}.get(annotation, inspect.Parameter.empty)
        if annotation in _SIMPLE_TYPES and name in params:
            # bool is an int in Python; JSON true is not a number.
            if annotation in (int, float) and isinstance(value, bool):
                return False
            if annotation is float and isinstance(value, int):
                continue
            if not isinstance(value, annotation):
                return False
    return True


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    """The event loop ``async def`` commands run on, started on first use in a daemon thread."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="snorky-async-commands", daemon=True).start()
            _loop = loop
        return _loop
