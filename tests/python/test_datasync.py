"""DataSync through the public API: dealers declared in Python, subscriptions authorized and deltas
published with SnorkyBackend, browsers over real WebSockets."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from wsclient import WsClient

from snorky import ConfigurationError
from snorky.backend import BackendError
from snorky.dealers import BroadcastDealer, FilterDealer, SimpleDealer
from snorky.services import DataSyncBackend, DataSyncService
from snorky.testing import RunningServer, running_server


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


DEALERS = [AllTasks, TasksByOwner, TasksByTeam, FilteredTasks]


class DataSync:
    """A running server with the example dealers, a backend client and WebSocket clients."""

    def __init__(self, server: RunningServer, service: DataSyncService) -> None:
        self.server = server
        self.service = service
        self.backend = server.backend()
        self._clients: list[WsClient] = []

    def client(self) -> WsClient:
        client = WsClient(self.server.ws_url)
        self._clients.append(client)
        return client

    def authorize(self, *items: dict[str, Any]) -> str:
        return self.backend.authorize_subscription(list(items))

    def close(self) -> None:
        for client in self._clients:
            client.close()


@contextmanager
def datasync_server(**limits: Any) -> Iterator[DataSync]:
    service = DataSyncService("datasync", DEALERS, **limits)
    with running_server([service], [DataSyncBackend("datasync_backend", service)]) as server:
        datasync = DataSync(server, service)
        try:
            yield datasync
        finally:
            datasync.close()


@pytest.fixture
def ds() -> Iterator[DataSync]:
    with datasync_server() as datasync:
        yield datasync


def acquire(client: WsClient, token: str) -> None:
    reply = client.call("datasync", "acquireSubscription", token=token)
    assert reply["type"] == "response", reply
    assert reply["data"] is None


def refused(client: WsClient, command: str, **params: Any) -> str:
    reply = client.call("datasync", command, **params)
    assert reply["type"] == "error", reply
    return reply["message"]


def deltas(client: WsClient, count: int) -> list[dict[str, Any]]:
    """The next ``count`` deltas pushed to ``client``, checking each frame's exact shape."""
    received = []
    for _ in range(count):
        frame = client.recv()
        assert set(frame) == {"service", "message"}
        assert frame["service"] == "datasync"
        assert set(frame["message"]) == {"type", "delta"}
        assert frame["message"]["type"] == "delta"
        received.append(frame["message"]["delta"])
    return received


