"""The Django app configuration."""

from __future__ import annotations

from django.apps import AppConfig


class SnorkyDjangoConfig(AppConfig):
    """``snorky_django``: registers the system checks and the proxies of subscribable models."""

    name = "snorky_django"
    verbose_name = "Snorky"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from snorky_django import checks  # noqa: F401 (registers the checks)
        from snorky_django.changes import connect_proxies

        connect_proxies()
