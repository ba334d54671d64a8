"""The Django app configuration."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _disconnect_on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Logging out closes the user's live connections (``DISCONNECT_ON_LOGOUT``)."""
    from snorky_django import disconnect
    from snorky_django.conf import snorky_settings

    if snorky_settings.DISCONNECT_ON_LOGOUT:
        disconnect(user, fail_silently=True)


class SnorkyDjangoConfig(AppConfig):
    """``snorky_django``: registers the system checks, the proxies of subscribable models, and the
    logout receiver."""

    name = "snorky_django"
    verbose_name = "Snorky"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from snorky_django import checks  # noqa: F401 (registers the checks)
        from snorky_django.changes import connect_proxies

        connect_proxies()
        from django.apps import apps

        if apps.is_installed("django.contrib.auth"):
            from django.contrib.auth.signals import user_logged_out

            user_logged_out.connect(_disconnect_on_logout, dispatch_uid="snorky_django.disconnect_on_logout")
