"""Messaging through the Python API: names, messages between them, clean-up on disconnect, and
the ``is_name_allowed`` hook."""

from __future__ import annotations

import time
from typing import Any

import pytest
from wsclient import WsClient

import snorky
from snorky.services import Client, MessagingService
from snorky.testing import running_server

SECRET = "python-test-token-secret"


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_register_send_list_and_unregister():
    service = MessagingService()
    with running_server([service]) as server:
        alice, bob = WsClient(server.ws_url), WsClient(server.ws_url)
        assert alice.call("messaging", "registerParticipant", name="alice") == {
            "type": "response",
            "callId": 1,
            "data": None,
        }
        assert bob.call("messaging", "registerParticipant", name="alice")["message"] == "Name already registered"
        bob.call("messaging", "registerParticipant", name="bob")
        bob.call("messaging", "registerParticipant", name="Bob")
        assert alice.call("messaging", "listParticipants")["data"] == ["Bob", "alice", "bob"]
        assert service.participants() == ["Bob", "alice", "bob"]

        assert alice.call("messaging", "send", sender="alice", dest="bob", body={"hi": [1]})["data"] is None
        assert bob.recv() == {
            "service": "messaging",
            "message": {"type": "message", "sender": "alice", "dest": "bob", "body": {"hi": [1]}},
        }
        assert alice.call("messaging", "send", sender="bob", dest="alice", body=1)["message"] == "Invalid sender"
        assert alice.call("messaging", "send", sender="alice", dest="carol", body=1)["message"] == (
            "Unknown destination"
        )
        assert alice.call("messaging", "unregisterParticipant", name="bob")["message"] == "Invalid participant"
        assert alice.call("messaging", "unregisterParticipant", name="carol")["message"] == "Unknown participant"
        assert bob.call("messaging", "unregisterParticipant", name="Bob")["data"] is None
        assert service.participants() == ["alice", "bob"]

        bob.close()
        wait_until(lambda: service.participants() == ["alice"])
        assert alice.call("messaging", "send", sender="alice", dest="bob", body=1)["message"] == "Unknown destination"
        alice.close()


class SignedNames(MessagingService):
    """A client may register only names starting with its identity."""

    def __init__(self) -> None:
        super().__init__("messaging")
        self.asked: list[str] = []

    def is_name_allowed(self, client: Client, name: str) -> bool:
        self.asked.append(name)
        if name == "slow":
            time.sleep(0.5)
        return client.identity is not None and name.startswith(client.identity)


def test_is_name_allowed_override_refuses_with_name_not_allowed():
    service = SignedNames()
    with running_server([service], token_secret=SECRET) as server:
        alice = WsClient(f"{server.ws_url}?token={snorky.connection_token('alice', SECRET)}")
        anonymous = WsClient(server.ws_url)
        assert alice.call("messaging", "registerParticipant", name="bob")["message"] == "Name not allowed"
        assert alice.call("messaging", "registerParticipant", name="alice/phone")["data"] is None
        assert anonymous.call("messaging", "registerParticipant", name="x")["message"] == "Name not allowed"
        # A taken name is refused before the hook is asked.
        assert anonymous.call("messaging", "registerParticipant", name="alice/phone")["message"] == (
            "Name already registered"
        )
        assert service.asked == ["bob", "alice/phone", "x"]
        alice.close()
        anonymous.close()


@pytest.mark.parametrize("name", [7, None, ["a"]])
def test_names_are_strings(name):
    with running_server([MessagingService()]) as server:
        client = WsClient(server.ws_url)
        assert client.call("messaging", "registerParticipant", name=name)["message"] == "Invalid params"
        client.close()
