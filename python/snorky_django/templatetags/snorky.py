"""Template tags: ``{% load snorky %}``.

``{% snorky_client_config %}`` renders what the JS client needs to connect, as JSON in a
``<script type="application/json" id="snorky-config">`` element (escaped like ``json_script``, so
no value can close the script element)::

    {"url": "wss://example.com/snorky/ws", "token": "<connection token, or null>",
     "tokenUrl": "/snorky/connection-token/"}

``tokenUrl`` is where the page gets a fresh connection token for each reconnection (the view of
``snorky_django.urls``, ``null`` when they are not included): tokens are short-lived.

Read it with ``JSON.parse(document.getElementById("snorky-config").textContent)``. The token is
the current user's (``request.user``), and the URL is built from the request's host unless
``PUBLIC_URL`` is absolute: both need the ``request`` context processor (without a request the tag
logs a warning, and ``manage.py check`` warns: ``snorky.W007``). Pass an element id as the argument
to render several: ``{% snorky_client_config "live-config" %}``.
"""

from __future__ import annotations

import logging
from typing import Any

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils.html import json_script
from django.utils.safestring import SafeString

from snorky_django import connection_token
from snorky_django.conf import snorky_settings

register = template.Library()

logger = logging.getLogger("snorky_django")


@register.simple_tag(takes_context=True)
def snorky_client_config(context: template.Context, element_id: str = "snorky-config") -> SafeString:
    """The public WebSocket URL and the user's connection token, as a JSON script element."""
    request = context.get("request")
    if request is None and not snorky_settings.public_url_is_absolute():
        logger.warning(
            "{%% snorky_client_config %%} has no request in its context: the page is told %s, built "
            "from 'localhost'. Add 'django.template.context_processors.request' to the templates' "
            'context_processors (and render with the request), or set SNORKY["PUBLIC_URL"] to an absolute URL.',
            snorky_settings.public_url(None),
        )
    user = getattr(request, "user", None) or context.get("user")
    config: dict[str, Any] = {
        "url": snorky_settings.public_url(request),
        "token": connection_token(user),
        "tokenUrl": _token_url(),
    }
    return json_script(config, element_id)


def _token_url() -> str | None:
    try:
        return reverse("snorky:connection-token")
    except NoReverseMatch:
        return None