def assert_silent(client: WsClient, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        client.recv(timeout=seconds)


def wait_until(condition: Callable[[], bool], what: str, limit: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, f"timed out waiting for {what}"
        time.sleep(0.005)
    return time.monotonic() - started


def insert(data: Any, model: str = "Task") -> dict[str, Any]:
    return {"type": "insert", "model": model, "data": data}


def update(old: Any, new: Any) -> dict[str, Any]:
    return {"type": "update", "model": "Task", "newData": new, "oldData": old}


def delete(data: Any) -> dict[str, Any]:
    return {"type": "delete", "model": "Task", "data": data}


def task(task_id: int, owner: int = 42, team: str = "Core", **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "owner": {"id": owner}, "team": {"slug": team}, **fields}


def test_the_issue_example_end_to_end(ds):
    by_owner = ds.authorize({"dealer": "TasksByOwner", "query": 42})
    assert len(by_owner) == 32 and by_owner.isalnum() and by_owner == by_owner.lower()
    by_team = ds.authorize({"dealer": "TasksByTeam", "query": "core"})
    everything = ds.authorize({"dealer": "AllTasks", "query": None})
    urgent = ds.authorize(
        {"dealer": "FilteredTasks", "query": ["and", ["==", "team.slug", "Core"], [">=", "priority", 5]]}
    )
    owner, team, admin, triage = ds.client(), ds.client(), ds.client(), ds.client()
    for client, token in ((owner, by_owner), (team, by_team), (admin, everything), (triage, urgent)):
        acquire(client, token)

    mine = task(1, priority=9)
    theirs = task(2, owner=7, team="Web", priority=1)
    ds.backend.publish_deltas([insert(mine), insert(theirs)])
    ds.backend.publish_deltas(delete(theirs))  # a single delta is a batch of one

    assert deltas(owner, 1) == [insert(mine)]
    assert deltas(team, 1) == [insert(mine)]
    assert deltas(admin, 3) == [insert(mine), insert(theirs), delete(theirs)]
    assert deltas(triage, 1) == [insert(mine)]
    for client in (owner, team, triage):
        assert_silent(client, 0.2)


def test_unknown_dealer_and_bad_items_are_refused(ds):
    with pytest.raises(BackendError, match=r"^No such dealer$"):
        ds.authorize({"dealer": "Nope", "query": 1})
    with pytest.raises(BackendError, match=r"^No such dealer$"):
        ds.authorize({"dealer": "AllTasks", "query": None}, {"dealer": "Nope", "query": 1})
    with pytest.raises(BackendError, match=r"^Missing field query$"):
        ds.authorize({"dealer": "AllTasks"})
    with pytest.raises(BackendError, match=r"^Missing field dealer$"):
        ds.authorize({"query": 1})
    with pytest.raises(BackendError, match=r"^dealer should be a dealer name$"):
        ds.authorize({"dealer": 3, "query": 1})
    assert ds.service.subscription_count == 0, "a refused list registers nothing"


@pytest.mark.parametrize(
    "query",
    [None, "status", ["=", "status", "open"], ["==", "status"], ["not"], ["and", ["or", [1, "x", 2]]], [], {"a": 1}],
)
def test_bad_filter_queries_are_refused_at_authorization(ds, query):
    with pytest.raises(BackendError, match=r'^Invalid query for dealer "FilteredTasks"'):
        ds.authorize({"dealer": "FilteredTasks", "query": query})


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        ({"model": "Task", "data": {}}, "Missing field"),
        ({"type": "insert", "data": {}}, "Missing field"),
        ({"type": "insert", "model": "Task"}, "Missing field"),
        ({"type": "update", "model": "Task", "newData": {}}, "Missing field"),
        ({"type": "upsert", "model": "Task", "data": {}}, "Invalid delta type"),
        ({"type": None, "model": "Task", "data": {}}, "Invalid delta type"),
        ({"type": "insert", "model": 1, "data": {}}, "model must be string"),
        ({"type": "insert", "model": "Nope", "data": {}}, "Unknown model"),
    ],
)
def test_a_bad_delta_refuses_the_whole_batch(ds, bad, text):
    client = ds.client()
    acquire(client, ds.authorize({"dealer": "AllTasks", "query": None}))
    with pytest.raises(BackendError, match=f"^{re.escape(text)}$"):
        ds.backend.publish_deltas([insert(task(1)), bad, insert(task(2))])
    assert_silent(client, 0.2)
    ds.backend.publish_deltas([insert(task(3))])
    assert deltas(client, 1) == [insert(task(3))]


def test_frontend_errors(ds):
    client = ds.client()
    for command in ("acquireSubscription", "cancelSubscription"):
        assert refused(client, command, token=7) == "token must be string"
        assert refused(client, command, token=None) == "token must be string"
        assert refused(client, command, token="x" * 32) == "No such subscription"
        assert refused(client, command) == "Invalid params"


def test_foreign_and_held_tokens(ds):
    token = ds.authorize({"dealer": "AllTasks", "query": None})
    owner, stranger = ds.client(), ds.client()
    assert refused(stranger, "cancelSubscription", token=token) == "No such subscription", "not acquired yet"
    acquire(owner, token)
    assert refused(stranger, "acquireSubscription", token=token) == "No such subscription"
    assert refused(stranger, "cancelSubscription", token=token) == "No such subscription"
    assert refused(owner, "acquireSubscription", token=token) == "No such subscription", "held already"
    ds.backend.publish_deltas([insert(task(1))])
    assert deltas(owner, 1) == [insert(task(1))], "the refusals changed nothing"
    assert_silent(stranger, 0.2)
    assert owner.call("datasync", "cancelSubscription", token=token)["type"] == "response"
    ds.backend.publish_deltas([insert(task(2))])
    assert_silent(owner, 0.2)
    assert refused(owner, "acquireSubscription", token=token) == "No such subscription"


