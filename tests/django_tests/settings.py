"""Settings of the Django test project (pytest-django: DJANGO_SETTINGS_MODULE=django_tests.settings).

The database is SQLite unless SNORKY_TEST_DB=postgres, in which case conftest.py starts a
PostgreSQL server for the run and fills in its port. A `manage.py snorky` subprocess started by a
test gets the test database's name (and port) through SNORKY_TEST_DB_NAME / SNORKY_TEST_DB_PORT.
"""

import os
import tempfile
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "django-tests-not-secret-0123456789abcdef0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "snorky_django",
    "django_tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "django_tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if os.environ.get("SNORKY_TEST_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("SNORKY_TEST_DB_NAME", "snorky"),
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("SNORKY_TEST_DB_PORT", "5432"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get(
                "SNORKY_TEST_DB_NAME", str(Path(tempfile.gettempdir()) / "snorky-django-dev.sqlite3")
            ),
            # Threads and processes write concurrently (the outbox relay): take the write lock at
            # BEGIN, so no transaction fails upgrading a read lock.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20}
            if django.VERSION >= (5, 1)
            else {"timeout": 20},
            # A file, not memory: the `manage.py snorky` subprocess of the command tests shares it.
            "TEST": {"NAME": str(Path(tempfile.gettempdir()) / f"snorky-django-tests-{os.getpid()}.sqlite3")},
        }
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

SNORKY = {
    "API_KEY": os.environ.get("SNORKY_TEST_API_KEY", "django-tests-api-key"),
    "DELIVERY": os.environ.get("SNORKY_TEST_DELIVERY", "direct"),
}
