"""The built-in services as ``manage.py snorky`` runs them: closed by default where a browser could
abuse them, opened by settings.

- **PubSub**: browsers may subscribe to any channel, but publish only to the channels
  ``PUBSUB_PUBLISH_CHANNELS`` allows (exact names or shell patterns such as ``"room:*"``; ``"*"``
  allows every channel, as Snorky 0.1 did), or those the callable named by
  ``PUBSUB_PUBLISH_POLICY`` accepts. By default browsers publish nowhere: Django publishes
  (``snorky_django.publish``), since only Django knows who may say what.
- **Messaging**: with ``MESSAGING_NAMES = "identity"`` (the default), a connection registers only
  names that belong to its identity (the connection token's ``sub``, ``str(user.pk)``): the
  identity itself, or the identity, ``:`` and anything (``"42"``, ``"42:phone"``); an anonymous
  connection registers none, since any name it took could be someone's. ``"open"`` allows every
  name (Snorky 0.1); a dotted path names a callable deciding.

A policy callable takes ``(client, value)`` (a :class:`snorky.Client`, with ``identity`` and
``info``, and the channel or name) and returns whether to allow it; it runs on a worker thread,
so it may query the database. The plain Python API (:mod:`snorky.services`) keeps 0.1's open
defaults: these rules are the Django app's.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from snorky.services import Client, MessagingService, PubSubService

__all__ = [
    "MESSAGING_NAME_POLICIES",
    "IdentityMessagingService",
    "PolicyMessagingService",
    "RestrictedPubSubService",
    "build_messaging",
    "build_pubsub",
    "name_belongs_to",
    "policy_problems",
]

#: The named values ``MESSAGING_NAMES`` accepts (besides a dotted path).
MESSAGING_NAME_POLICIES = ("identity", "open")

Policy = Callable[[Client, Any], bool]


def _policy(path: str, setting: str) -> Policy:
    try:
        policy = import_string(path)
    except ImportError as err:
        raise ImproperlyConfigured(f"SNORKY[{setting!r}] = {path!r} cannot be imported: {err}") from err
    if not callable(policy):
        raise ImproperlyConfigured(f"SNORKY[{setting!r}] = {path!r} is not callable")
    return policy  # type: ignore[no-any-return]


class RestrictedPubSubService(PubSubService):
    """PubSub whose browsers publish only to allowed channels (see the module docs).

    ``channels``: string channel names or shell patterns; ``policy``: a callable deciding instead.
    """

    def __init__(
        self, name: str = "pubsub", *, channels: list[str] | None = None, policy: Policy | None = None
    ) -> None:
        self.channels = list(channels or [])
        self.policy = policy
        super().__init__(name)

    def can_publish(self, client: Client, channel: Any) -> bool:
        if self.policy is not None:
            return bool(self.policy(client, channel))
        return isinstance(channel, str) and any(fnmatchcase(channel, pattern) for pattern in self.channels)


def name_belongs_to(name: str, identity: str | None) -> bool:
    """Whether Messaging name ``name`` belongs to ``identity``: the identity, or it followed by
    ``:`` and anything. No name belongs to an anonymous connection."""
    return identity is not None and (name == identity or name.startswith(identity + ":"))


class IdentityMessagingService(MessagingService):
    """Messaging whose connections register only names of their own identity."""

    def is_name_allowed(self, client: Client, name: str) -> bool:
        return name_belongs_to(name, client.identity)


class PolicyMessagingService(MessagingService):
    """Messaging whose names are allowed by a callable ``(client, name) -> bool``."""

    def __init__(self, name: str = "messaging", *, policy: Policy) -> None:
        self.policy = policy
        super().__init__(name)

    def is_name_allowed(self, client: Client, name: str) -> bool:
        return bool(self.policy(client, name))


def policy_problems(channels: Any, pubsub_policy: Any, names: Any) -> list[str]:
    """What is wrong with the three policy settings (for the checks), in words."""
    problems: list[str] = []
    if pubsub_policy is not None:
        if not isinstance(pubsub_policy, str):
            problems.append('SNORKY["PUBSUB_PUBLISH_POLICY"] must be a dotted path to a callable')
        else:
            try:
                _policy(pubsub_policy, "PUBSUB_PUBLISH_POLICY")
            except ImproperlyConfigured as err:
                problems.append(str(err))
    if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) for c in channels):
        problems.append('SNORKY["PUBSUB_PUBLISH_CHANNELS"] must be a list of channel names or patterns')
    if names not in MESSAGING_NAME_POLICIES:
        if isinstance(names, str) and "." in names:
            try:
                _policy(names, "MESSAGING_NAMES")
            except ImproperlyConfigured as err:
                problems.append(str(err))
        else:
            problems.append(f'SNORKY["MESSAGING_NAMES"] = {names!r}: use "identity", "open" or a dotted path')
    return problems


def build_pubsub(name: str, channels: Any, policy: Any) -> PubSubService:
    """The PubSub service ``PUBSUB_PUBLISH_CHANNELS`` and ``PUBSUB_PUBLISH_POLICY`` describe."""
    if policy is not None:
        if not isinstance(policy, str):
            raise ImproperlyConfigured('SNORKY["PUBSUB_PUBLISH_POLICY"] must be a dotted path to a callable')
        return RestrictedPubSubService(name, policy=_policy(policy, "PUBSUB_PUBLISH_POLICY"))
    if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) for c in channels):
        raise ImproperlyConfigured('SNORKY["PUBSUB_PUBLISH_CHANNELS"] must be a list of channel names or patterns')
    if "*" in channels:
        return PubSubService(name)  # open, as in 0.1: no policy call per publish
    return RestrictedPubSubService(name, channels=list(channels))


def build_messaging(name: str, names: Any) -> MessagingService:
    """The Messaging service ``MESSAGING_NAMES`` describes."""
    if names == "identity":
        return IdentityMessagingService(name)
    if names == "open":
        return MessagingService(name)
    if isinstance(names, str) and "." in names:
        return PolicyMessagingService(name, policy=_policy(names, "MESSAGING_NAMES"))
    raise ImproperlyConfigured(
        f'SNORKY["MESSAGING_NAMES"] = {names!r}: use "identity", "open" or a dotted path to a callable'
    )
