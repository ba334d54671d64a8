"""The suite runs on the database it was asked for, and the app's migration applies there."""

from __future__ import annotations

import os

import pytest
from django.core.management import call_command
from django.db import connection

from snorky_django.models import OutboxEntry


@pytest.mark.django_db
def test_the_requested_database_is_in_use():
    expected = {"sqlite": "sqlite", "postgres": "postgresql"}[os.environ.get("SNORKY_TEST_DB", "sqlite")]
    assert connection.vendor == expected
    entry = OutboxEntry.objects.create(delta={"type": "insert", "model": "Task", "data": {"id": 1}})
    assert OutboxEntry.objects.get(pk=entry.pk).delta["data"] == {"id": 1}
    assert str(entry) == f"insert Task #{entry.pk}"


@pytest.mark.django_db
def test_no_missing_migrations():
    call_command("makemigrations", "snorky_django", "testapp", "--check", "--dry-run", verbosity=0)
