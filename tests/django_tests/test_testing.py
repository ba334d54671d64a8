"""snorky_django.testing: the live-server test case and the pytest fixture, as users would use them."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from django.contrib.auth import get_user_model

from django_tests.conftest import WsClient
from django_tests.testapp.models import Task
from snorky_django import authorize_subscription, publish
from snorky_django.conf import snorky_settings
from snorky_django.testing import SnorkyLiveServerTestCase


class LiveServerCase(SnorkyLiveServerTestCase):
    snorky_overrides: ClassVar[dict[str, Any]] = {"SUBSCRIPTION_TIMEOUT": 30}

    def test_django_talks_to_the_live_server(self):
        self.assertEqual(snorky_settings.BACKEND_URL, self.snorky.backend_url)
        self.assertEqual(snorky_settings.SUBSCRIPTION_TIMEOUT, 30)
        user = get_user_model().objects.create_user("dave")
        token = authorize_subscription([{"dealer": "TasksByOwner", "query": user.pk}])
        client = WsClient(self.snorky.ws_url)
        try:
            client.acquire(token)
            Task.objects.create(title="from a TestCase", owner=user)
            self.assertEqual(client.delta()["data"]["title"], "from a TestCase")
        finally:
            client.close()


@pytest.mark.django_db(transaction=True)
def test_the_pytest_fixture(snorky_server, ws_factory):
    ws = ws_factory(snorky_server.ws_url)
    assert ws.call("pubsub", "subscribe", channel="c")["type"] == "response"
    publish("c", [1, 2])
    assert ws.recv()["message"]["message"] == [1, 2]
    assert snorky_server.relay is None


def test_settings_are_restored_after_the_server_stops():
    assert snorky_settings.BACKEND_URL == "http://127.0.0.1:5002/backend"
