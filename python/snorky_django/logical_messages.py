"""Deltas that only Python knows of, written into the stream logical delivery reads.

Many-to-many changes and :func:`snorky_django.publish_deltas` make their deltas in the saving
thread; under ``DELIVERY = "logical"`` they go into the WAL with ``pg_logical_emit_message``
(transactional: decoded with the transaction's rows, at their place, only if it commits).

Any database login may call ``pg_logical_emit_message``, not only the application's, so each
message is signed: an HMAC-SHA256 of the deltas' JSON under a key derived from ``SECRET_KEY``
(which the web processes and ``manage.py snorky`` share). The relay drops, and logs, a message
whose signature does not match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from django.conf import settings
from django.db import connections
from django.utils.crypto import salted_hmac

__all__ = ["MESSAGE_PREFIX", "emit", "read"]

logger = logging.getLogger("snorky_django.logical")

#: The prefix of the logical messages carrying deltas.
MESSAGE_PREFIX = "snorky"

_SIGNATURE_LENGTH = 64  # hex digits of a SHA-256


def _key() -> bytes:
    return salted_hmac("snorky_django.logical_messages", "deltas", secret=settings.SECRET_KEY).digest()


def _signature(body: bytes) -> bytes:
    return hmac.new(_key(), body, hashlib.sha256).hexdigest().encode("ascii")


def emit(deltas: list[dict[str, Any]], using: str) -> None:
    """Writes ``deltas`` into the stream in the current transaction (they commit, or vanish, with it)."""
    body = json.dumps(deltas, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_logical_emit_message(true, %s, %s::bytea)", [MESSAGE_PREFIX, _signature(body) + body])


def read(content: bytes) -> list[Any] | None:
    """The deltas of a message written by :func:`emit`, or ``None`` (logged) for anything else."""
    signature, body = content[:_SIGNATURE_LENGTH], content[_SIGNATURE_LENGTH:]
    if not hmac.compare_digest(signature, _signature(body)):
        logger.error(
            "Snorky: dropped a logical message with prefix %r whose signature does not match: it was not "
            "written by this application (or SECRET_KEY differs between it and manage.py snorky)",
            MESSAGE_PREFIX,
        )
        return None
    try:
        deltas = json.loads(body)
    except ValueError:
        deltas = None
    if not isinstance(deltas, list):
        logger.error("Snorky: dropped a signed logical message that is not a list of deltas")
        return None
    return deltas
