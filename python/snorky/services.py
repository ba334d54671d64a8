"""The built-in services, as Python classes whose policy hooks may be overridden."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from snorky import _core
from snorky._core import Client, ConfigurationError
from snorky.dealers import Dealer
from snorky.rpc import Request, RPCError, RPCService, rpc_asynchronous, rpc_command

__all__ = [
    "ChatService",
    "Client",
    "ConnectionsBackend",
    "CursorsService",
    "DataSyncBackend",
    "DataSyncService",
    "MessagingService",
    "PubSubBackend",
    "PubSubService",
    "RPCError",
    "RPCService",
    "Request",
    "rpc_asynchronous",
    "rpc_command",
    "services_from",
]


def _is_service(value: object) -> bool:
    return hasattr(value, "_core")


def services_from(target: object, source: str) -> list[Any]:
    """The services ``target`` stands for: a service, or a callable returning a service or an
    iterable of them (what ``snorky serve --services`` and Django's ``SNORKY["SERVICES"]`` accept).
    ``source`` says where ``target`` came from, for the :class:`ConfigurationError` raised when it
    is none of these."""
    if _is_service(target):
        return [target]
    if not callable(target):
        raise ConfigurationError(f"{source} is {target!r}, neither a Snorky service nor a callable")
    made = target()
    # A string or a mapping is iterable too, but never a list of services.
    if _is_service(made) or not isinstance(made, Iterable) or isinstance(made, (str, bytes, dict)):
        services = [made]
    else:
        services = list(made)
    for service in services:
        if not _is_service(service):
            raise ConfigurationError(
                f"{source} returned {service!r}, which is not a Snorky service (return a service, or a list of them)"
            )
    return services


def _overrides(instance: object, base: type, method: str) -> bool:
    """Whether ``instance``'s class overrides ``base.method`` (only then is Python called)."""
    return getattr(type(instance), method) is not getattr(base, method)


class PubSubService:
    """Publish/subscribe for browsers: ``subscribe``, ``unsubscribe``, ``publish``.

    Override :meth:`can_publish` in a subclass to decide which clients may publish where.

    Options (keyword arguments): ``max_subscriptions`` (1,000 channels per connection: "Too many
    subscriptions" beyond), ``max_channel_size`` (1,024 bytes of JSON: "Channel too large").
    """

    side = "frontend"

    def __init__(self, name: str = "pubsub", **options: Any) -> None:
        self.name = name
        self.options = options
        hook = self.can_publish if _overrides(self, PubSubService, "can_publish") else None
        self._core = _core.PubSubService(name, can_publish=hook, options=options)

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


class ConnectionsBackend:
    """The web application's control over who stays connected (register it on the backend).

    Its command ``disconnect`` (``SnorkyBackend.disconnect(identity)``) revokes an identity:
    every open connection of that identity is closed with code 4501 (the JavaScript client does
    not reconnect), and connection tokens of that identity issued until then are refused for
    ``revocation_window`` seconds (a server option, one hour by default: keep it at least as long
    as your tokens live).
    """

    side = "backend"

    def __init__(self, name: str = "connections") -> None:
        self.name = name
        self._core = _core.ConnectionsBackend(name)

    def __repr__(self) -> str:
        return f"ConnectionsBackend({self.name!r})"


class ChatService:
    """Chat for browsers: ``join``, ``leave``, ``send``, ``read``, with presence per identity.

    Only connections with an identity (a connection token) may join. Override :meth:`can_join`
    in a subclass to decide who may join which channel.

    Options (keyword arguments): ``max_channels`` (100 per connection: "Too many channels"),
    ``max_channel_size`` (1,024 bytes of JSON: "Channel too large").
    """

    side = "frontend"

    def __init__(self, name: str = "chat", **options: Any) -> None:
        self.name = name
        self.options = options
        hook = self.can_join if _overrides(self, ChatService, "can_join") else None
        self._core = _core.ChatService(name, can_join=hook, options=options)

    def can_join(self, client: Client, channel: Any) -> bool:
        """Whether ``client`` may join ``channel`` (refused → "Not authorized").

        Asked after the identity check, so ``client.identity`` is a string. Runs on a worker
        thread; it may block (a database query) without stalling others.
        """
        return True

    def members(self, channel: Any) -> list[str]:
        """The identities present in ``channel``, sorted; with a broker, those of this node's
        connections (``join`` answers the whole cluster's)."""
        return self._core.members(channel)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class CursorsService:
    """Shared cursors for browsers: ``join``, ``leave``, ``createCursor``, ``updateCursor``,
    ``removeCursor``.

    Only connections with an identity may join. Override :meth:`can_join` in a subclass to
    decide who may join which document.

    Options (keyword arguments): ``max_documents`` (100 per connection: "Too many documents"),
    ``max_document_size`` (1,024 bytes of JSON: "Document too large"), ``max_cursors`` (16 per
    connection: "Too many cursors"), ``max_cursor_size`` (4,096 bytes of JSON for a cursor's
    private handle, position and status together: "Cursor too large").
    """

    side = "frontend"

    def __init__(self, name: str = "cursors", **options: Any) -> None:
        self.name = name
        self.options = options
        hook = self.can_join if _overrides(self, CursorsService, "can_join") else None
        self._core = _core.CursorsService(name, can_join=hook, options=options)

    def can_join(self, client: Client, document: Any) -> bool:
        """Whether ``client`` may join ``document`` (refused → "Not authorized").

        Asked after the identity check, so ``client.identity`` is a string. Runs on a worker
        thread; it may block without stalling others.
        """
        return True

    def cursor_count(self, document: Any) -> int:
        """The number of cursors in ``document``; with a broker, those of this node's connections
        (``join`` lists the whole cluster's)."""
        return self._core.cursor_count(document)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class MessagingService:
    """Messages between named participants: ``registerParticipant``, ``unregisterParticipant``,
    ``listParticipants``, ``send``. Names are freed when their connection closes.

    Override :meth:`is_name_allowed` in a subclass to decide which names a client may register.

    Options (keyword arguments): ``max_names`` (16 per connection: "Too many names"),
    ``max_name_length`` (256 UTF-8 bytes: "Name too long"), ``max_participants`` (10,000 names
    on the service: "Too many participants"; this also bounds a ``listParticipants`` reply).
    """

    side = "frontend"

    def __init__(self, name: str = "messaging", **options: Any) -> None:
        self.name = name
        self.options = options
        hook = self.is_name_allowed if _overrides(self, MessagingService, "is_name_allowed") else None
        self._core = _core.MessagingService(name, is_name_allowed=hook, options=options)

    def is_name_allowed(self, client: Client, name: str) -> bool:
        """Whether ``client`` may register ``name`` (refused → "Name not allowed").

        Asked only for names nobody holds. Runs on a worker thread; it may block without
        stalling others.
        """
        return True

    def participants(self) -> list[str]:
        """Every registered name, sorted by code point; with a broker, those of this node's
        connections (``listParticipants`` lists the whole cluster's)."""
        return self._core.participants()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class DataSyncService:
    """Live data for browsers: ``acquireSubscription`` and ``cancelSubscription``.

    The web application authorizes a subscription through :class:`DataSyncBackend` (which
    returns a token), hands the token to the browser, and publishes deltas; the browser acquires
    the token and receives every delta its subscription items match, routed by ``dealers``
    (classes or instances from :mod:`snorky.dealers`).

    Options (keyword arguments; unknown names raise :class:`~snorky.ConfigurationError`):

    - ``subscription_timeout`` (120 s): how long an authorized subscription waits to be
      acquired.
    - ``resume_timeout`` (60 s): how long a subscription whose connection closed waits to be
      acquired again. It resumes after the last delta its connection actually wrote, so a
      reconnecting client misses nothing and gets nothing twice.
    - ``retention`` (100,000 deltas), ``retention_bytes`` (64 MiB), ``retention_age`` (300 s):
      how much of the stream of published deltas is kept. Waiting subscriptions, and clients
      reading slower than deltas are published, read from it; a subscription whose position
      fell out of it is dropped ("No such subscription": the client fetches its data again).
    - ``max_waiting`` (100,000): the most subscriptions waiting at once; the oldest go first.
    - ``max_waiting_per_identity`` (1,000): the most subscriptions bound to one identity waiting
      at once; that identity's oldest go first, so that one user reloading pages cannot crowd
      the others' out of ``max_waiting``.
    - ``max_items`` (1,000): the most items in one authorization ("Too many items").
    - ``max_subscriptions`` (100): the most subscriptions one connection may hold ("Too many
      subscriptions").
    - ``max_query_size`` (1,000), ``max_query_depth`` (32): the bounds on a Filter query.
    - ``idempotency_window`` (600 s), ``max_idempotency_keys`` (100,000): how long, and how
      many, ``publishDeltas`` keys are remembered to drop repeated batches.
    """

    side = "frontend"

    def __init__(
        self,
        name: str = "datasync",
        dealers: Iterable[type[Dealer] | Dealer] = (),
        **options: Any,
    ) -> None:
        self.name = name
        self.dealers: list[Dealer] = [dealer() if isinstance(dealer, type) else dealer for dealer in dealers]
        for dealer in self.dealers:
            if not isinstance(dealer, Dealer):
                raise ConfigurationError(f"{dealer!r} is not a dealer (subclass one of snorky.dealers)")
        self.options = options
        self._core = _core.DataSyncService(name, [dealer.spec() for dealer in self.dealers], options)

    @property
    def subscription_count(self) -> int:
        """How many subscriptions exist, waiting or acquired.

        With a broker, this node's only: the subscriptions its connections hold (and those of
        connections closing); the waiting ones are kept in Redis.
        """
        return self._core.subscription_count

    @property
    def waiting_count(self) -> int:
        """How many subscriptions wait to be acquired (authorized, or their connection closed).

        With a broker, only those whose connection on this node is closing: the waiting ones are
        kept in Redis.
        """
        return self._core.waiting_count

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {[dealer.name for dealer in self.dealers]!r})"


class DataSyncBackend:
    """The web application's side of a DataSync service: ``authorizeSubscription`` (items →
    token) and ``publishDeltas`` (a batch, refused whole if any delta is invalid).

    Call it with :meth:`snorky.backend.SnorkyBackend.authorize_subscription` and
    :meth:`~snorky.backend.SnorkyBackend.publish_deltas`.
    """

    side = "backend"

    def __init__(self, name: str, datasync: DataSyncService) -> None:
        self.name = name
        self.datasync = datasync
        self._core = _core.DataSyncBackend(name, datasync._core)

    def __repr__(self) -> str:
        return f"DataSyncBackend({self.name!r}, {self.datasync!r})"
