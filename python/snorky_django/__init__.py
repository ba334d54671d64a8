"""snorky_django: live data for Django models, through the Snorky server.

>>> from snorky_django import subscribable
>>> @subscribable                                   # doctest: +SKIP
... class Task(models.Model): ...

Every committed insert, update and delete of a ``@subscribable`` model becomes a DataSync delta;
``snorky_django.rest_framework`` hands browsers the subscription tokens; ``manage.py snorky`` runs
the server. See the Django guide in README.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snorky_django.changes import SubscribableManager, SubscribableQuerySet, subscribable

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

__all__ = [
    "SubscribableManager",
    "SubscribableQuerySet",
    "authorize_subscription",
    "connection_token",
    "disconnect",
    "identity_of",
    "publish",
    "publish_deltas",
    "subscribable",
]


def identity_of(user: AbstractBaseUser | AnonymousUser | None) -> str | None:
    """The identity Snorky knows ``user`` by: ``str(user.pk)``, the ``sub`` of their connection
    tokens; ``None`` for an anonymous (or unsaved) user."""
    if user is None or not user.is_authenticated or user.pk is None:
        return None
    return str(user.pk)


def connection_token(user: AbstractBaseUser | AnonymousUser | None, *, ttl: int | None = None) -> str | None:
    """The connection token proving ``user``'s identity to the Snorky server (``/ws?token=...``).

    The identity is :func:`identity_of` (``str(user.pk)``); ``info`` carries ``username`` and
    ``name`` (the full name, or the username). ``None`` for anonymous users. Valid
    ``CONNECTION_TOKEN_TTL`` seconds (two minutes by default): pages get a fresh one for each
    reconnection from :func:`snorky_django.views.connection_token`.
    """
    import snorky
    from snorky_django.conf import snorky_settings

    identity = identity_of(user)
    if user is None or identity is None:
        return None
    username = user.get_username()
    full_name = getattr(user, "get_full_name", None)
    name = (full_name() if callable(full_name) else "") or username
    return snorky.connection_token(
        identity,
        snorky_settings.TOKEN_SECRET,
        ttl=int(ttl if ttl is not None else snorky_settings.CONNECTION_TOKEN_TTL),
        info={"username": username, "name": name},
    )


def publish(channel: Any, message: Any, *, fail_silently: bool = False) -> None:
    """Publishes ``message`` to the browsers subscribed to PubSub ``channel``, now.

    Raises :class:`snorky.SnorkyError` when the server cannot be reached or refuses, unless
    ``fail_silently`` (then the error is logged). To publish only if a transaction commits, wrap
    the call in ``transaction.on_commit``.
    """
    import logging

    from snorky.backend import SnorkyError
    from snorky_django.conf import snorky_settings
    from snorky_django.delivery import get_backend

    try:
        get_backend().publish(channel, message, service=snorky_settings.PUBSUB_BACKEND_SERVICE)
    except SnorkyError as err:
        if not fail_silently:
            raise
        logging.getLogger("snorky_django").error("Snorky: could not publish to %r: %s", channel, err)


def publish_deltas(deltas: list[dict[str, Any]], *, using: str = "default") -> None:
    """Publishes hand-made deltas the way model changes are: on commit of the current transaction
    on database ``using`` (or through the outbox), in order with the transaction's other deltas.

    For changes that bypass Django's models (raw SQL, ``loaddata``, database triggers), e.g.
    ``publish_deltas([{"type": "update", "model": "Task", "newData": ..., "oldData": ...}])``.
    """
    from snorky_django.delivery import enqueue

    enqueue(deltas, using)


def authorize_subscription(items: list[dict[str, Any]], *, user: AbstractBaseUser | AnonymousUser | None = None) -> str:
    """Authorizes a DataSync subscription for ``items`` (``{"dealer", "query"}`` dicts); returns
    the token the browser acquires. Raises :class:`snorky.SnorkyError` on failure.

    With a logged-in ``user`` (``request.user``), only connections carrying that user's
    connection token may acquire the subscription, or resume it after a reconnection; without
    one (or for an anonymous user), any connection may: pass the user whenever there is one.
    The subscribing views of :mod:`snorky_django.rest_framework` do.
    """
    from snorky_django.conf import snorky_settings
    from snorky_django.delivery import get_backend

    return get_backend().authorize_subscription(
        items, service=snorky_settings.DATASYNC_BACKEND_SERVICE, identity=identity_of(user)
    )


def disconnect(user: AbstractBaseUser | AnonymousUser | None, *, fail_silently: bool = False) -> None:
    """Closes every connection of ``user``'s identity, now, with close code 4501 (the JS client does
    not reconnect), and makes the server refuse, for a while, the connection tokens issued to them
    before this call. Called on logout (``DISCONNECT_ON_LOGOUT``); call it when you deactivate a
    user or change their password, too. Nothing happens for an anonymous user.

    Raises :class:`snorky.SnorkyError` when the server cannot be reached, unless ``fail_silently``
    (then the error is logged).
    """
    import logging

    from snorky.backend import SnorkyError
    from snorky_django.conf import snorky_settings
    from snorky_django.delivery import get_backend

    identity = identity_of(user)
    if identity is None:
        return
    try:
        get_backend().disconnect(identity, service=snorky_settings.CONNECTIONS_BACKEND_SERVICE)
    except SnorkyError as err:
        if not fail_silently:
            raise
        logging.getLogger("snorky_django").error("Snorky: could not disconnect identity %r: %s", identity, err)