def test_expired_tokens():
    with datasync_server(subscription_timeout=0.3, resume_timeout=0.3) as ds:
        expired = ds.authorize({"dealer": "AllTasks", "query": None})
        resumable = ds.authorize({"dealer": "AllTasks", "query": None})
        client = ds.client()
        acquire(client, resumable)
        time.sleep(0.5)
        assert refused(client, "acquireSubscription", token=expired) == "No such subscription"
        client.close()
        wait_until(lambda: ds.service.waiting_count == 1, "the disconnect")
        time.sleep(0.5)
        assert refused(ds.client(), "acquireSubscription", token=resumable) == "No such subscription"
        wait_until(lambda: ds.service.subscription_count == 0, "the sweep", limit=2.0)


def test_one_identity_waits_for_at_most_max_waiting_per_identity():
    with pytest.raises(ConfigurationError, match="max_waiting_per_identity must be at least 1"):
        DataSyncService("datasync", DEALERS, max_waiting_per_identity=0)
    with datasync_server(max_waiting=10, max_waiting_per_identity=2) as ds:
        items = [{"dealer": "AllTasks", "query": None}]
        ds.backend.authorize_subscription(items, identity="bob")
        anonymous = [ds.authorize(*items) for _ in range(3)]
        for _ in range(4):
            ds.backend.authorize_subscription(items, identity="alice")
        assert ds.service.waiting_count == 1 + 3 + 2, "alice's two oldest were dropped, nobody else's"
        acquire(ds.client(), anonymous[0])
        assert ds.service.waiting_count == 5


def test_reconnect_and_resume_delivers_what_was_missed_once_in_order(ds):
    token = ds.authorize({"dealer": "TasksByOwner", "query": 42}, {"dealer": "AllTasks", "query": None})
    first = ds.client()
    acquire(first, token)
    ds.backend.publish_deltas([insert(task(1))])
    assert deltas(first, 1) == [insert(task(1))]
    first.close()
    took = wait_until(lambda: ds.service.waiting_count == 1, "the disconnect to take effect")
    assert took < 0.5
    missed = [insert(task(2)), update(task(2), task(2, title="x")), delete(task(1))]
    ds.backend.publish_deltas(missed[:1])
    ds.backend.publish_deltas(missed[1:])
    second = ds.client()
    acquire(second, token)
    assert deltas(second, 3) == missed
    ds.backend.publish_deltas([insert(task(3))])
    assert deltas(second, 1) == [insert(task(3))]
    assert_silent(second, 0.2)


def test_buffer_overflow_while_disconnected():
    with datasync_server(retention=2) as ds:
        token = ds.authorize({"dealer": "AllTasks", "query": None})
        client = ds.client()
        acquire(client, token)
        client.close()
        wait_until(lambda: ds.service.waiting_count == 1, "the disconnect")
        ds.backend.publish_deltas([insert(task(i)) for i in range(3)])
        assert refused(ds.client(), "acquireSubscription", token=token) == "No such subscription"
        assert ds.service.subscription_count == 0


def test_objects_entering_and_leaving_the_view(ds):
    client = ds.client()
    acquire(client, ds.authorize({"dealer": "FilteredTasks", "query": ["==", "status", "open"]}))
    opened, closed = task(1, status="open"), task(1, status="closed")
    ds.backend.publish_deltas([update(closed, opened), update(opened, opened), update(opened, closed)])
    ds.backend.publish_deltas([update(closed, closed)])
    assert deltas(client, 3) == [insert(opened), update(opened, opened), delete(opened)]
    assert_silent(client, 0.2)


