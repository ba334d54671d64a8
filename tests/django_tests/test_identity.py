"""A subscription authorized for a logged-in user's request belongs to that user: only connections
carrying their connection token may acquire it, or resume it after a reconnection."""

from __future__ import annotations

from typing import Any

import pytest

from django_tests.conftest import client_for, subscribe, wait_until
from django_tests.testapp.models import Task
from snorky_django import authorize_subscription

pytestmark = pytest.mark.django_db(transaction=True)


def connect(live: Any, ws_factory: Any, user: Any = None) -> Any:
    return ws_factory(live.ws_url, user=user)


def acquire(ws: Any, token: str) -> str | None:
    reply = ws.call("datasync", "acquireSubscription", token=token)
    return reply["message"] if reply["type"] == "error" else None


def test_a_subscription_authorized_for_a_user_is_theirs_alone(live, ws_factory, alice, bob):
    _, token = subscribe(client_for(alice), "/api/tasks/")
    assert acquire(connect(live, ws_factory), token) == "No such subscription"  # anonymous
    assert acquire(connect(live, ws_factory, bob), token) == "No such subscription"
    mine = connect(live, ws_factory, alice)
    assert acquire(mine, token) is None  # the refusals took nothing away from her
    Task.objects.create(title="private", owner=alice)
    assert mine.delta()["data"]["title"] == "private"


def test_a_resumed_subscription_stays_with_its_user(live, ws_factory, alice):
    # The review's case: alice's tab closes, her subscription waits (buffering her deltas) to be
    # resumed; an anonymous connection holding the token must not get them. Alice's next tab does.
    _, token = subscribe(client_for(alice), "/api/tasks/")
    tab = connect(live, ws_factory, alice)
    assert acquire(tab, token) is None
    tab.close()
    datasync = live.server.services.frontend[1]
    wait_until(lambda: datasync.waiting_count == 1, message="the subscription waiting to be resumed")
    Task.objects.create(title="one", owner=alice)
    Task.objects.create(title="two", owner=alice)
    stranger = connect(live, ws_factory)
    assert acquire(stranger, token) == "No such subscription"
    stranger.assert_silent()
    again = connect(live, ws_factory, alice)
    assert acquire(again, token) is None
    assert [d["data"]["title"] for d in again.deltas(2)] == ["one", "two"]


def test_an_anonymous_requests_subscription_is_anyones(live, ws_factory, alice):
    token = authorize_subscription([{"dealer": "TasksByOwner", "query": alice.pk}])  # no user
    anonymous = connect(live, ws_factory)
    assert acquire(anonymous, token) is None
    Task.objects.create(title="shared", owner=alice)
    assert anonymous.delta()["data"]["title"] == "shared"
