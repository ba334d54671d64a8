"""The built-in services, as Python classes whose policy hooks may be overridden."""

from __future__ import annotations

from typing import Any

from snorky import _core
from snorky._core import Client
from snorky.rpc import Request, RPCError, RPCService, rpc_asynchronous, rpc_command

__all__ = [
    "Client",
    "PubSubBackend",
    "PubSubService",
    "RPCError",
    "RPCService",
    "Request",
    "rpc_asynchronous",
    "rpc_command",
]


def _overrides(instance: object, base: type, method: str) -> bool:
    """Whether ``instance``'s class overrides ``base.method`` (only then is Python called)."""
    return getattr(type(instance), method) is not getattr(base, method)


class PubSubService:
    """Publish/subscribe for browsers: ``subscribe``, ``unsubscribe``, ``publish``.

    Override :meth:`can_publish` in a subclass to decide which clients may publish where.
    """

    side = "frontend"

    def __init__(self, name: str = "pubsub") -> None:
        self.name = name
        hook = self.can_publish if _overrides(self, PubSubService, "can_publish") else None
        self._core = _core.PubSubService(name, can_publish=hook)

    def can_publish(self, client: Client, channel: Any) -> bool:
        """Whether ``client`` may publish to ``channel`` (refused → "Not authorized").

        Runs on a worker thread; it may block (a database query) without stalling others.
        """
        return True

    def publish(self, channel: Any, message: Any) -> int:
        """Publishes from this process; returns the number of subscribers reached."""
        return self._core.publish(channel, message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class PubSubBackend:
    """The web application's side of a PubSub service: ``publish``, always allowed."""

    side = "backend"

    def __init__(self, name: str, frontend: PubSubService) -> None:
        self.name = name
        self.frontend = frontend
        self._core = _core.PubSubBackend(name, frontend._core)

    def __repr__(self) -> str:
        return f"PubSubBackend({self.name!r}, {self.frontend!r})"
