"""Settings: one ``SNORKY`` dict in the project's settings, read only through :data:`snorky_settings`.

Every key has a default (see :data:`DEFAULTS` and the Django guide); a handful are *derived* from
Django's own settings when left unset (``None``):

- ``BACKEND_URL`` from ``BACKEND_ADDRESS`` (``http://127.0.0.1:5002/backend``);
- ``TOKEN_SECRET`` from ``SECRET_KEY`` (an HMAC, so the secret itself never leaves Django);
- ``ALLOWED_ORIGINS`` from ``ALLOWED_HOSTS`` and ``CSRF_TRUSTED_ORIGINS``;
- ``PUBLIC_URL`` (the browsers' WebSocket URL) from the request's host and ``FRONTEND_ADDRESS``.

Values are cached on first use and the cache is dropped whenever one of the settings they depend on
changes (``override_settings`` in tests included), in the shape of DRF's ``APISettings``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.crypto import salted_hmac

from snorky import _core

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["BUILTIN_SERVICES", "DEFAULTS", "DELIVERY_MODES", "DIRECT_SEND_MODES", "SnorkySettings", "snorky_settings"]

#: Every setting and its default. ``None`` marks a value derived from other settings.
DEFAULTS: dict[str, Any] = {
    # The shared secret Django sends to the server's backend as X-Backend-Key. Required.
    "API_KEY": None,
    # Where `manage.py snorky` listens: browsers (WebSocket) and Django (HTTP backend).
    "FRONTEND_ADDRESS": _core.DEFAULT_FRONTEND_ADDRESS,
    "BACKEND_ADDRESS": _core.DEFAULT_BACKEND_ADDRESS,
    # The backend URL Django posts to; derived from BACKEND_ADDRESS.
    "BACKEND_URL": None,
    # Seconds Django waits for the backend before giving up on a request.
    "BACKEND_TIMEOUT": 5.0,
    # The WebSocket URL browsers connect to: absolute (wss://example.com/snorky/ws) or a path
    # (/snorky/ws, completed from the request). Derived from the request and FRONTEND_ADDRESS.
    "PUBLIC_URL": None,
    # The secret signing connection tokens (HS256); derived from SECRET_KEY.
    "TOKEN_SECRET": None,
    # Lifetime of a connection token, in seconds. Short, so that a token read from a log or a
    # screen is useless soon after; pages fetch a fresh one for each reconnection (views.py).
    "CONNECTION_TOKEN_TTL": 120,
    # Whether logging out closes the user's live connections (snorky_django.disconnect).
    "DISCONNECT_ON_LOGOUT": True,
    # Browser origins allowed to open WebSockets; derived from ALLOWED_HOSTS and CSRF_TRUSTED_ORIGINS.
    "ALLOWED_ORIGINS": None,
    # Frontend services: built-in names (see BUILTIN_SERVICES) and dotted paths to a service, or to
    # a callable returning a service or a list of them.
    "SERVICES": ["pubsub", "datasync"],
    # Extra backend services (dotted paths, as for SERVICES).
    "BACKEND_SERVICES": [],
    # Service names, as registered on the server and addressed by Django and the browsers.
    "PUBSUB_SERVICE": "pubsub",
    "PUBSUB_BACKEND_SERVICE": "pubsub_backend",
    "DATASYNC_SERVICE": "datasync",
    "DATASYNC_BACKEND_SERVICE": "datasync_backend",
    "CHAT_SERVICE": "chat",
    "CURSORS_SERVICE": "cursors",
    "MESSAGING_SERVICE": "messaging",
    # The backend service that disconnects an identity's connections (revocation).
    "CONNECTIONS_BACKEND_SERVICE": "connections",
    # What browsers may do with PubSub and Messaging (see snorky_django.services): the channels they
    # may publish to (names or shell patterns; ["*"] for any, as in 0.1), or a dotted path to a
    # callable (client, channel) -> bool deciding instead; and which Messaging names a connection
    # may register: "identity" (its own), "open" (any, as in 0.1) or a dotted path to a callable.
    "PUBSUB_PUBLISH_CHANNELS": [],
    "PUBSUB_PUBLISH_POLICY": None,
    "MESSAGING_NAMES": "identity",
    # Dealers beyond the defaults and the `snorky.py` modules: dotted paths to dealer classes.
    "DEALERS": [],
    # Whether to import every installed app's `snorky.py` module to find dealers.
    "AUTODISCOVER": True,
    # "direct": publish deltas on commit (an unreachable server is logged and counted).
    # "outbox": write them to the outbox table in the transaction; `manage.py snorky` relays them.
    # "logical" (PostgreSQL): the saving thread does nothing; `manage.py snorky` reads the committed
    # rows from a logical replication slot and renders them (snorky_django.logical).
    "DELIVERY": "direct",
    # Direct delivery: "background" (a sender thread per process posts after the commit; the
    # committing thread does not wait) or "inline" (the committing thread posts and waits).
    "DIRECT_SEND": "background",
    # Deltas the background sender may hold per process before a committing thread waits for room.
    "DIRECT_QUEUE_SIZE": 10_000,
    # Seconds the background sender lets commits that follow each other closely join one request
    # (an isolated commit is sent at once); 0 sends every commit's deltas at once.
    "DIRECT_LINGER": 0.002,
    # DataSync timeouts: seconds an authorized subscription waits to be acquired, seconds a
    # disconnected one waits to be resumed.
    "SUBSCRIPTION_TIMEOUT": 120.0,
    "RESUME_TIMEOUT": 60.0,
    # Other options of snorky.services.DataSyncService (retention, max_subscriptions, ...).
    "DATASYNC_OPTIONS": {},
    # The outbox relay: deltas per request, seconds between polls of an empty outbox, and the
    # longest pause between retries while the server is unreachable.
    "OUTBOX_BATCH_SIZE": 500,
    "OUTBOX_POLL_INTERVAL": 0.2,
    "OUTBOX_MAX_RETRY_DELAY": 5.0,
    # Logical delivery: the replication slot (the database alias is added for databases other
    # than "default") and the publication it reads.
    "LOGICAL_SLOT": "snorky",
    "LOGICAL_PUBLICATION": "snorky",
    # Extra keyword arguments for snorky.Server (max_frame_size, ping_interval, the SockJS ones:
    # sockjs=False to serve no SockJS, sockjs_prefix, sockjs_cookie_needed, ...).
    "SERVER_OPTIONS": {},
    # The Redis several `manage.py snorky` processes share ("redis://host:6379/0",
    # "rediss://...", "redis+cluster://host:7000,host:7001"); None: one process.
    "BROKER": None,
    # This node's name in logs and metrics (a random id is added).
    "NODE_NAME": None,
    # Field names never sent in deltas unless the model's declaration names them (shell patterns,
    # case-insensitive, matched at any depth of the delta data).
    "SECRET_FIELDS": [
        "*password*",
        "*passwd*",
        "*secret*",
        "*token*",
        "*api_key*",
        "*apikey*",
        "*private_key*",
        "*credential*",
        "*session_key*",
        "*sessionkey*",
    ],
}

#: The built-in services a ``SERVICES`` entry may name.
BUILTIN_SERVICES = ("pubsub", "datasync", "chat", "cursors", "messaging")

#: Accepted values of ``DELIVERY``.
DELIVERY_MODES = ("direct", "outbox", "logical")

#: Accepted values of ``DIRECT_SEND``.
DIRECT_SEND_MODES = ("background", "inline")

#: In DEBUG, loopback hosts are allowed as origins on these ports (besides the default port),
#: because the development server's port is not known to the Snorky process.
DEBUG_ORIGIN_PORTS = (8000, 8080, 3000, 5173)

_LOOPBACK_HOSTS = {"localhost", ".localhost", "127.0.0.1", "[::1]"}

#: Django settings the derived values depend on: a change to any of them drops the cache.
_WATCHED = {"SNORKY", "SECRET_KEY", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "DEBUG"}


def split_address(address: str) -> tuple[str, int]:
    """Splits ``"host:port"`` (``"[::1]:5001"`` for IPv6); raises ``ValueError`` when malformed.

    The host is required: the server cannot listen on ``":5001"`` (an empty host is no address).
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    if not host:
        raise ValueError(
            f"{address!r} has no host: give one, e.g. 0.0.0.0:{port} (every interface) "
            f"or 127.0.0.1:{port} (this machine only)"
        )
    return host, int(port)


