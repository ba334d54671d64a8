"""What browsers may do through `manage.py snorky`'s services: publish to PubSub only where a
setting or policy allows it, register only Messaging names of their own identity; and the settings
that open both again as Snorky 0.1 was."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_tests.conftest import TIMEOUT
from snorky_django import connection_token, publish
from snorky_django.testing import LiveSnorkyServer, live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def serve() -> Iterator[Any]:
    """Starts a live server with SNORKY overrides; stops them all at the end."""
    stack: list[Any] = []

    def start(**snorky: Any) -> LiveSnorkyServer:
        context = live_snorky_server(**snorky)
        stack.append(context)
        return context.__enter__()

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


def error_of(reply: dict[str, Any]) -> str | None:
    return reply["message"] if reply["type"] == "error" else None


def publish_as(ws: Any, channel: Any) -> str | None:
    return error_of(ws.call("pubsub", "publish", channel=channel, message={"hi": 1}))


def test_browsers_publish_nowhere_by_default_django_does(serve, ws_factory):
    live = serve()
    listener, browser = ws_factory(live.ws_url), ws_factory(live.ws_url)
    assert listener.call("pubsub", "subscribe", channel="news")["type"] == "response"
    assert publish_as(browser, "news") == "Not authorized"
    publish("news", {"from": "django"})
    assert listener.recv(TIMEOUT)["message"]["message"] == {"from": "django"}  # the refused one never came


def test_allowed_channels_and_patterns(serve, ws_factory):
    live = serve(PUBSUB_PUBLISH_CHANNELS=["lobby", "room:*"])
    listener, browser = ws_factory(live.ws_url), ws_factory(live.ws_url)
    assert listener.call("pubsub", "subscribe", channel="room:7")["type"] == "response"
    assert publish_as(browser, "room:7") is None
    assert listener.recv(TIMEOUT)["message"]["message"] == {"hi": 1}
    assert publish_as(browser, "lobby") is None
    assert publish_as(browser, "room") == "Not authorized"
    assert publish_as(browser, "news") == "Not authorized"
    assert publish_as(browser, {"room": 7}) == "Not authorized"  # patterns match string channels only


def test_a_star_opens_pubsub_as_in_0_1(serve, ws_factory):
    live = serve(PUBSUB_PUBLISH_CHANNELS=["*"])
    browser = ws_factory(live.ws_url)
    assert publish_as(browser, "anything") is None
    assert publish_as(browser, {"notes": "x"}) is None


def test_a_policy_callable_decides(serve, ws_factory, alice):
    live = serve(PUBSUB_PUBLISH_POLICY="django_tests.policies.identified_only")
    anonymous = ws_factory(live.ws_url)
    identified = ws_factory(f"{live.ws_url}?token={connection_token(alice)}")
    assert publish_as(anonymous, "news") == "Not authorized"
    assert publish_as(identified, "news") is None


def register(ws: Any, name: str) -> str | None:
    return error_of(ws.call("messaging", "registerParticipant", name=name))


def test_messaging_names_belong_to_the_identity(serve, ws_factory, alice, bob):
    live = serve(SERVICES=["messaging"])
    mine = str(alice.pk)
    alice_ws = ws_factory(f"{live.ws_url}?token={connection_token(alice)}")
    anonymous = ws_factory(live.ws_url)
    assert register(alice_ws, str(bob.pk)) == "Name not allowed"  # impersonating bob
    assert register(alice_ws, mine + "0") == "Name not allowed"  # another user's, perhaps
    assert register(alice_ws, "alice") == "Name not allowed"
    assert register(anonymous, str(bob.pk)) == "Name not allowed"
    assert register(anonymous, "guest") == "Name not allowed"
    assert register(alice_ws, mine) is None
    assert register(alice_ws, f"{mine}:phone") is None
    bob_ws = ws_factory(f"{live.ws_url}?token={connection_token(bob)}")
    assert register(bob_ws, str(bob.pk)) is None
    reply = bob_ws.call("messaging", "send", sender=str(bob.pk), dest=mine, body="hi alice")
    assert reply["type"] == "response"
    assert alice_ws.recv(TIMEOUT)["message"] == {
        "type": "message",
        "sender": str(bob.pk),
        "dest": mine,
        "body": "hi alice",
    }


def test_messaging_open_or_by_policy(serve, ws_factory):
    open_live = serve(SERVICES=["messaging"], MESSAGING_NAMES="open")
    assert register(ws_factory(open_live.ws_url), "anyone at all") is None
    policy_live = serve(SERVICES=["messaging"], MESSAGING_NAMES="django_tests.policies.shouting")
    anonymous = ws_factory(policy_live.ws_url)
    assert register(anonymous, "quiet") == "Name not allowed"
    assert register(anonymous, "LOUD") is None


def test_unusable_policy_settings_fail_the_checks_and_the_build():
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured

    from snorky_django.server import build_services

    bad = [
        {"PUBSUB_PUBLISH_CHANNELS": "news"},
        {"PUBSUB_PUBLISH_POLICY": "django_tests.policies.nowhere"},
        {"PUBSUB_PUBLISH_POLICY": "django_tests.policies.__doc__"},
        {"MESSAGING_NAMES": "closed", "SERVICES": ["messaging"]},
    ]
    for snorky in bad:
        with override_settings(SNORKY={"API_KEY": "k" * 32, **snorky}):
            found = [m for m in checks.run_checks(tags=["snorky"]) if m.id == "snorky.E013"]
            assert len(found) == 1, snorky
            with pytest.raises(ImproperlyConfigured):
                build_services()


def test_the_plain_python_api_keeps_0_1_defaults(ws_factory):
    from snorky.services import MessagingService, PubSubService
    from snorky.testing import running_server

    with running_server([PubSubService("pubsub"), MessagingService("messaging")]) as server:
        anonymous = ws_factory(server.ws_url)
        assert publish_as(anonymous, "news") is None
        assert register(anonymous, "anyone at all") is None
