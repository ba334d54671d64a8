"""The view pages ask for a fresh connection token, so that a short-lived token serves a page that
stays open for days: the JS client calls its ``token`` function before every connection attempt.

Include the URLs once (``path("snorky/", include("snorky_django.urls"))``); then
``{% snorky_client_config %}`` renders the view's URL as ``tokenUrl``.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from snorky_django import connection_token as make_token

__all__ = ["connection_token"]


@never_cache
@require_GET
def connection_token(request: HttpRequest) -> JsonResponse:
    """``{"token": "<a fresh connection token>"}`` for the logged-in user, ``{"token": null}`` for
    an anonymous one (an anonymous connection needs none). Never cached."""
    return JsonResponse({"token": make_token(getattr(request, "user", None))})
