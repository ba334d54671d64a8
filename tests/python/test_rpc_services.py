"""Services written in Python: sync, async and deferred commands, errors, params, pushes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from wsclient import WsClient

from snorky.services import (
    Client,
    PubSubBackend,
    PubSubService,
    Request,
    RPCError,
    RPCService,
    rpc_asynchronous,
    rpc_command,
)
from snorky.testing import running_server


class Counter(RPCService):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.count = 0
        self.lock = threading.Lock()
        self.connected: list[Client] = []
        self.disconnected: list[Client] = []

    @rpc_command
    def increment(self, req: Request, by: int = 1) -> int:
        with self.lock:
            self.count += by
            value = self.count
        self.broadcast({"type": "count", "value": value})
        return value

    @rpc_command
    def whoami(self, req: Request) -> dict:
        assert req.client is not None
        return {"id": req.client.id, "command": req.command, "callId": req.call_id}

    @rpc_command
    async def slow_double(self, req: Request, x: float) -> float:
        await asyncio.sleep(0.3)
        return x * 2

    @rpc_asynchronous
    def later(self, req: Request, text: str) -> None:
        threading.Timer(0.2, req.reply, args=(text.upper(),)).start()

    @rpc_command
    def refuse(self, req: Request) -> None:
        raise RPCError("Not today")

    @rpc_command
    def crash(self, req: Request) -> None:
        raise ValueError("secret detail")

    @rpc_command
    def sleep(self, req: Request, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    @rpc_command(name="camelCase")
    def camel_case(self, req: Request) -> str:
        return "ok"

    @rpc_command
    def push_from_thread(self, req: Request) -> None:
        client = req.client
        assert client is not None
        threading.Timer(0.1, self.send_message_to, args=(client, {"type": "hello", "from": "thread"})).start()

    @rpc_command
    def not_json(self, req: Request) -> object:
        return object()

    def client_connected(self, client: Client) -> None:
        self.connected.append(client)

    def client_disconnected(self, client: Client) -> None:
        self.disconnected.append(client)


@pytest.fixture
def counter_server():
    counter = Counter("counter")
    pubsub = PubSubService()
    with running_server([counter, pubsub], [PubSubBackend("pubsub_backend", pubsub)]) as server:
        yield counter, server


def test_sync_command_replies_and_broadcasts(counter_server):
    _, server = counter_server
    a, b = WsClient(server.ws_url), WsClient(server.ws_url)
    assert a.call("counter", "increment", by=2) == {"type": "response", "callId": 1, "data": 2}
    assert a.recv()["message"] == {"type": "count", "value": 2}
    assert b.recv() == {"service": "counter", "message": {"type": "count", "value": 2}}
    assert a.call("counter", "increment")["data"] == 3
    a.close()
    b.close()


def test_request_exposes_client_command_and_call_id(counter_server):
    _, server = counter_server
    client = WsClient(server.ws_url)
    data = client.call("counter", "whoami")["data"]
    assert data["command"] == "whoami" and data["callId"] == 1 and isinstance(data["id"], int)
    assert client.call("counter", "camelCase")["data"] == "ok"
    client.close()


def test_bad_params_and_unknown_commands(counter_server):
    _, server = counter_server
    client = WsClient(server.ws_url)
    for params in ({"by": "two"}, {"by": True}, {"nope": 1}):
        assert client.call("counter", "increment", **params)["message"] == "Invalid params"
    assert client.call("counter", "slow_double")["message"] == "Invalid params"
    assert client.call("counter", "missing")["message"] == "Unknown command"
    assert client.call("counter", "_dispatch")["message"] == "Unknown command"
    client.close()


def test_rpc_error_text_and_internal_error_with_traceback(counter_server, caplog):
    _, server = counter_server
    client = WsClient(server.ws_url)
    assert client.call("counter", "refuse") == {"type": "error", "callId": 1, "message": "Not today"}
    reply = client.call("counter", "crash")
    assert reply == {"type": "error", "callId": 2, "message": "Internal error"}
    assert client.call("counter", "not_json")["message"] == "Internal error"
    client.close()
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "snorky.services"]
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in logged)


def test_async_and_deferred_replies(counter_server):
    _, server = counter_server
    client = WsClient(server.ws_url)
    assert client.call("counter", "slow_double", x=1.5)["data"] == 3.0
    assert client.call("counter", "later", text="hi")["data"] == "HI"
    client.close()


def test_messages_from_another_thread(counter_server):
    _, server = counter_server
    client = WsClient(server.ws_url)
    assert client.call("counter", "push_from_thread")["type"] == "response"
    assert client.recv() == {"service": "counter", "message": {"type": "hello", "from": "thread"}}
    client.close()


def test_connection_hooks(counter_server):
    counter, server = counter_server
    client = WsClient(server.ws_url)
    ident = client.call("counter", "whoami")["data"]["id"]
    assert [c.id for c in counter.connected] == [ident]
    client.close()
    deadline = time.monotonic() + 5
    while not counter.disconnected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [c.id for c in counter.disconnected] == [ident]


def test_stopping_the_server_runs_the_disconnect_hook_of_every_connection_it_closes():
    # The stop closes every connection; their client_disconnected hooks start on threads of the
    # server's runtime at that moment, and must run before stop() returns, not be dropped with it.
    counter = Counter("counter")
    with running_server([counter]) as server:
        clients = [WsClient(server.ws_url) for _ in range(60)]
        for client in clients:
            assert client.call("counter", "whoami")["type"] == "response"
        assert len(counter.connected) == 60
    assert len(counter.disconnected) == 60
    assert {c.id for c in counter.disconnected} == {c.id for c in counter.connected}


def test_a_sleeping_command_does_not_stall_pubsub(counter_server):
    _, server = counter_server
    sleeper, listener = WsClient(server.ws_url), WsClient(server.ws_url)
    listener.call("pubsub", "subscribe", channel="ticks")
    sleeper.send("counter", {"command": "sleep", "params": {"seconds": 2}, "callId": 1})
    backend = server.backend()
    started = time.monotonic()
    for i in range(5):
        backend.publish("ticks", i)
        assert listener.recv()["message"]["message"] == i
    assert time.monotonic() - started < 1.5, "deliveries waited for the sleeping command"
    assert sleeper.recv(timeout=5)["message"] == {"type": "response", "callId": 1, "data": "slept"}
    sleeper.close()
    listener.close()


class Admin(RPCService):
    side = "backend"

    @rpc_command
    def stats(self, req: Request) -> dict:
        return {"client": req.client}


def test_backend_python_service():
    with running_server([], [Admin("admin")]) as server:
        assert server.backend().call("admin", "stats") == {"client": None}
        with pytest.raises(Exception, match="Invalid params"):
            server.backend().call("admin", "stats", x=1)


class Waiter(RPCService):
    """Commands that never answer on their own, recording what happens to them."""

    max_pending_calls = 5

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started = 0
        self.cancelled = 0
        self.deferred_cancelled = 0
        self.lock = threading.Lock()

    @rpc_command
    async def forever(self, req: Request) -> None:
        with self.lock:
            self.started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            with self.lock:
                self.cancelled += 1
            raise

    @rpc_asynchronous
    def never(self, req: Request) -> None:
        def cancelled() -> None:
            with self.lock:
                self.deferred_cancelled += 1

        req.on_cancel(cancelled)


def wait_for(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_pending_calls_are_bounded_per_connection_and_cancelled_with_it():
    waiter = Waiter("waiter")
    with running_server([waiter]) as server:
        client = WsClient(server.ws_url)
        for call_id in range(1, 5):
            client.send("waiter", {"command": "forever", "params": {}, "callId": call_id})
        client.send("waiter", {"command": "never", "params": {}, "callId": 5})
        wait_for(lambda: waiter.pending_calls == 5, "five calls to wait")
        # The sixth is refused at once; another connection has its own allowance.
        assert client.call("waiter", "forever") == {"type": "error", "callId": 1, "message": "Too many pending calls"}
        other = WsClient(server.ws_url)
        other.send("waiter", {"command": "forever", "params": {}, "callId": 1})
        wait_for(lambda: waiter.pending_calls == 6, "the other connection's call to wait")
        # The client leaves: its coroutines are cancelled and its deferred call is told.
        client.close()
        wait_for(lambda: waiter.cancelled == 4, "the coroutines to be cancelled")
        wait_for(lambda: waiter.deferred_cancelled == 1, "the deferred call's cancel callback")
        wait_for(lambda: waiter.pending_calls == 1, "only the other connection's call to be left")
        other.close()
        wait_for(lambda: waiter.pending_calls == 0 and waiter.cancelled == 5, "nothing to be left")
