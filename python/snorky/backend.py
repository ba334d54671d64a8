"""The fast backend client: how a web application talks to the Snorky server."""

from __future__ import annotations

from typing import Any

from snorky import _core
from snorky._core import BackendError, SnorkyConnectionError, SnorkyError

__all__ = ["BackendError", "SnorkyBackend", "SnorkyConnectionError", "SnorkyError"]


class SnorkyBackend:
    """Calls the server's backend services over HTTP with the API key.

    The client keeps a pool of keep-alive connections and releases the GIL while waiting, so it
    is safe and cheap to share one instance between threads.

    >>> backend = SnorkyBackend("http://127.0.0.1:5002/backend", "swordfish")  # doctest: +SKIP
    >>> backend.publish("news", {"title": "hello"})  # doctest: +SKIP
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0) -> None:
        self._client = _core.BackendClient(url, api_key, timeout)

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
