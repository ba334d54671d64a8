"""The fast backend client: how a web application talks to the Snorky server."""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from snorky import _core
from snorky._core import BackendError, SnorkyConnectionError, SnorkyError

__all__ = ["BackendError", "SnorkyBackend", "SnorkyConnectionError", "SnorkyError"]


#: The clients to close at exit (see :func:`_close_at_exit`).
_open_clients: weakref.WeakSet[SnorkyBackend] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """Stops every client's threads while the interpreter is whole: a client thread still running
    once Python finalizes would crash the process the moment it logs (which needs the GIL).
    Registered at import, so it runs after the exit handlers of modules that use a client (they
    register theirs later), such as Django's delivery flushing its queue."""
    for client in list(_open_clients):
        client.close()


class SnorkyBackend:
    """Calls the server's backend services over HTTP with the API key.

    The client keeps a pool of keep-alive connections and releases the GIL while waiting, so it
    is safe and cheap to share one instance between threads.

    >>> backend = SnorkyBackend("http://127.0.0.1:5002/backend", "swordfish")  # doctest: +SKIP
    >>> backend.publish("news", {"title": "hello"})  # doctest: +SKIP
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0) -> None:
        self._client = _core.BackendClient(url, api_key, timeout)
        _open_clients.add(self)

    def close(self) -> None:
        """Closes the pooled connections and stops the client's threads (the next call starts
        them again). Every client is closed this way when the interpreter exits."""
        self._client.close()

    @property
    def url(self) -> str:
        """The backend URL."""
        return self._client.url

    def call(self, service: str, command: str, **params: Any) -> Any:
        """Calls ``command`` on ``service``; returns the reply data.

        Raises :class:`BackendError` (a :class:`SnorkyError`) with the server's text when the
        service answers an error, and :class:`SnorkyConnectionError` when the server is down.
        """
        return self._client.call(service, command, params)

    def publish(self, channel: Any, message: Any, *, service: str = "pubsub_backend") -> None:
        """Publishes ``message`` to every browser subscribed to ``channel``."""
        self._client.call(service, "publish", {"channel": channel, "message": message})

    def authorize_subscription(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        identity: str | None = None,
        service: str = "datasync_backend",
    ) -> str:
        """Authorizes a DataSync subscription and returns its token, for the browser to acquire.

        ``items`` are ``{"dealer": <dealer name>, "query": <value>}`` dicts: the subscription
        receives the deltas any of them matches (each delta at most once). The server refuses
        the whole list with a :class:`BackendError` (``"No such dealer"``, ``"Missing field
        query"``, an invalid filter expression, ...) if any item is wrong. With ``identity``
        (the ``sub`` of the user's connection tokens), only connections of that identity may
        acquire or resume the subscription.
        """
        params: dict[str, Any] = {"items": list(items)}
        if identity is not None:
            params["identity"] = identity
        token = self._client.call(service, "authorizeSubscription", params)
        if not isinstance(token, str):
            raise BackendError(f"authorizeSubscription answered {token!r}, not a token")
        return token

    def disconnect(self, identity: str, *, service: str = "connections") -> int:
        """Revokes ``identity``: closes its open connections (code 4501, no reconnection) and
        refuses its connection tokens issued until now. Returns how many connections were closed.
        Needs a :class:`~snorky.services.ConnectionsBackend` registered on the server's backend.
        """
        answer = self._client.call(service, "disconnect", {"identity": identity})
        return int(answer["disconnected"]) if isinstance(answer, dict) else 0

    def publish_deltas(
        self,
        deltas: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        *,
        key: str | None = None,
        service: str = "datasync_backend",
    ) -> None:
        """Publishes DataSync deltas: one delta (a dict), or many in one request (a list).

        A delta is ``{"type": "insert"|"delete", "model": ..., "data": {...}}`` or
        ``{"type": "update", "model": ..., "newData": {...}, "oldData": {...}}``. The server
        checks the whole batch before delivering any of it: one bad delta refuses all of them
        with a :class:`BackendError`. A ``key`` (at most 200 characters) makes the call
        idempotent: the server answers a batch whose key it saw recently without delivering it
        again (an outbox relay sending a batch twice after a crash).
        """
        batch = [deltas] if isinstance(deltas, Mapping) else list(deltas)
        params: dict[str, Any] = {"deltas": batch}
        if key is not None:
            params["key"] = key
        self._client.call(service, "publishDeltas", params)
