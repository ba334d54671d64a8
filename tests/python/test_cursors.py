"""Cursors through the Python API: shared cursors in a document, clean-up on disconnect, and the
``can_join`` hook."""

from __future__ import annotations

import time
from typing import Any

import pytest
from wsclient import WsClient

import snorky
from snorky.services import Client, CursorsService
from snorky.testing import RunningServer, running_server

SECRET = "python-test-token-secret"


def connect(server: RunningServer, identity: str) -> WsClient:
    return WsClient(f"{server.ws_url}?token={snorky.connection_token(identity, SECRET)}")


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_cursors_are_shared_updated_and_removed():
    service = CursorsService()
    with running_server([service], token_secret=SECRET) as server:
        alice, bob = connect(server, "alice"), connect(server, "bob")
        assert alice.call("cursors", "join", document="doc")["data"] == {"cursors": []}
        assert bob.call("cursors", "join", document="doc")["data"] == {"cursors": []}
        reply = alice.call(
            "cursors", "createCursor", privateHandle=1, document="doc", position={"line": 1}, status=None
        )
        public = reply["data"]
        assert isinstance(public, int)
        cursor = {"publicHandle": public, "document": "doc", "position": {"line": 1}, "status": None, "owner": "alice"}
        assert bob.recv()["message"] == {"type": "cursorAdded", "cursor": cursor}

        assert alice.call("cursors", "updateCursor", privateHandle=1, newData={"status": "typing"})["data"] is None
        assert bob.recv()["message"] == {"type": "cursorUpdated", "cursor": {**cursor, "status": "typing"}}
        assert bob.call("cursors", "updateCursor", privateHandle=1, newData={"position": 0})["message"] == (
            "No such cursor"
        )
        assert alice.call("cursors", "createCursor", privateHandle=1, document="doc", position=0, status=0)[
            "message"
        ] == ("Reused handle")

        carol = connect(server, "carol")
        listed = carol.call("cursors", "join", document="doc")["data"]["cursors"]
        assert listed == [{**cursor, "status": "typing"}]
        assert service.cursor_count("doc") == 1

        assert alice.call("cursors", "removeCursor", privateHandle=1)["data"] is None
        removed = {"type": "cursorRemoved", "cursor": {"publicHandle": public, "document": "doc"}}
        assert bob.recv()["message"] == removed
        assert carol.recv()["message"] == removed
        for client in (alice, bob, carol):
            client.close()


def test_too_many_cursors_and_disconnect_clean_up():
    service = CursorsService()
    with running_server([service], token_secret=SECRET) as server:
        alice, bob = connect(server, "alice"), connect(server, "bob")
        alice.call("cursors", "join", document="doc")
        bob.call("cursors", "join", document="doc")
        handles = [
            alice.call("cursors", "createCursor", privateHandle=i, document="doc", position=i, status=None)["data"]
            for i in range(16)
        ]
        assert len(set(handles)) == 16
        reply = alice.call("cursors", "createCursor", privateHandle=16, document="doc", position=0, status=None)
        assert reply["message"] == "Too many cursors"
        for _ in range(16):
            assert bob.recv()["message"]["type"] == "cursorAdded"
        alice.close()
        removed = {bob.recv()["message"]["cursor"]["publicHandle"] for _ in range(16)}
        assert removed == set(handles)
        wait_until(lambda: service.cursor_count("doc") == 0)
        bob.close()


class ReadOnlyGuests(CursorsService):
    def can_join(self, client: Client, document: Any) -> bool:
        return client.identity != "guest"


def test_can_join_override_refuses_with_not_authorized():
    with running_server([ReadOnlyGuests("cursors")], token_secret=SECRET) as server:
        guest, alice = connect(server, "guest"), connect(server, "alice")
        assert guest.call("cursors", "join", document="doc")["message"] == "Not authorized"
        assert alice.call("cursors", "join", document="doc")["data"] == {"cursors": []}
        anonymous = WsClient(server.ws_url)
        assert anonymous.call("cursors", "join", document="doc")["message"] == "Not authenticated"
        for client in (guest, alice, anonymous):
            client.close()


@pytest.mark.parametrize("value", [None, 0, -1.5, "text", [1, [2]], {"a": {"b": None}}])
def test_position_and_status_are_any_json(value):
    with running_server([CursorsService()], token_secret=SECRET) as server:
        alice, bob = connect(server, "alice"), connect(server, "bob")
        alice.call("cursors", "join", document=["doc", 1])
        bob.call("cursors", "join", document=["doc", 1])
        alice.call("cursors", "createCursor", privateHandle="p", document=["doc", 1], position=value, status=value)
        cursor = bob.recv()["message"]["cursor"]
        assert (cursor["position"], cursor["status"], cursor["document"]) == (value, value, ["doc", 1])
        alice.close()
        bob.close()
