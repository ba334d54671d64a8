"""Several nodes sharing a Redis broker, through the Python API and the ``snorky`` command."""

from __future__ import annotations

import pytest
from redis_server import RedisServer, redis_server
from wsclient import WsClient

from snorky import ConfigurationError
from snorky.backend import SnorkyBackend
from snorky.services import PubSubBackend, PubSubService
from snorky.testing import running_server
from test_cli import free_port, snorky, wait_healthy


@pytest.fixture
def redis() -> RedisServer:
    with redis_server() as server:
        yield server


def pubsub_node(redis: RedisServer, name: str):
    pubsub = PubSubService()
    return running_server([pubsub], [PubSubBackend("pubsub_backend", pubsub)], broker=redis.url, node_name=name)


def test_a_publish_on_one_node_reaches_a_subscriber_on_another(redis):
    with pubsub_node(redis, "one") as one, pubsub_node(redis, "two") as two:
        subscriber = WsClient(one.ws_url)
        assert subscriber.call("pubsub", "subscribe", channel="news")["type"] == "response"
        two.backend().publish("news", {"n": 1})
        browser = WsClient(two.ws_url)
        assert browser.call("pubsub", "publish", channel="news", message={"n": 2})["type"] == "response"
        assert [subscriber.recv()["message"]["message"] for _ in range(2)] == [{"n": 1}, {"n": 2}]
        subscriber.close()
        browser.close()


def test_an_unreachable_broker_fails_at_start_with_its_address():
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    with (
        pytest.raises(ConfigurationError, match=f"cannot reach the broker at redis://127.0.0.1:{port}"),
        running_server([PubSubService()], broker=broker),
    ):
        pass


def test_a_malformed_broker_url_is_a_configuration_error():
    with (
        pytest.raises(ConfigurationError, match="redis\\+cluster://"),
        running_server([PubSubService()], broker="localhost:6379"),
    ):
        pass


def test_the_command_line_joins_the_broker(redis):
    front, back = free_port(), free_port()
    key = "cli-test-key-0123456789"
    process = snorky(
        "serve", "--frontend-address", f"127.0.0.1:{front}", "--backend-address", f"127.0.0.1:{back}",
        "--api-key", key, "--broker", redis.url, "--node-name", "cli",
    )  # fmt: skip
    try:
        wait_healthy(back, process)
        with pubsub_node(redis, "api") as other:
            subscriber = WsClient(f"ws://127.0.0.1:{front}/ws")
            assert subscriber.call("pubsub", "subscribe", channel="c")["type"] == "response"
            other.backend().publish("c", "through redis")
            assert subscriber.recv()["message"]["message"] == "through redis"
            subscriber.close()
        SnorkyBackend(f"http://127.0.0.1:{back}/backend", key).publish("c", "still serving")
    finally:
        process.terminate()
        process.communicate(timeout=30)
