"""Dealers declared in Python: names, models, keys and configuration errors, and how their
subscription items match deltas over a real server."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from wsclient import WsClient

from snorky import ConfigurationError
from snorky.dealers import BroadcastDealer, Dealer, FilterDealer, SimpleDealer
from snorky.services import DataSyncBackend, DataSyncService
from snorky.testing import running_server


class AllTasks(BroadcastDealer):
    model = "Task"


class TasksByOwner(SimpleDealer):
    model = "Task"
    key = "owner.id"


class TasksByTeam(SimpleDealer):
    model = "Task"

    def get_key_for_model(self, data: Any) -> Any:
        return data["team"]["slug"].lower()


class FilteredTasks(FilterDealer):
    model = "Task"


def test_name_defaults_to_the_class_name():
    assert AllTasks.name == "AllTasks"
    assert AllTasks().name == "AllTasks"

    class Renamed(BroadcastDealer):
        name = "everything"
        model = "Task"

    class SubRenamed(Renamed):
        pass

    assert Renamed().name == "everything"
    assert SubRenamed().name == "SubRenamed", "each class defaults to its own name"
    assert BroadcastDealer(name="x", model="Task").name == "x"
    assert AllTasks(name="other").spec() == {"name": "other", "model": "Task", "kind": "broadcast"}


def test_specs():
    assert TasksByOwner().spec() == {"name": "TasksByOwner", "model": "Task", "kind": "simple", "key": "owner.id"}
    spec = TasksByTeam().spec()
    assert spec["kind"] == "simple" and "key" not in spec
    assert spec["key_function"]({"team": {"slug": "Core"}}) == "core"
    assert FilteredTasks().spec() == {"name": "FilteredTasks", "model": "Task", "kind": "filter"}
    assert SimpleDealer(model="Task", key="a.b").get_key_for_model({"a": {"b": 3}}) == 3
    with pytest.raises(KeyError):
        SimpleDealer(model="Task", key="a.b").get_key_for_model({"a": 1})


def test_model_is_required():
    class NoModel(BroadcastDealer):
        pass

    with pytest.raises(ConfigurationError, match="dealer 'NoModel' has no model"):
        DataSyncService("datasync", [NoModel])
    with pytest.raises(ConfigurationError, match="model must be a string"):
        BroadcastDealer(model=3)  # type: ignore[arg-type]


def test_simple_dealers_need_a_key():
    class Keyless(SimpleDealer):
        model = "Task"

    with pytest.raises(ConfigurationError, match="has no key"):
        DataSyncService("datasync", [Keyless])
    with pytest.raises(ConfigurationError, match="has no key"):
        SimpleDealer(model="Task", key="")


def test_service_configuration_errors():
    with pytest.raises(ConfigurationError, match="AllTasks"):
        DataSyncService("datasync", [AllTasks, AllTasks])
    with pytest.raises(ConfigurationError, match="not a dealer"):
        DataSyncService("datasync", [object()])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="not a dealer kind"):
        Dealer(model="Task")
    with pytest.raises(ConfigurationError, match="subscription_timeout"):
        DataSyncService("datasync", [AllTasks], subscription_timeout=-1)
    with pytest.raises(ConfigurationError, match="resume_timeout"):
        DataSyncService("datasync", [AllTasks], resume_timeout=float("nan"))
    service = DataSyncService("datasync", [AllTasks, TasksByOwner()], subscription_timeout=0.5, retention=3)
    assert [dealer.name for dealer in service.dealers] == ["AllTasks", "TasksByOwner"]
    assert repr(service) == "DataSyncService('datasync', ['AllTasks', 'TasksByOwner'])"


def test_core_spec_errors_name_the_problem():
    from snorky import _core

    with pytest.raises(ConfigurationError, match="unknown kind"):
        _core.DataSyncService("d", [{"name": "x", "model": "T", "kind": "magic"}])
    with pytest.raises(ConfigurationError, match='unknown key "extra"'):
        _core.DataSyncService("d", [{"name": "x", "model": "T", "kind": "filter", "extra": 1}])
    with pytest.raises(ConfigurationError, match="only Simple dealers have a key"):
        _core.DataSyncService("d", [{"name": "x", "model": "T", "kind": "filter", "key": "a"}])
    with pytest.raises(ConfigurationError, match="must be a dict"):
        _core.DataSyncService("d", ["x"])
    with pytest.raises(ConfigurationError, match="key_function must be callable"):
        _core.DataSyncService("d", [{"name": "x", "model": "T", "kind": "simple", "key_function": 3}])


class Exploding(SimpleDealer):
    """Raises for objects without a team; returns a value that is not JSON for team "obj"."""

    model = "Task"

    def get_key_for_model(self, data: Any) -> Any:
        slug = data["team"]["slug"]
        return object() if slug == "obj" else slug


@pytest.fixture
def dealer_server():
    service = DataSyncService("datasync", [AllTasks, TasksByOwner, TasksByTeam, FilteredTasks, Exploding])
    with running_server([service], [DataSyncBackend("datasync_backend", service)]) as server:
        clients: list[WsClient] = []

        def subscribe(*items: dict[str, Any]) -> WsClient:
            client = WsClient(server.ws_url)
            clients.append(client)
            token = server.backend().authorize_subscription(list(items))
            assert client.call("datasync", "acquireSubscription", token=token)["type"] == "response"
            return client

        yield server, subscribe
        for client in clients:
            client.close()


def received(client: WsClient, count: int) -> list[Any]:
    return [client.recv()["message"]["delta"]["data"]["id"] for _ in range(count)]


def silent(client: WsClient) -> bool:
    try:
        client.recv(timeout=0.2)
    except TimeoutError:
        return True
    return False


def insert(**data: Any) -> dict[str, Any]:
    return {"type": "insert", "model": "Task", "data": data}


def test_simple_keys_by_path_and_by_method(dealer_server):
    server, subscribe = dealer_server
    owner_42 = subscribe({"dealer": "TasksByOwner", "query": 42})
    owner_str = subscribe({"dealer": "TasksByOwner", "query": "42"})
    core = subscribe({"dealer": "TasksByTeam", "query": "core"})
    server.backend().publish_deltas(
        [
            insert(id=1, owner={"id": 42}, team={"slug": "CORE"}),
            insert(id=2, owner={"id": 42.0}, team={"slug": "Web"}),
            insert(id=3, owner={"id": "42"}, team={"slug": "core"}),
            insert(id=4, owner=42, team={"slug": "Core"}),
        ]
    )
    assert received(owner_42, 2) == [1, 2], "numbers compare by value; a path through a non-object is missing"
    assert received(owner_str, 1) == [3], "strings are not numbers"
    assert received(core, 3) == [1, 3, 4]
    assert silent(owner_42) and silent(owner_str) and silent(core)


def test_filters_follow_the_protocol_rules(dealer_server):
    server, subscribe = dealer_server
    nested = subscribe({"dealer": "FilteredTasks", "query": ["==", "player.color", "red"]})
    ordered = subscribe({"dealer": "FilteredTasks", "query": [">", "priority", 2]})
    strings = subscribe({"dealer": "FilteredTasks", "query": ["<", "title", "b"]})
    boolean = subscribe({"dealer": "FilteredTasks", "query": ["==", "done", True]})
    negated = subscribe({"dealer": "FilteredTasks", "query": ["not", ["==", "done", True]]})
    server.backend().publish_deltas(
        [
            insert(id=1, player={"color": "red"}, priority=3, title="a", done=True),
            insert(id=2, player="red", priority="9", title="B", done=1),
            insert(id=3, color="red", priority=2.5, title="é", done=False),
        ]
    )
    assert received(nested, 1) == [1], "a dotted path reads nested objects only"
    assert received(ordered, 2) == [1, 3], "a number never orders against a string"
    assert received(strings, 2) == [1, 2], "code point order: 'B' < 'b' < 'é'"
    assert received(boolean, 1) == [1], "true is not 1"
    assert received(negated, 2) == [2, 3]
    for client in (nested, ordered, strings, boolean, negated):
        assert silent(client)


def test_a_raising_key_method_is_logged_and_skips_only_its_dealer(dealer_server, caplog):
    caplog.set_level(logging.ERROR, logger="snorky")
    server, subscribe = dealer_server
    exploding = subscribe({"dealer": "Exploding", "query": "core"})
    both = subscribe({"dealer": "Exploding", "query": "core"}, {"dealer": "TasksByOwner", "query": 1})
    everyone = subscribe({"dealer": "AllTasks", "query": None})
    server.backend().publish_deltas(
        [
            insert(id=1, owner={"id": 1}),  # no team: the method raises KeyError
            insert(id=2, owner={"id": 1}, team={"slug": "obj"}),  # the key is not JSON
            insert(id=3, owner={"id": 1}, team={"slug": "core"}),
        ]
    )
    assert received(everyone, 3) == [1, 2, 3]
    assert received(both, 3) == [1, 2, 3], "through its other item"
    assert received(exploding, 1) == [3], "the dealer works again for the next delta"
    assert silent(exploding)
    messages = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    raised = [m for m in messages if 'dealer "Exploding"' in m and "KeyError" in m]
    assert raised, messages
    assert any('dealer "Exploding"' in m and m not in raised for m in messages), "the non-JSON key is logged too"
