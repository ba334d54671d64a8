"""Settings of the todo demo: a development setup (DEBUG, SQLite), not one to deploy.

``run.py`` starts ``runserver`` and ``manage.py snorky`` with the same settings; the addresses,
the API key and the database come from the environment so that it (and the browser tests) can
choose ports and a fresh database:

| variable | default | what |
|---|---|---|
| ``SNORKY_FRONTEND_ADDRESS`` | ``127.0.0.1:5001`` | where browsers open the WebSocket |
| ``SNORKY_BACKEND_ADDRESS`` | ``127.0.0.1:5002`` | where Django posts deltas |
| ``SNORKY_API_KEY`` | a fixed demo key | the secret shared by the two processes |
| ``SNORKY_ALLOWED_ORIGINS`` | derived (loopback on ports 8000, 8080, ...) | comma-separated page origins |
| ``SOCKJS_CLIENT_URL`` | sockjs-client 1.6.1 from a CDN | the script pages without WebSocket load |
| ``DEMO_DATABASE`` | ``db.sqlite3`` beside ``manage.py`` | the SQLite file |
| ``DEMO_DATABASE_URL`` | none (SQLite) | ``postgresql://user:password@host:port/name`` instead |
| ``SNORKY_DELIVERY`` | ``direct`` | ``direct``, ``outbox`` or ``logical`` (PostgreSQL) |
| ``SNORKY_BROKER`` | none (one process) | the Redis several ``manage.py snorky`` nodes share |
| ``SNORKY_PUBLIC_URL`` | from the page's host and the frontend address | the pages' WebSocket URL |
| ``SNORKY_BACKEND_URL`` | from ``SNORKY_BACKEND_ADDRESS`` | where Django posts |

With several nodes, the last two are a load balancer's URLs (see the demo's README).
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import django

BASE_DIR = Path(__file__).resolve().parent.parent

# Fixed so that sessions survive a restart of the demo; never reuse it anywhere else.
SECRET_KEY = "todo-demo-not-secret-1dc0b7e2c5a54e5f9f6b8c1d2e3f4a5b"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "snorky_django",
    "todos",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "todo_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",  # {% snorky_client_config %} needs it
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "todo_site.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE") or str(BASE_DIR / "db.sqlite3"),
        # Two browsers write at once: take the write lock at BEGIN (Django 5.1+), so that no
        # transaction fails upgrading a read lock, and wait for it rather than fail.
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20} if django.VERSION >= (5, 1) else {"timeout": 20},
    }
}


def _postgresql(url: str) -> dict[str, object]:
    """The ``DATABASES`` entry of a ``postgresql://user:password@host:port/name`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or not parts.path.strip("/"):
        raise ValueError(f"DEMO_DATABASE_URL={url!r}: expected postgresql://user:password@host:port/name")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.strip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


if os.environ.get("DEMO_DATABASE_URL"):
    DATABASES["default"] = _postgresql(os.environ["DEMO_DATABASE_URL"])

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    return [item.strip() for item in value.split(",") if item.strip()] if value else None


# The sockjs-client script that pages load in browsers without WebSocket (they then use SockJS).
SOCKJS_CLIENT_URL = (
    os.environ.get("SOCKJS_CLIENT_URL") or "https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js"
)

SNORKY = {
    "API_KEY": os.environ.get("SNORKY_API_KEY") or "todo-demo-api-key-not-secret",
    "FRONTEND_ADDRESS": os.environ.get("SNORKY_FRONTEND_ADDRESS") or "127.0.0.1:5001",
    "BACKEND_ADDRESS": os.environ.get("SNORKY_BACKEND_ADDRESS") or "127.0.0.1:5002",
    # None: derived from ALLOWED_HOSTS (in DEBUG, loopback pages on ports 8000, 8080, 3000, 5173).
    "ALLOWED_ORIGINS": _env_list("SNORKY_ALLOWED_ORIGINS"),
    # Several nodes: each `manage.py snorky --frontend-address ... --backend-address ...` connects to
    # this Redis, and pages and Django reach the nodes through a load balancer (see the README).
    "BROKER": os.environ.get("SNORKY_BROKER") or None,
    "PUBLIC_URL": os.environ.get("SNORKY_PUBLIC_URL") or None,
    "BACKEND_URL": os.environ.get("SNORKY_BACKEND_URL") or None,
    # "outbox" or "logical" (PostgreSQL: DEMO_DATABASE_URL) instead of straight from the request.
    "DELIVERY": os.environ.get("SNORKY_DELIVERY") or "direct",
}
