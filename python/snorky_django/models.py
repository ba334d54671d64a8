"""The outbox table of ``DELIVERY = "outbox"``, and the batch record of ``DELIVERY = "logical"``."""

from __future__ import annotations

import datetime
from typing import Any

from django.db import models
from django.utils import timezone

__all__ = ["LogicalClaim", "OutboxEntry"]


class OutboxEntry(models.Model):
    """A delta written in the transaction that made the change, waiting for the relay.

    The relay (run by ``manage.py snorky``) sends entries in ``id`` order and deletes them once the
    server accepted them. An entry the server refuses as invalid (a delta no dealer handles, say)
    keeps its row with ``error`` set and is not retried: inspect it, then delete it (or clear
    ``error`` to send it again). Any other failure is retried until the server accepts the batch.
    """

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    created: models.DateTimeField[datetime.datetime, datetime.datetime] = models.DateTimeField(default=timezone.now)
    delta: Any = models.JSONField()
    error: models.TextField[str, str] = models.TextField(blank=True, default="")
    batch: models.CharField[str, str] = models.CharField(max_length=200, blank=True, default="")
    """The idempotency key of the batch the relay sends this entry in, recorded before it is sent:
    sent again after a crash, the batch has the same entries and key, and the server drops it."""

    class Meta:
        verbose_name = "outbox entry"
        verbose_name_plural = "outbox entries"
        ordering = ("id",)
        # The relay looks batches up by equality only. (A plain index: ``db_index=True`` would add
        # a second, pattern-matching one on PostgreSQL, which every write would update for nothing.)
        indexes = (models.Index(fields=["batch"], name="snorky_outbox_batch"),)

    def __str__(self) -> str:
        delta = self.delta if isinstance(self.delta, dict) else {}
        return f"{delta.get('type')} {delta.get('model')} #{self.pk}"


class LogicalClaim(models.Model):
    """The batch the logical relay of a replication slot sends last, recorded before it is sent.

    A relay that died after sending it (before the slot moved past it) finds this record and sends
    the same stretch of the slot's stream again under the same key, which the server drops as a
    repeat (see :mod:`snorky_django.logical`). One row per slot.
    """

    slot: models.CharField[str, str] = models.CharField(max_length=63, primary_key=True)
    first: models.CharField[str, str] = models.CharField(max_length=64)
    """The position of the batch's first delta in the stream."""
    last: models.CharField[str, str] = models.CharField(max_length=64)
    key: models.CharField[str, str] = models.CharField(max_length=200)

    class Meta:
        verbose_name = "logical delivery claim"

    def __str__(self) -> str:
        return f"{self.slot}: {self.first}-{self.last}"