def connect_host(host: str) -> str:
    """The host to connect to for a listener bound to ``host`` (wildcards mean this machine)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


class SnorkySettings:
    """Attribute access to the ``SNORKY`` dict, with defaults and derived values (cached)."""

    API_KEY: str | None
    FRONTEND_ADDRESS: str
    BACKEND_ADDRESS: str
    BACKEND_URL: str
    BACKEND_TIMEOUT: float
    PUBLIC_URL: str | None
    TOKEN_SECRET: str
    CONNECTION_TOKEN_TTL: int
    DISCONNECT_ON_LOGOUT: bool
    ALLOWED_ORIGINS: list[str]
    SERVICES: list[str]
    BACKEND_SERVICES: list[str]
    PUBSUB_SERVICE: str
    PUBSUB_BACKEND_SERVICE: str
    DATASYNC_SERVICE: str
    DATASYNC_BACKEND_SERVICE: str
    CHAT_SERVICE: str
    CURSORS_SERVICE: str
    MESSAGING_SERVICE: str
    CONNECTIONS_BACKEND_SERVICE: str
    PUBSUB_PUBLISH_CHANNELS: list[str]
    PUBSUB_PUBLISH_POLICY: str | None
    MESSAGING_NAMES: str
    DEALERS: list[str]
    AUTODISCOVER: bool
    DELIVERY: str
    DIRECT_SEND: str
    DIRECT_QUEUE_SIZE: int
    DIRECT_LINGER: float
    SUBSCRIPTION_TIMEOUT: float
    RESUME_TIMEOUT: float
    DATASYNC_OPTIONS: dict[str, Any]
    OUTBOX_BATCH_SIZE: int
    OUTBOX_POLL_INTERVAL: float
    OUTBOX_MAX_RETRY_DELAY: float
    LOGICAL_SLOT: str
    LOGICAL_PUBLICATION: str
    SERVER_OPTIONS: dict[str, Any]
    BROKER: str | None
    NODE_NAME: str | None
    SECRET_FIELDS: list[str]

    def __init__(self) -> None:
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        """The project's ``SNORKY`` dict, as written (empty when unset)."""
        value = getattr(settings, "SNORKY", None)
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"unknown Snorky setting {name!r}")
        value = self.user_settings.get(name, DEFAULTS[name])
        if value is None:
            derive = _DERIVED.get(name)
            if derive is not None:
                value = derive(self)
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        """Drops every cached value (called when a watched Django setting changes)."""
        for name in self._cached:
            self.__dict__.pop(name, None)
        self._cached.clear()

    def is_set(self, name: str) -> bool:
        """Whether the project set ``name`` explicitly (to anything but ``None``)."""
        return self.user_settings.get(name) is not None

    def public_url_is_absolute(self) -> bool:
        """Whether ``PUBLIC_URL`` is a whole ``ws(s)://`` URL: pages are told it as it is, without
        looking at the request."""
        url = self.PUBLIC_URL
        return isinstance(url, str) and url.startswith(("ws://", "wss://"))

    def public_url(self, request: HttpRequest | None = None) -> str:
        """The WebSocket URL a browser should connect to.

        ``PUBLIC_URL`` as set when it is absolute; a path (``/snorky/ws``) is completed with the
        request's scheme and host; unset, it is the request's host on the frontend port.
        """
        configured = self.PUBLIC_URL
        secure = request.is_secure() if request is not None else False
        scheme = "wss" if secure else "ws"
        if configured and not configured.startswith("/"):
            return configured
        if configured:
            host = request.get_host() if request is not None else "localhost"
            return f"{scheme}://{host}{configured}"
        _, port = split_address(self.FRONTEND_ADDRESS)
        host = request.get_host() if request is not None else "localhost"
        host = _strip_port(host)
        return f"{scheme}://{host}:{port}/ws"


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.index("]") + 1]
    return host.split(":", 1)[0]


