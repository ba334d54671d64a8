"""PubSub through the Python API: deliveries, the publish policy hook, in-process publishing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from wsclient import WsClient

from snorky.services import Client, PubSubBackend, PubSubService
from snorky.testing import running_server


def test_backend_publish_reaches_every_subscriber(pubsub_server, client_factory):
    alice, bob, carol = client_factory(), client_factory(), client_factory()
    for client in (alice, bob):
        assert client.call("pubsub", "subscribe", channel="news") == {"type": "response", "callId": 1, "data": None}
    pubsub_server.backend().publish("news", {"title": "hello"})
    expected = {"service": "pubsub", "message": {"type": "message", "channel": "news", "message": {"title": "hello"}}}
    assert alice.recv() == expected
    assert bob.recv() == expected
    with pytest.raises(TimeoutError):
        carol.recv(timeout=0.3)


def test_browser_publish_reaches_the_publisher_too(client_factory):
    client = client_factory()
    client.call("pubsub", "subscribe", channel={"room": 1})
    reply = client.call("pubsub", "publish", channel={"room": 1.0}, message=None)
    assert reply["type"] == "response"
    assert client.recv()["message"] == {"type": "message", "channel": {"room": 1.0}, "message": None}


class OnlyOwnChannel(PubSubService):
    """Refuses publishes except to the channel named after the client's port (to see the client)."""

    def __init__(self) -> None:
        super().__init__("pubsub")
        self.seen: list[Client] = []

    def can_publish(self, client: Client, channel: Any) -> bool:
        self.seen.append(client)
        if channel == "boom":
            raise RuntimeError("hook bug")
        if channel == "slow":
            time.sleep(1.0)
        return channel != "forbidden"


def test_can_publish_override_refuses_with_not_authorized():
    service = OnlyOwnChannel()
    with running_server([service]) as server:
        client = WsClient(server.ws_url)
        client.call("pubsub", "subscribe", channel="forbidden")
        reply = client.call("pubsub", "publish", channel="forbidden", message="x")
        assert reply == {"type": "error", "callId": 2, "message": "Not authorized"}
        assert client.call("pubsub", "publish", channel="open", message="x")["type"] == "response"
        seen = service.seen[0]
        assert seen.identity is None
        assert seen.remote_address == "127.0.0.1"
        assert isinstance(seen.id, int) and seen == service.seen[1]
        client.close()


def test_a_failing_hook_is_internal_error_and_logged(caplog):
    with running_server([OnlyOwnChannel()]) as server:
        client = WsClient(server.ws_url)
        reply = client.call("pubsub", "publish", channel="boom", message="x")
        assert reply["message"] == "Internal error"
        client.close()
    assert any("hook bug" in record.getMessage() for record in caplog.records)


def test_a_slow_hook_does_not_stall_other_connections():
    service = OnlyOwnChannel()
    backend = PubSubBackend("pubsub_backend", service)
    with running_server([service], [backend]) as server:
        slow, other = WsClient(server.ws_url), WsClient(server.ws_url)
        other.call("pubsub", "subscribe", channel="live")
        done = threading.Event()

        def publish_slowly() -> None:
            slow.call("pubsub", "publish", channel="slow", message=1)
            done.set()

        thread = threading.Thread(target=publish_slowly)
        thread.start()
        started = time.monotonic()
        server.backend().publish("live", "still flowing")
        assert other.recv()["message"]["message"] == "still flowing"
        assert time.monotonic() - started < 0.9, "delivery waited for the slow hook"
        assert not done.is_set()
        thread.join(timeout=5)
        assert done.is_set()
        slow.close()
        other.close()


def test_in_process_publish_counts_subscribers(client_factory, pubsub_server):
    # The fixture's service is reachable through the backend; publish in-process on a new one.
    service = PubSubService()
    with running_server([service]) as server:
        client = WsClient(server.ws_url)
        client.call("pubsub", "subscribe", channel="c")
        assert service.publish("c", [1, 2]) == 1
        assert client.recv()["message"]["message"] == [1, 2]
        assert service.publish("nobody", 1) == 0
        client.close()
