"""Connection identity through the public API: ``snorky.connection_token``, the ``token_secret``
option, and what a connection's identity looks like to services and hooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from wsclient import WsClient

import snorky
from snorky.services import ChatService, Client, MessagingService
from snorky.testing import running_server

SECRET = "python-test-token-secret"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], secret: str = SECRET) -> str:
    """A JWT made with the standard library only, to check interoperability and edge cases."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An "alg": "none" token: no signature at all."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def decode_part(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def refused(url: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        WsClient(url)
    response = info.value.response
    return response.status_code, response.body.decode()


class Recorder(MessagingService):
    def __init__(self) -> None:
        super().__init__("messaging")
        self.clients: list[Client] = []

    def is_name_allowed(self, client: Client, name: str) -> bool:
        self.clients.append(client)
        return True


def test_connection_token_is_a_standard_hs256_jwt():
    before = int(time.time())
    token = snorky.connection_token("alice", SECRET, ttl=120, info={"name": "Alice", "roles": ["editor"]})
    header, claims, signature = token.split(".")
    assert decode_part(header) == {"alg": "HS256", "typ": "JWT"}
    payload = decode_part(claims)
    assert payload["sub"] == "alice"
    assert payload["info"] == {"name": "Alice", "roles": ["editor"]}
    assert before + 120 <= payload["exp"] <= int(time.time()) + 120
    expected = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    assert signature == b64(expected)
    assert "info" not in decode_part(snorky.connection_token("bob", SECRET).split(".")[1])


def test_connection_token_checks_its_arguments():
    with pytest.raises(ValueError, match="identity"):
        snorky.connection_token("", SECRET)
    with pytest.raises(ValueError, match="16 characters"):
        snorky.connection_token("alice", "short")
    for ttl in (0, -5):
        with pytest.raises(ValueError, match="ttl"):
            snorky.connection_token("alice", SECRET, ttl=ttl)
    with pytest.raises(TypeError, match="info"):
        snorky.connection_token("alice", SECRET, info=["not", "a", "dict"])  # type: ignore[arg-type]
    # A token the server would refuse (over 8 KiB) is not issued.
    with pytest.raises(ValueError, match="over the 8192 the server accepts: make its info smaller"):
        snorky.connection_token("alice", SECRET, info={"bio": "b" * 8000})
    assert len(snorky.connection_token("alice", SECRET, info={"bio": "b" * 5000})) <= 8192


def test_a_token_gives_the_connection_its_identity_and_info():
    service = Recorder()
    with running_server([service, ChatService()], token_secret=SECRET) as server:
        info = {"name": "Alice Liddell", "avatar": "/a.png"}
        alice = WsClient(f"{server.ws_url}?token={snorky.connection_token('alice', SECRET, info=info)}")
        anonymous = WsClient(server.ws_url)
        assert alice.call("chat", "join", channel="lobby")["data"] == {"members": ["alice"]}
        assert anonymous.call("chat", "join", channel="lobby")["message"] == "Not authenticated"
        alice.call("messaging", "registerParticipant", name="a")
        anonymous.call("messaging", "registerParticipant", name="b")
        seen_alice, seen_anonymous = service.clients
        assert seen_alice.identity == "alice"
        assert seen_alice.info == info
        assert seen_anonymous.identity is None
        assert seen_anonymous.info is None
        alice.close()
        anonymous.close()


def test_a_token_made_by_another_jwt_implementation_is_accepted():
    token = forge({"alg": "HS256", "typ": "JWT"}, {"sub": "carol", "exp": int(time.time()) + 60, "iat": 0})
    with running_server([ChatService()], token_secret=SECRET) as server:
        client = WsClient(f"{server.ws_url}?token={token}")
        assert client.call("chat", "join", channel="c")["data"] == {"members": ["carol"]}
        client.close()


# Made when the module is collected, maybe minutes before the test runs: valid for an hour.
LATER = int(time.time()) + 3600


@pytest.mark.parametrize(
    ("token", "text"),
    [
        (forge({"alg": "HS256"}, {"sub": "alice", "exp": int(time.time()) - 60}), "expired"),
        (snorky.connection_token("alice", "another-secret-of-16"), "signature"),
        ("not-a-token", "malformed"),
        ("a.b.c", "malformed"),
        (forge({"alg": "HS256"}, {"exp": LATER}), "sub"),
        (forge({"alg": "HS256"}, {"sub": "", "exp": LATER}), "sub"),
        (forge({"alg": "HS256"}, {"sub": "alice"}), "exp"),
        (forge({"alg": "HS512"}, {"sub": "alice", "exp": LATER}), "HS256"),
        (unsigned({"alg": "none", "typ": "JWT"}, {"sub": "root", "exp": LATER}), "HS256"),
    ],
    ids=["expired", "wrong-secret", "garbage", "bad-base64", "no-sub", "empty-sub", "no-exp", "hs512", "alg-none"],
)
def test_bad_tokens_fail_the_handshake_with_401(token, text):
    with running_server([ChatService()], token_secret=SECRET) as server:
        status, body = refused(f"{server.ws_url}?token={token}")
        assert status == 401
        assert text in body


def test_a_token_is_refused_when_the_server_has_no_token_secret():
    with running_server([ChatService()]) as server:
        status, body = refused(f"{server.ws_url}?token={snorky.connection_token('alice', SECRET)}")
        assert status == 401
        assert "server has no token_secret" in body
        client = WsClient(server.ws_url)
        assert client.call("chat", "join", channel="c")["message"] == "Not authenticated"
        client.close()


def test_a_short_token_secret_is_a_configuration_error():
    with pytest.raises(snorky.ConfigurationError, match="token_secret"):
        snorky.Server([ChatService()], api_key="k" * 20, token_secret="short")
