"""The embedded server, built from ``settings.SNORKY``: what ``manage.py snorky`` runs.

:func:`build_server` makes the services (``SERVICES``: PubSub and DataSync by default, Chat,
Cursors and Messaging on request, plus dotted paths; PubSub and Messaging with the policies of
:mod:`snorky_django.services`), the ``connections`` backend service that
:func:`snorky_django.disconnect` calls, gives DataSync the dealers of
:mod:`snorky_django.dealers`, and returns a :class:`DjangoServer`: a :class:`snorky.Server` that
also runs the outbox relay while it serves, when ``DELIVERY`` is ``"outbox"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

import snorky.services
from snorky import ConfigurationError, Server, ServerHandle
from snorky.backend import SnorkyBackend
from snorky.services import services_from
from snorky_django.conf import connect_host, snorky_settings, split_address
from snorky_django.relay import OutboxRelay
from snorky_django.services import build_messaging, build_pubsub

__all__ = ["DjangoServer", "Services", "build_server", "build_services"]


@dataclass
class Services:
    """The services of one server, and the DataSync dealers' names (for the startup banner)."""

    frontend: list[Any] = field(default_factory=list)
    backend: list[Any] = field(default_factory=list)
    dealers: list[str] = field(default_factory=list)


def _builtin(kind: str) -> type[Any]:
    names = {"chat": "ChatService", "cursors": "CursorsService"}
    service_class = getattr(snorky.services, names[kind], None)
    if service_class is None:
        raise ImproperlyConfigured(f'SNORKY["SERVICES"] enables {kind!r}, which this version of snorky does not have')
    return service_class  # type: ignore[no-any-return]


def _imported(path: str, setting: str) -> list[Any]:
    """A service from a dotted path: an instance, or a callable returning one or a list."""
    try:
        target = import_string(path)
    except ImportError as err:
        raise ImproperlyConfigured(f"SNORKY[{setting!r}] entry {path!r} cannot be imported: {err}") from err
    try:
        return services_from(target, f"SNORKY[{setting!r}] entry {path!r}")
    except ConfigurationError as err:
        raise ImproperlyConfigured(str(err)) from err


def build_services() -> Services:
    """The frontend and backend services ``SNORKY`` asks for."""
    from snorky_django.dealers import build_dealers

    conf = snorky_settings
    services = Services()
    for entry in conf.SERVICES:
        if entry == "pubsub":
            pubsub = build_pubsub(conf.PUBSUB_SERVICE, conf.PUBSUB_PUBLISH_CHANNELS, conf.PUBSUB_PUBLISH_POLICY)
            services.frontend.append(pubsub)
            services.backend.append(snorky.services.PubSubBackend(conf.PUBSUB_BACKEND_SERVICE, pubsub))
        elif entry == "datasync":
            dealers = build_dealers()
            datasync = snorky.services.DataSyncService(
                conf.DATASYNC_SERVICE,
                dealers,
                **{
                    "subscription_timeout": float(conf.SUBSCRIPTION_TIMEOUT),
                    "resume_timeout": float(conf.RESUME_TIMEOUT),
                    **conf.DATASYNC_OPTIONS,
                },
            )
            services.frontend.append(datasync)
            services.backend.append(snorky.services.DataSyncBackend(conf.DATASYNC_BACKEND_SERVICE, datasync))
            services.dealers = [dealer.name for dealer in datasync.dealers]
        elif entry == "messaging":
            services.frontend.append(build_messaging(conf.MESSAGING_SERVICE, conf.MESSAGING_NAMES))
        elif entry in ("chat", "cursors"):
            name = getattr(conf, f"{entry.upper()}_SERVICE")
            services.frontend.append(_builtin(entry)(name))
        elif isinstance(entry, str) and "." in entry:
            services.frontend.extend(_imported(entry, "SERVICES"))
        else:
            raise ImproperlyConfigured(
                f'SNORKY["SERVICES"] entry {entry!r} is neither a built-in service nor a dotted path'
            )
    # Revocation: snorky_django.disconnect() (called on logout) closes an identity's connections.
    services.backend.append(snorky.services.ConnectionsBackend(conf.CONNECTIONS_BACKEND_SERVICE))
    for entry in conf.BACKEND_SERVICES:
        services.backend.extend(_imported(entry, "BACKEND_SERVICES"))
    return services


