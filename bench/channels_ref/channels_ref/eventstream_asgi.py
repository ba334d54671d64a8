"""The ASGI application daphne serves for the django scenario's django-eventstream set-up: plain
Django (the SSE view streams from an async generator)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "channels_ref.eventstream_settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
