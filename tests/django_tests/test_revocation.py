"""Revocation: logging out closes every live connection of the user (close code 4501, after which
the JS client does not reconnect) and the server refuses the connection tokens issued to them
before; the user's next login gets tokens that work."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from django_tests.conftest import TIMEOUT, client_for, free_port
from snorky_django import disconnect
from snorky_django.testing import live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)


def fresh_token(http: Any) -> str:
    token = http.get("/snorky/connection-token/").json()["token"]
    assert token
    return token  # type: ignore[no-any-return]


def joined(ws: Any) -> Any:
    assert ws.call("chat", "join", channel="room")["type"] == "response"
    return ws


def close_code(ws: Any) -> int | None:
    """The code the server closed ``ws`` with (what it pushed before, presence say, is skipped)."""
    deadline = time.monotonic() + TIMEOUT
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.ws.recv(timeout=max(deadline - time.monotonic(), 0.0))
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


def test_logout_closes_the_users_connections_and_refuses_their_old_tokens(ws_factory, alice, bob):
    with live_snorky_server(SERVICES=["chat"]) as live:
        http = client_for(alice)
        old = fresh_token(http)
        tabs = [joined(ws_factory(f"{live.ws_url}?token={old}")) for _ in range(2)]
        bobs = joined(ws_factory(f"{live.ws_url}?token={fresh_token(client_for(bob))}"))

        http.logout()
        revoked_at = time.time()
        assert [close_code(tab) for tab in tabs] == [4501, 4501]
        assert bobs.call("chat", "read", channel="room")["type"] == "response"  # others stay
        with pytest.raises(InvalidStatus, match="401"):
            ws_factory(f"{live.ws_url}?token={old}")

        # Logged in again: tokens issued after the revocation work (token times are whole
        # seconds, so wait for the next one).
        time.sleep(max(0.0, int(revoked_at) + 1 - time.time()))
        joined(ws_factory(f"{live.ws_url}?token={fresh_token(client_for(alice))}"))


def test_disconnect_can_be_called_directly_and_ignores_anonymous_users(ws_factory, alice):
    from django.contrib.auth.models import AnonymousUser

    with live_snorky_server(SERVICES=["chat"]) as live:
        tab = joined(ws_factory(f"{live.ws_url}?token={fresh_token(client_for(alice))}"))
        disconnect(AnonymousUser())
        disconnect(None)
        assert tab.call("chat", "read", channel="room")["type"] == "response"
        disconnect(alice)  # a deactivated user, a changed password...
        assert close_code(tab) == 4501


def test_logout_can_leave_connections_open(ws_factory, alice):
    with live_snorky_server(SERVICES=["chat"], DISCONNECT_ON_LOGOUT=False) as live:
        http = client_for(alice)
        tab = joined(ws_factory(f"{live.ws_url}?token={fresh_token(http)}"))
        http.logout()
        assert tab.call("chat", "read", channel="room")["type"] == "response"


def test_logout_works_while_snorky_is_down(alice, settings, caplog):
    settings.SNORKY = {**settings.SNORKY, "BACKEND_URL": f"http://127.0.0.1:{free_port()}/backend"}
    http = client_for(alice)
    with caplog.at_level(logging.ERROR, logger="snorky_django"):
        http.logout()
    assert "could not disconnect" in caplog.text
    assert http.get("/snorky/connection-token/").json() == {"token": None}  # logged out all the same
