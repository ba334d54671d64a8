"""Chat, Cursors and Messaging on several nodes sharing a Redis, through the Python API: the
hooks overridden in Python decide on every node, a service written in Python works on each, and
a node killed with SIGKILL (a process of its own) is removed by the others within the node
timeout."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, redis_server
from wsclient import WsClient

import snorky
from snorky.rpc import RPCService, rpc_command
from snorky.services import ChatService, Client, CursorsService, MessagingService
from snorky.testing import running_server

SECRET = "python-broker-token-secret"
NODE_TIMEOUT = 2.0


class Lobby(ChatService):
    def can_join(self, client: Client, channel: Any) -> bool:
        return channel != "secret"


class Documents(CursorsService):
    def can_join(self, client: Client, document: Any) -> bool:
        return client.identity != "mallory"


class Names(MessagingService):
    def is_name_allowed(self, client: Client, name: str) -> bool:
        return not name.startswith("admin")


class Counter(RPCService):
    """A Python service: its state is its node's."""

    def __init__(self) -> None:
        super().__init__("counter")
        self.count = 0

    @rpc_command
    def increment(self, req: Any) -> int:
        self.count += 1
        return self.count


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def node(redis: RedisServer, name: str) -> Any:
    services = [Lobby(), Documents(), Names(), Counter()]
    return running_server(services, broker=redis.url, node_name=name, token_secret=SECRET, node_timeout=NODE_TIMEOUT)


def connect(url: str, identity: str) -> WsClient:
    return WsClient(f"{url}?token={snorky.connection_token(identity, SECRET)}")


def ok(client: WsClient, service: str, command: str, **params: Any) -> Any:
    reply = client.call(service, command, **params)
    assert reply["type"] == "response", reply
    return reply["data"]


def error(client: WsClient, service: str, command: str, **params: Any) -> str:
    reply = client.call(service, command, **params)
    assert reply["type"] == "error", reply
    return str(reply["message"])


def pushed(client: WsClient, timeout: float = 5.0) -> dict[str, Any]:
    """The next pushed message, without its timestamp."""
    message = dict(client.recv(timeout=timeout)["message"])
    message.pop("timestamp", None)
    return message


def test_python_hooks_and_services_work_on_every_node(redis: RedisServer) -> None:
    with node(redis, "one") as one, node(redis, "two") as two:
        alice, bob = connect(one.ws_url, "alice"), connect(two.ws_url, "bob")
        mallory = connect(two.ws_url, "mallory")
        assert ok(alice, "chat", "join", channel="lobby") == {"members": ["alice"]}
        assert error(bob, "chat", "join", channel="secret") == "Not authorized"
        assert ok(bob, "chat", "join", channel="lobby") == {"members": ["alice", "bob"]}
        assert pushed(alice) == {"type": "presence", "from": "bob", "channel": "lobby", "status": "joined"}
        # Cursors: the hook refuses on the node it runs on; the others see every node's cursors.
        assert error(mallory, "cursors", "join", document="doc") == "Not authorized"
        assert ok(alice, "cursors", "join", document="doc") == {"cursors": []}
        handle = ok(alice, "cursors", "createCursor", privateHandle=1, document="doc", position=0, status=None)
        listing = ok(bob, "cursors", "join", document="doc")
        assert listing == {
            "cursors": [{"publicHandle": handle, "document": "doc", "position": 0, "status": None, "owner": "alice"}]
        }
        # Messaging: the name hook on each node, one name space for both.
        assert error(mallory, "messaging", "registerParticipant", name="admin") == "Name not allowed"
        assert ok(alice, "messaging", "registerParticipant", name="carol") is None
        assert error(bob, "messaging", "registerParticipant", name="carol") == "Name already registered"
        assert ok(bob, "messaging", "registerParticipant", name="bob") is None
        assert ok(mallory, "messaging", "listParticipants") == ["bob", "carol"]
        assert ok(bob, "messaging", "send", sender="bob", dest="carol", body="hi") is None
        assert pushed(alice) == {"type": "message", "sender": "bob", "dest": "carol", "body": "hi"}
        # A Python service answers on each node, with each node's own state.
        assert [ok(alice, "counter", "increment"), ok(alice, "counter", "increment")] == [1, 2]
        assert ok(bob, "counter", "increment") == 1
        for client in (alice, bob, mallory):
            client.close()


class KillableNode:
    """A node in a process of its own (``collab_node.py``)."""

    def __init__(self, redis: RedisServer, name: str) -> None:
        script = Path(__file__).with_name("collab_node.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script), redis.url, name, SECRET],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("READY "), f"the node did not start: {line!r}"
        self.ws_url = line.split()[1]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def test_a_node_killed_with_sigkill_is_removed_by_the_others_within_the_node_timeout(redis: RedisServer) -> None:
    killable = KillableNode(redis, "doomed")
    try:
        with node(redis, "survivor") as survivor:
            watcher = connect(survivor.ws_url, "watcher")
            ok(watcher, "chat", "join", channel="lobby")
            ok(watcher, "cursors", "join", document="doc")
            alice = connect(killable.ws_url, "alice")
            ok(alice, "chat", "join", channel="lobby")
            ok(alice, "cursors", "join", document="doc")
            handle = ok(alice, "cursors", "createCursor", privateHandle=1, document="doc", position=1, status=None)
            ok(alice, "messaging", "registerParticipant", name="alice")
            assert pushed(watcher)["status"] == "joined"
            assert pushed(watcher)["type"] == "cursorAdded"

            killable.kill()
            killed = time.monotonic()
            removals = [pushed(watcher, timeout=NODE_TIMEOUT + 5), pushed(watcher)]
            elapsed = time.monotonic() - killed
            assert sorted(removals, key=str) == sorted(
                [
                    {"type": "presence", "from": "alice", "channel": "lobby", "status": "left"},
                    {"type": "cursorRemoved", "cursor": {"publicHandle": handle, "document": "doc"}},
                ],
                key=str,
            )
            assert elapsed < NODE_TIMEOUT + 5, elapsed
            # The name is free again (Messaging reaps on its own), and nothing was pushed twice.
            deadline = time.monotonic() + NODE_TIMEOUT + 5
            while ok(watcher, "messaging", "listParticipants") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ok(watcher, "messaging", "listParticipants") == []
            assert ok(watcher, "messaging", "registerParticipant", name="alice") is None
            with pytest.raises(TimeoutError):
                watcher.recv(timeout=0.3)
            watcher.close()
    finally:
        killable.kill()
