"""Settings of the django scenario's Channels set-up: the todo model (``benchtodos.PlainTodo``, the
demo's fields) on the same PostgreSQL cluster as the Snorky side, sessions, the Redis channel layer
(``channels_redis``), and ``todo_live``'s receivers, served by uvicorn (``todo_asgi``).

The load generator sets ``BENCH_DB_PORT`` / ``BENCH_DB_NAME`` and ``BENCH_REDIS_URL``.
"""

import os
import sys
from pathlib import Path

# benchtodos (bench/django) holds the model both sides share.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "django"))

SECRET_KEY = "snorky-bench-channels-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "channels",
    "benchtodos",
    "channels_ref.todo_live.TodoLiveConfig",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "channels_ref.urls"
ASGI_APPLICATION = "channels_ref.todo_asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("BENCH_DB_NAME", "channels"),
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("BENCH_DB_PORT", "5432"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
# As the Channels documentation sets it up for production: Redis between the processes.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")]},
    }
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
