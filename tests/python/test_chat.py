"""Chat through the Python API: members, messages, presence across tabs, read receipts, and the
``can_join`` hook."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from wsclient import WsClient

import snorky
from snorky.services import ChatService, Client
from snorky.testing import RunningServer, running_server

SECRET = "python-test-token-secret"


@pytest.fixture
def chat() -> ChatService:
    return ChatService()


@pytest.fixture
def chat_server(chat: ChatService) -> Iterator[RunningServer]:
    with running_server([chat], token_secret=SECRET) as server:
        yield server


def connect(server: RunningServer, identity: str | None) -> WsClient:
    if identity is None:
        return WsClient(server.ws_url)
    return WsClient(f"{server.ws_url}?token={snorky.connection_token(identity, SECRET)}")


def pushed(client: WsClient) -> dict[str, Any]:
    """The next pushed message, its timestamp checked (ISO 8601 with an offset) and removed."""
    frame = client.recv()
    assert frame["service"] == "chat"
    message = frame["message"]
    stamp = datetime.fromisoformat(message.pop("timestamp"))
    assert stamp.utcoffset() is not None
    assert abs(stamp.timestamp() - time.time()) < 60
    return message


def assert_quiet(client: WsClient) -> None:
    """Nothing is pending: a probe is answered before anything else arrives."""
    assert client.call("chat", "probe")["message"] == "Unknown command"
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.05)


def test_join_send_and_presence_across_tabs(chat, chat_server):
    alice, alice_tab = connect(chat_server, "alice"), connect(chat_server, "alice")
    bob = connect(chat_server, "bob")
    assert alice.call("chat", "join", channel="lobby") == {
        "type": "response",
        "callId": 1,
        "data": {"members": ["alice"]},
    }
    assert alice_tab.call("chat", "join", channel="lobby")["data"] == {"members": ["alice"]}
    assert alice.call("chat", "join", channel="lobby")["message"] == "Already joined"
    assert bob.call("chat", "join", channel="lobby")["data"] == {"members": ["alice", "bob"]}
    joined = {"type": "presence", "from": "bob", "channel": "lobby", "status": "joined"}
    assert pushed(alice) == joined
    assert pushed(alice_tab) == joined
    assert_quiet(bob)

    assert bob.call("chat", "send", channel="lobby", body={"text": "hi"})["data"] is None
    message = {"type": "message", "from": "bob", "channel": "lobby", "body": {"text": "hi"}}
    assert pushed(bob) == message
    assert pushed(alice) == message
    assert pushed(alice_tab) == message

    # One of alice's tabs leaves: still present. The last one: bob is told.
    assert alice_tab.call("chat", "leave", channel="lobby")["data"] is None
    assert_quiet(bob)
    alice.close()
    assert pushed(bob) == {"type": "presence", "from": "alice", "channel": "lobby", "status": "left"}
    assert chat.members("lobby") == ["bob"]
    alice_tab.close()
    bob.close()


def test_errors(chat_server):
    anonymous, alice = connect(chat_server, None), connect(chat_server, "alice")
    assert anonymous.call("chat", "join", channel="c")["message"] == "Not authenticated"
    assert alice.call("chat", "leave", channel="c")["message"] == "Not joined"
    assert alice.call("chat", "send", channel="c", body="x")["message"] == "Not joined"
    assert alice.call("chat", "read", channel="c")["data"] is None
    assert alice.call("chat", "join")["message"] == "Invalid params"
    anonymous.close()
    alice.close()


def test_read_receipts_reach_the_other_tabs_only(chat_server):
    tab1, tab2, bob = connect(chat_server, "alice"), connect(chat_server, "alice"), connect(chat_server, "bob")
    for client in (bob, tab1, tab2):
        client.call("chat", "join", channel={"room": 1})
    assert pushed(bob)["status"] == "joined"
    assert tab1.call("chat", "read", channel={"room": 1})["data"] is None
    assert pushed(tab2) == {"type": "read", "channel": {"room": 1}}
    assert_quiet(tab1)
    assert_quiet(bob)
    for client in (tab1, tab2, bob):
        client.close()


class TeamRooms(ChatService):
    """Only members of a channel's team (from the token's info) may join it."""

    def __init__(self) -> None:
        super().__init__("chat")
        self.asked: list[tuple[Client, Any]] = []

    def can_join(self, client: Client, channel: Any) -> bool:
        self.asked.append((client, channel))
        if channel == "boom":
            raise RuntimeError("hook bug")
        return channel in (client.info or {}).get("teams", [])


def test_can_join_override_refuses_with_not_authorized(caplog):
    service = TeamRooms()
    with running_server([service], token_secret=SECRET) as server:
        token = snorky.connection_token("alice", SECRET, info={"teams": ["red"]})
        alice = WsClient(f"{server.ws_url}?token={token}")
        assert alice.call("chat", "join", channel="blue")["message"] == "Not authorized"
        assert alice.call("chat", "join", channel="red")["data"] == {"members": ["alice"]}
        assert alice.call("chat", "join", channel="boom")["message"] == "Internal error"
        assert service.members("red") == ["alice"]
        assert service.members("blue") == []
        client, channel = service.asked[0]
        assert (client.identity, channel) == ("alice", "blue")
        # Anonymous connections are refused before the hook is asked.
        anonymous = WsClient(server.ws_url)
        assert anonymous.call("chat", "join", channel="red")["message"] == "Not authenticated"
        assert len(service.asked) == 3
        alice.close()
        anonymous.close()
    assert any("hook bug" in record.getMessage() for record in caplog.records)


def test_the_default_hook_is_not_called_from_python():
    service = ChatService("talk")
    assert repr(service) == "ChatService('talk')"
    with running_server([service], token_secret=SECRET) as server:
        client = WsClient(f"{server.ws_url}?token={snorky.connection_token('x', SECRET)}")
        assert client.call("talk", "join", channel="c")["data"] == {"members": ["x"]}
        client.close()
