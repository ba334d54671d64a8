"""settings.SNORKY: defaults, derived values, caching and reloading."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import RequestFactory, override_settings

from snorky_django.conf import DEFAULTS, derive_allowed_origins, snorky_settings, split_address, valid_backend_url


def test_defaults_and_derived_values():
    assert snorky_settings.FRONTEND_ADDRESS == "0.0.0.0:5001"
    assert snorky_settings.BACKEND_URL == "http://127.0.0.1:5002/backend"
    assert snorky_settings.DELIVERY == "direct"
    assert snorky_settings.SERVICES == ["pubsub", "datasync"]
    assert len(snorky_settings.TOKEN_SECRET) == 64
    assert settings.SECRET_KEY not in snorky_settings.TOKEN_SECRET  # an HMAC of it, not the key itself
    with pytest.raises(AttributeError, match="unknown Snorky setting"):
        snorky_settings.NOPE  # noqa: B018


def test_values_follow_settings_changes():
    before = snorky_settings.TOKEN_SECRET
    with override_settings(SECRET_KEY="another-secret-key-for-this-test-0123456789"):
        assert before != snorky_settings.TOKEN_SECRET
    assert before == snorky_settings.TOKEN_SECRET
    with override_settings(SNORKY={"API_KEY": "k", "BACKEND_ADDRESS": "0.0.0.0:7000", "TOKEN_SECRET": "s" * 20}):
        assert snorky_settings.BACKEND_URL == "http://127.0.0.1:7000/backend"
        assert snorky_settings.TOKEN_SECRET == "s" * 20
        assert snorky_settings.is_set("TOKEN_SECRET") and not snorky_settings.is_set("BACKEND_URL")
    assert snorky_settings.BACKEND_URL == "http://127.0.0.1:5002/backend"


def test_allowed_origins_from_django_settings():
    with override_settings(
        ALLOWED_HOSTS=["app.example.com", ".example.org"],
        CSRF_TRUSTED_ORIGINS=["https://admin.example.com", "https://*.example.net"],
    ):
        assert snorky_settings.ALLOWED_ORIGINS == [
            "https://app.example.com",
            "http://app.example.com",
            "https://example.org",
            "http://example.org",
            "https://admin.example.com",
        ]
    with override_settings(SNORKY={"ALLOWED_ORIGINS": ["https://only.example.com"]}):
        assert snorky_settings.ALLOWED_ORIGINS == ["https://only.example.com"]
    assert derive_allowed_origins(["*"], [], debug=False) == ["*"]
    debug = derive_allowed_origins([], [], debug=True)
    assert "http://localhost:8000" in debug and "http://127.0.0.1:5173" in debug and "http://[::1]" in debug
    assert "http://localhost:8000" not in derive_allowed_origins(["localhost"], [], debug=False)


@override_settings(ALLOWED_HOSTS=["*"])
def test_public_url():
    request = RequestFactory().get("/", HTTP_HOST="app.example.com:8000")
    assert snorky_settings.public_url(request) == "ws://app.example.com:5001/ws"
    assert snorky_settings.public_url() == "ws://localhost:5001/ws"
    secure = RequestFactory().get("/", HTTP_HOST="app.example.com", secure=True)
    with override_settings(SNORKY={"PUBLIC_URL": "/snorky/ws"}):
        assert snorky_settings.public_url(secure) == "wss://app.example.com/snorky/ws"
    with override_settings(SNORKY={"PUBLIC_URL": "wss://live.example.com/ws"}):
        assert snorky_settings.public_url(request) == "wss://live.example.com/ws"
    ipv6 = RequestFactory().get("/", HTTP_HOST="[::1]:8000")
    assert snorky_settings.public_url(ipv6) == "ws://[::1]:5001/ws"


def test_helpers():
    assert split_address("[::1]:5001") == ("[::1]", 5001)
    for bad in ("5001", "host:", "host:99999", "host:port"):
        with pytest.raises(ValueError):
            split_address(bad)
    assert valid_backend_url("https://snorky.internal:5002/backend")
    assert (
        not valid_backend_url("127.0.0.1:5002") and not valid_backend_url("http://:80/") and not valid_backend_url(None)
    )
    assert not valid_backend_url("http://host:notaport/backend")
    assert set(DEFAULTS) >= {"API_KEY", "TOKEN_SECRET", "ALLOWED_ORIGINS", "DELIVERY", "DATASYNC_OPTIONS"}
