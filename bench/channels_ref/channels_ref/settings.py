"""Settings of the Django Channels reference server (benchmark only: loopback, no database)."""

import os

SECRET_KEY = "snorky-bench-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "channels_ref.urls"
ASGI_APPLICATION = "channels_ref.asgi.application"
DATABASES: dict = {}
USE_TZ = True
# The default in-memory layer, as a Django user starting with Channels would have it
# (capacity 100 messages per consumer channel).
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
SNORKY_BENCH_KEY = os.environ.get("SNORKY_BENCH_KEY", "snorky-bench-key")
