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
# (capacity 100 messages per consumer channel); with SNORKY_BENCH_REDIS set (the benchmark's
# several-nodes scenario), channels_redis's pub/sub layer on that Redis, so that several daphne
# processes share groups the way several Snorky nodes share channels.
_REDIS = os.environ.get("SNORKY_BENCH_REDIS", "")
if _REDIS:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [_REDIS]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
SNORKY_BENCH_KEY = os.environ.get("SNORKY_BENCH_KEY", "snorky-bench-key")
