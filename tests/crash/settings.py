"""The todo demo's settings on the crash tests' PostgreSQL server, with outbox delivery.

Everything else is the demo's (``demos/todo/todo_site/settings.py``): its model, dealers, views and
API. The harness passes the database port, the two listening addresses, the resume timeout (and,
with several nodes, their ``node_timeout``) through the environment, so that every process it
starts (``manage.py snorky``, the relay, the writers) reads the same values.
"""

import os

from todo_site.settings import *  # noqa: F403
from todo_site.settings import ALLOWED_HOSTS, SNORKY

DEBUG = False
# The harness's HTTP requests go through Django's test client, whose host is "testserver".
ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "todo",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("CRASH_DB_PORT", "5432"),
        # A refused connection fails the request at once rather than hanging while the server is
        # down.
        "OPTIONS": {"connect_timeout": 2},
    }
}
SNORKY = {
    **SNORKY,
    "API_KEY": "crash-tests-api-key",
    "DELIVERY": "outbox",
    "FRONTEND_ADDRESS": os.environ.get("CRASH_FRONTEND_ADDRESS", "127.0.0.1:5001"),
    "BACKEND_ADDRESS": os.environ.get("CRASH_BACKEND_ADDRESS", "127.0.0.1:5002"),
    "RESUME_TIMEOUT": float(os.environ.get("CRASH_RESUME_TIMEOUT", "60")),
    # Clients here are programs, without an Origin header.
    "ALLOWED_ORIGINS": [],
    # The connection tokens clients reconnect with stay valid for the longest run.
    "CONNECTION_TOKEN_TTL": 3600,
    "OUTBOX_MAX_RETRY_DELAY": 1.0,
    # Several nodes (``--broker``): a killed node's subscriptions are handed over this soon.
    "SERVER_OPTIONS": (
        {"node_timeout": float(os.environ["CRASH_NODE_TIMEOUT"])} if os.environ.get("CRASH_NODE_TIMEOUT") else {}
    ),
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        # CRASH_SERVER_LOG=DEBUG shows connections opening and closing and subscriptions dropped.
        "snorky": {"handlers": ["stderr"], "level": os.environ.get("CRASH_SERVER_LOG", "WARNING")},
        "snorky_django": {"handlers": ["stderr"], "level": "WARNING"},
    },
}