def _derive_backend_url(conf: SnorkySettings) -> str:
    host, port = split_address(conf.BACKEND_ADDRESS)
    return f"http://{connect_host(host)}:{port}/backend"


def _derive_token_secret(conf: SnorkySettings) -> str:
    # An HMAC of a constant under SECRET_KEY: both processes derive the same value from the shared
    # settings, and neither the server nor a leaked token reveals SECRET_KEY itself.
    return salted_hmac(
        "snorky_django.conf.TOKEN_SECRET", "connection tokens", secret=settings.SECRET_KEY, algorithm="sha256"
    ).hexdigest()


def _derive_allowed_origins(conf: SnorkySettings) -> list[str]:
    return derive_allowed_origins(
        list(getattr(settings, "ALLOWED_HOSTS", [])),
        list(getattr(settings, "CSRF_TRUSTED_ORIGINS", [])),
        debug=bool(settings.DEBUG),
    )


def derive_allowed_origins(allowed_hosts: list[str], trusted_origins: list[str], *, debug: bool) -> list[str]:
    """The browser origins implied by Django's host settings.

    - ``"*"`` in ``ALLOWED_HOSTS`` allows any origin (Django itself answers any host).
    - Each host allows ``https://host`` and ``http://host``; a leading dot (``.example.com``)
      allows the domain itself only: the server matches origins exactly, so list subdomains in
      ``ALLOWED_ORIGINS`` when they need live data.
    - In DEBUG with no hosts, Django allows the loopback names; loopback names are then also
      allowed on the usual development ports (:data:`DEBUG_ORIGIN_PORTS`).
    - ``CSRF_TRUSTED_ORIGINS`` entries are added as written, except wildcard ones, which the
      server cannot match (the ``snorky.W004`` check says so).
    """
    hosts = list(allowed_hosts)
    if debug and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    if "*" in hosts:
        return ["*"]
    origins: list[str] = []

    def add(origin: str) -> None:
        if origin not in origins:
            origins.append(origin)

    for host in hosts:
        name = host.lstrip(".")
        if not name:
            continue
        add(f"https://{name}")
        add(f"http://{name}")
        if debug and host in _LOOPBACK_HOSTS:
            for port in DEBUG_ORIGIN_PORTS:
                add(f"http://{name}:{port}")
    for origin in trusted_origins:
        if "*" not in origin:
            add(origin.rstrip("/"))
    return origins


_DERIVED = {
    "BACKEND_URL": _derive_backend_url,
    "TOKEN_SECRET": _derive_token_secret,
    "ALLOWED_ORIGINS": _derive_allowed_origins,
}

#: The one settings object; read settings as ``snorky_settings.API_KEY``.
snorky_settings = SnorkySettings()


def valid_backend_url(url: object) -> bool:
    """Whether ``url`` looks like ``http(s)://host[:port]/path``."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@receiver(setting_changed)
def _reload_settings(*, setting: str, **kwargs: Any) -> None:
    if setting in _WATCHED:
        snorky_settings.reload()
        # The backend client is built from these settings: drop it too.
        from snorky_django import delivery

        delivery.reset_backend()
