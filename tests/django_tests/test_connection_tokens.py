"""Connection tokens for Django users: short-lived, and renewed for long-lived pages by the view of
snorky_django.urls, which the template tag points the page at."""

from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any

import pytest
from django.template.loader import render_to_string
from django.test import Client, RequestFactory, override_settings

from django_tests.conftest import client_for
from snorky_django import connection_token, identity_of
from snorky_django.testing import live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def test_tokens_live_two_minutes_by_default(alice, settings):
    token = connection_token(alice)
    assert token is not None
    found = claims(token)
    assert found["sub"] == identity_of(alice) == str(alice.pk)
    assert found["exp"] - found["iat"] == 120
    settings.SNORKY = {**settings.SNORKY, "CONNECTION_TOKEN_TTL": 30}
    found = claims(connection_token(alice) or "")
    assert found["exp"] - found["iat"] == 30


def test_the_view_hands_a_fresh_token_to_the_logged_in_user(ws_factory, alice):
    with live_snorky_server(SERVICES=["chat"]) as live:
        response = client_for(alice).get("/snorky/connection-token/")
        assert response.status_code == 200
        assert "no-store" in response["Cache-Control"]
        token = response.json()["token"]
        assert claims(token)["sub"] == str(alice.pk)
        ws = ws_factory(f"{live.ws_url}?token={token}")
        assert ws.call("chat", "join", channel="room")["data"] == {"members": [str(alice.pk)]}


def test_the_view_for_anonymous_users_and_other_methods():
    assert Client().get("/snorky/connection-token/").json() == {"token": None}
    assert Client().post("/snorky/connection-token/").status_code == 405


def page_config(client: Client) -> dict[str, Any]:
    page = client.get("/page/").content.decode()
    found = re.search(r'<script id="snorky-config" type="application/json">(.*?)</script>', page)
    assert found is not None
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def test_the_template_tag_names_the_view_when_its_urls_are_included(alice):
    assert page_config(client_for(alice))["tokenUrl"] == "/snorky/connection-token/"
    with override_settings(ROOT_URLCONF="django_tests.page_urls"):
        assert page_config(client_for(alice))["tokenUrl"] is None


def rendered_config(**kwargs: Any) -> dict[str, Any]:
    page = render_to_string("page.html", **kwargs)
    found = re.search(r'<script id="snorky-config" type="application/json">(.*?)</script>', page)
    assert found is not None
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def test_the_template_tag_without_a_request_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="snorky_django"):
        assert rendered_config()["url"] == "ws://localhost:5001/ws"
    [record] = caplog.records
    assert "has no request" in record.getMessage() and "ws://localhost:5001/ws" in record.getMessage()
    assert "django.template.context_processors.request" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="snorky_django"):
        request = RequestFactory().get("/", HTTP_HOST="localhost:8000")
        assert rendered_config(request=request)["url"] == "ws://localhost:5001/ws"
        with override_settings(SNORKY={"PUBLIC_URL": "wss://live.example.com/ws"}):
            assert rendered_config()["url"] == "wss://live.example.com/ws"  # needs no request
    assert caplog.records == []