def test_overlapping_items_get_each_delta_once(ds):
    client = ds.client()
    token = ds.authorize(
        {"dealer": "AllTasks", "query": None},
        {"dealer": "TasksByOwner", "query": 42},
        {"dealer": "TasksByTeam", "query": "core"},
        {"dealer": "FilteredTasks", "query": ["==", "owner.id", 42.0]},
    )
    acquire(client, token)
    sent = [insert(task(1)), update(task(1), task(1, title="t")), delete(task(1))]
    ds.backend.publish_deltas(sent)
    assert deltas(client, 3) == sent
    assert_silent(client, 0.2)


# A randomized check of the whole path (Python → backend → Rust router → WebSocket): what each
# subscription receives equals what a Python reference evaluation of its items says.

FIELDS = ["a", "b", "n.x"]
LEAVES: list[Any] = [None, True, False, 0, 1, 1.0, 2, 2.5, -1, "1", "a", "b", ""]


def lookup(obj: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return False, None
        obj = obj[part]
    return True, obj


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equal(a: Any, b: Any) -> bool:
    if is_number(a) and is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def holds(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return equal(a, b)
    comparable = (is_number(a) and is_number(b)) or (isinstance(a, str) and isinstance(b, str))
    if not comparable:
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def matches(expr: list[Any], obj: Any) -> bool:
    op, *args = expr
    if op == "and":
        return all(matches(e, obj) for e in args)
    if op == "or":
        return any(matches(e, obj) for e in args)
    if op == "not":
        return not matches(args[0], obj)
    found, value = lookup(obj, args[0])
    return found and holds(op, value, args[1])


def random_filter(rng: random.Random, depth: int = 0) -> list[Any]:
    if depth < 2 and rng.random() < 0.4:
        op = rng.choice(["and", "or", "not"])
        if op == "not":
            return ["not", random_filter(rng, depth + 1)]
        return [op, *(random_filter(rng, depth + 1) for _ in range(rng.randint(0, 3)))]
    return [rng.choice(["==", "==", "<", "<=", ">", ">="]), rng.choice(FIELDS), rng.choice(LEAVES)]


def random_object(rng: random.Random) -> dict[str, Any]:
    obj: dict[str, Any] = {key: rng.choice(LEAVES) for key in ("a", "b") if rng.random() < 0.8}
    if rng.random() < 0.7:
        obj["n"] = {"x": rng.choice(LEAVES)} if rng.random() < 0.8 else rng.choice(LEAVES)
    return obj


def expected_delta(delta: dict[str, Any], items: list[list[Any]]) -> dict[str, Any] | None:
    old = delta.get("oldData") if delta["type"] == "update" else delta.get("data")
    new = delta.get("newData") if delta["type"] == "update" else delta.get("data")
    sees_old = delta["type"] != "insert" and any(matches(expr, old) for expr in items)
    sees_new = delta["type"] != "delete" and any(matches(expr, new) for expr in items)
    if sees_old and sees_new:
        return delta if delta["type"] == "update" else None
    if sees_new:
        return insert(new)
    if sees_old:
        return {"type": "delete", "model": "Task", "data": old}
    return None


@pytest.mark.parametrize("seed", range(3))
def test_random_filters_deliver_what_a_reference_evaluation_says(ds, seed):
    rng = random.Random(seed)
    subscriptions = []
    for _ in range(6):
        items = [random_filter(rng) for _ in range(rng.randint(1, 3))]
        client = ds.client()
        acquire(client, ds.authorize(*({"dealer": "FilteredTasks", "query": expr} for expr in items)))
        subscriptions.append((client, items))
    published = []
    for _ in range(25):
        kind = rng.choice(["insert", "update", "delete"])
        if kind == "update":
            published.append(update(random_object(rng), random_object(rng)))
        else:
            published.append({"type": kind, "model": "Task", "data": random_object(rng)})
    ds.backend.publish_deltas(published)
    marker = insert({"marker": True})
    for client, _items in subscriptions:
        acquire(client, ds.authorize({"dealer": "AllTasks", "query": None}))
    ds.backend.publish_deltas([marker])
    for client, items in subscriptions:
        wanted = [d for d in (expected_delta(delta, items) for delta in published) if d is not None]
        assert deltas(client, len(wanted) + 1) == [*wanted, marker], items