class DjangoServer(Server):
    """A :class:`snorky.Server` that runs the outbox relay while it serves.

    The relay starts once the ports are bound and posts to this server's own backend port; it
    stops before the server does, so no batch is cut off by the shutdown. ``on_started``, if set,
    is called with the handle once serving (the management command prints its banner there).
    """

    def __init__(
        self,
        services: Services,
        *,
        frontend_address: str,
        backend_address: str,
        api_key: str,
        relay: OutboxRelay | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            services.frontend,
            services.backend,
            frontend_address=frontend_address,
            backend_address=backend_address,
            api_key=api_key,
            **options,
        )
        self.services = services
        self.broker: str | None = options.get("broker")
        """The broker this node shares with others (its URL), or None."""
        self.frontend_address = frontend_address
        self.backend_address = backend_address
        self.relay = relay
        self.on_started: Callable[[ServerHandle], None] | None = None
        self._api_key = api_key

    def start(self) -> ServerHandle:
        handle = super().start()
        if self.relay is not None:
            if self.relay.backend is None:
                host, _ = split_address(self.backend_address)
                self.relay.backend = SnorkyBackend(
                    f"http://{connect_host(host)}:{handle.backend_port}/backend",
                    self._api_key,
                    timeout=float(snorky_settings.BACKEND_TIMEOUT),
                )
            self.relay.start()
            handle = _RelayHandle(handle, self.relay)
        if self.on_started is not None:
            self.on_started(handle)
        return handle


class _RelayHandle(ServerHandle):
    """A handle whose ``stop()`` stops the relay first."""

    def __init__(self, handle: ServerHandle, relay: OutboxRelay) -> None:
        super().__init__(handle._core)
        self.relay = relay

    def stop(self, timeout: float | None = 30.0) -> bool:
        self.relay.stop(timeout if timeout is not None else 30.0)
        return super().stop(timeout)


def build_server(
    *,
    frontend_address: str | None = None,
    backend_address: str | None = None,
    relay: bool | None = None,
    server_class: type[DjangoServer] | None = None,
    **options: Any,
) -> DjangoServer:
    """The server ``SNORKY`` describes; addresses may be overridden.

    ``relay`` runs the relay while serving (default: when ``DELIVERY`` is ``"outbox"``, the
    outbox relay, or ``"logical"``, the logical relay, whose databases are set up here first);
    ``server_class`` replaces :class:`DjangoServer` (a subclass of it).
    Extra ``options`` go to :class:`snorky.Server` after ``SERVER_OPTIONS``. Raises
    ``ImproperlyConfigured`` (or :class:`snorky.ConfigurationError` from the server's own checks).
    """
    conf = snorky_settings
    if not conf.API_KEY:
        raise ImproperlyConfigured('SNORKY["API_KEY"] is not set')
    cluster = {key: value for key, value in (("broker", conf.BROKER), ("node_name", conf.NODE_NAME)) if value}
    services = build_services()
    if relay is None:
        relay = conf.DELIVERY in ("outbox", "logical")
    relay_for_mode: OutboxRelay | None = None
    if relay:
        relay_for_mode = new_relay()
    return (server_class or DjangoServer)(
        services,
        frontend_address=frontend_address or conf.FRONTEND_ADDRESS,
        backend_address=backend_address or conf.BACKEND_ADDRESS,
        api_key=conf.API_KEY,
        allowed_origins=conf.ALLOWED_ORIGINS,
        relay=relay_for_mode,
        **{"token_secret": conf.TOKEN_SECRET, **cluster, **conf.SERVER_OPTIONS, **options},
    )


def new_relay(backend: SnorkyBackend | None = None) -> OutboxRelay:
    """The relay of ``DELIVERY``: a :class:`~snorky_django.logical.LogicalRelay` (its databases set
    up now, so that a misconfiguration fails here) or an :class:`OutboxRelay`."""
    if snorky_settings.DELIVERY == "logical":
        from snorky_django.logical import LogicalRelay

        logical = LogicalRelay(backend)
        logical.prepare()
        return logical
    return OutboxRelay(backend)
