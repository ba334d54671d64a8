"""Settings of the django scenario's Snorky side: the todo demo's app (demos/todo/todos) on
PostgreSQL, DRF, snorky_django, and the bench's baseline model (``benchtodos.PlainTodo``).

The load generator sets the environment: ``BENCH_DB_PORT`` / ``BENCH_DB_NAME`` (the PostgreSQL
cluster it created), ``SNORKY_BENCH_KEY``, ``BENCH_SNORKY_FRONTEND`` / ``BENCH_SNORKY_BACKEND``
(the addresses of ``manage.py snorky``) and ``BENCH_DELIVERY`` (``direct``, ``outbox`` or
``logical``). ``BENCH_DIRECT_SEND`` (``background``, the default, or ``inline``), set by whoever
runs the bench, chooses how direct delivery sends.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# The todo demo's app (its models, serializer and dealers) is imported as it is.
sys.path.insert(0, str(REPO / "demos" / "todo"))

SECRET_KEY = "snorky-bench-django-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "snorky_django",
    "todos",
    "benchtodos",
    "benchlight",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "bench_site.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("BENCH_DB_NAME", "snorky"),
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("BENCH_DB_PORT", "5432"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}
SNORKY = {
    "API_KEY": os.environ.get("SNORKY_BENCH_KEY", "snorky-bench-key"),
    "FRONTEND_ADDRESS": os.environ.get("BENCH_SNORKY_FRONTEND", "127.0.0.1:5001"),
    "BACKEND_ADDRESS": os.environ.get("BENCH_SNORKY_BACKEND", "127.0.0.1:5002"),
    "DELIVERY": os.environ.get("BENCH_DELIVERY", "direct"),
    "DIRECT_SEND": os.environ.get("BENCH_DIRECT_SEND", "background"),
    # The load generator connects without an Origin header (not a browser).
    "ALLOWED_ORIGINS": ["http://127.0.0.1"],
    # Setting up 1,000 clients takes a while: tokens must outlive it.
    "CONNECTION_TOKEN_TTL": 3600,
    "SUBSCRIPTION_TIMEOUT": 600.0,
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
