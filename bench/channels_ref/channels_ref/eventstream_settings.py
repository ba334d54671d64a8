"""Settings of the django scenario's django-eventstream set-up: the Channels set-up's settings
(``todo_settings``: the same model, database and sessions) with django-eventstream in place of
Channels, its Redis support (``EVENTSTREAM_REDIS``) between the writer processes and the server
processes, the session and authentication middleware its view needs for ``request.user``, and
``eventstream_live``'s receivers and channel manager, served by daphne (``eventstream_asgi``).

The load generator sets ``BENCH_DB_PORT`` / ``BENCH_DB_NAME`` and ``BENCH_REDIS_URL``.
"""

import os
from urllib.parse import urlsplit

from .todo_settings import *  # noqa: F403
from .todo_settings import INSTALLED_APPS as CHANNELS_APPS

INSTALLED_APPS = [
    *(app for app in CHANNELS_APPS if app not in ("channels", "channels_ref.todo_live.TodoLiveConfig")),
    "django_eventstream",
    "channels_ref.eventstream_live.EventstreamLiveConfig",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "channels_ref.eventstream_urls"
ASGI_APPLICATION = "channels_ref.eventstream_asgi.application"
DATABASES["default"]["NAME"] = os.environ.get("BENCH_DB_NAME", "eventstream")  # noqa: F405
CHANNEL_LAYERS: dict = {}

_redis = urlsplit(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
EVENTSTREAM_REDIS = {"host": _redis.hostname, "port": _redis.port or 6379, "db": int(_redis.path.strip("/") or 0)}
EVENTSTREAM_CHANNELMANAGER_CLASS = "channels_ref.eventstream_live.TodoChannels"
