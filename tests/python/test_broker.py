"""Several nodes sharing a Redis broker, through the Python API and the ``snorky`` command."""

from __future__ import annotations

from typing import Any

import pytest
from redis_server import RedisServer, redis_server
from wsclient import WsClient

from snorky import ConfigurationError
from snorky.backend import SnorkyBackend, SnorkyError
from snorky.dealers import BroadcastDealer, SimpleDealer
from snorky.services import DataSyncBackend, DataSyncService, PubSubBackend, PubSubService
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
    # A URL Redis's client cannot read is said to be invalid, not unreachable.
    with (
        pytest.raises(ConfigurationError, match=r"the broker URL redis://127\.0\.0\.1:notaport/0 is not valid"),
        running_server([PubSubService()], broker="redis://127.0.0.1:notaport/0"),
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


# ---------------------------------------------------------------------------------------------
# DataSync across nodes: dealers declared in Python (one computing keys in Python) on each node


class AllTasks(BroadcastDealer):
    model = "Task"


class TasksByTeam(SimpleDealer):
    """Keys computed by Python code, which runs on the node that routes the delta."""

    model = "Task"

    def get_key_for_model(self, data: Any) -> Any:
        return data["team"].lower()


def datasync_node(redis: RedisServer, name: str):
    datasync = DataSyncService("datasync", [AllTasks, TasksByTeam])
    return running_server([datasync], [DataSyncBackend("datasync_backend", datasync)], broker=redis.url, node_name=name)


def task(n: int, team: str = "Red") -> dict[str, Any]:
    return {"type": "insert", "model": "Task", "data": {"id": n, "team": team}}


def test_a_subscription_authorized_on_one_node_is_acquired_on_another_with_python_keys(redis):
    with datasync_node(redis, "one") as one, datasync_node(redis, "two") as two:
        backend = one.backend()
        everything = backend.authorize_subscription([{"dealer": "AllTasks", "query": None}])
        red = backend.authorize_subscription([{"dealer": "TasksByTeam", "query": "red"}])
        backend.publish_deltas([task(1), task(2, "Blue")])
        browser = WsClient(two.ws_url)
        reply = browser.call("datasync", "acquireSubscription", token=everything, offsets=True)
        assert reply["type"] == "response" and "-" in reply["data"]["offset"], reply
        reader = WsClient(two.ws_url)
        assert reader.call("datasync", "acquireSubscription", token=red)["type"] == "response"
        # The same batch through both nodes with its idempotency key: delivered once.
        two.backend().publish_deltas([task(3), task(4, "Blue"), task(5, "RED")], key="batch-3-5")
        one.backend().publish_deltas([task(3), task(4, "Blue"), task(5, "RED")], key="batch-3-5")
        assert [reader.recv()["message"]["delta"]["data"]["id"] for _ in range(3)] == [1, 3, 5]
        messages = [browser.recv()["message"] for _ in range(5)]
        assert [message["delta"]["data"]["id"] for message in messages] == [1, 2, 3, 4, 5], "once each, in order"
        assert {message["subscription"] for message in messages} == {everything}
        for client in (browser, reader):
            assert client.call("datasync", "noSuchCommand")["message"] == "Unknown command"
            with pytest.raises(TimeoutError):
                client.recv(timeout=0.2)
            client.close()


def test_a_backend_call_that_cannot_reach_redis_is_an_error_not_a_silent_drop(redis):
    with datasync_node(redis, "one") as one:
        backend = one.backend()
        backend.authorize_subscription([{"dealer": "AllTasks", "query": None}])
        redis.stop()
        with pytest.raises(SnorkyError, match=r"HTTP 503\): Service unavailable"):
            backend.publish_deltas([task(1)])
        with pytest.raises(SnorkyError, match=r"HTTP 503\): Service unavailable"):
            backend.authorize_subscription([{"dealer": "AllTasks", "query": None}])


def test_a_subscription_resumes_on_another_node_after_its_node_stopped(redis):
    with datasync_node(redis, "two") as two:
        backend = two.backend()
        token = backend.authorize_subscription([{"dealer": "AllTasks", "query": None}])
        with datasync_node(redis, "one") as one:
            browser = WsClient(one.ws_url)
            assert browser.call("datasync", "acquireSubscription", token=token)["type"] == "response"
            backend.publish_deltas([task(1), task(2)])
            assert [browser.recv()["message"]["delta"]["data"]["id"] for _ in range(2)] == [1, 2]
        # Node one stopped (its clients got 1001) after giving the subscription back to Redis,
        # after the last delta it wrote: a 0.1 client, which sends no offset, resumes elsewhere.
        backend.publish_deltas([task(3)])
        again = WsClient(two.ws_url)
        assert again.call("datasync", "acquireSubscription", token=token)["type"] == "response"
        assert again.recv()["message"]["delta"]["data"]["id"] == 3
        assert again.call("datasync", "noSuchCommand")["message"] == "Unknown command"
        with pytest.raises(TimeoutError):
            again.recv(timeout=0.2)
        browser.close()
        again.close()
