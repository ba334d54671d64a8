"""Policy callables the browser-permission tests point SNORKY settings at."""

from typing import Any


def identified_only(client: Any, value: Any) -> bool:
    """Allows connections that carry an identity (a connection token), whatever the value."""
    return client.identity is not None


def shouting(client: Any, name: str) -> bool:
    """Allows Messaging names in capitals only."""
    return name.isupper()
