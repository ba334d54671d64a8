"""The shared protocol transcripts (``tests/fixtures/protocol/``), replayed against a real server
built through the Python API (``snorky.services``, ``snorky.dealers``): real WebSockets, real HTTP.

The Rust tests (``tests/transcripts.rs``) and the TypeScript client's tests replay the same files;
``tests/fixtures/protocol/README.md`` describes the format. One test per exchange.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from snorky import connection_token
from snorky.dealers import BroadcastDealer, Dealer, FilterDealer, SimpleDealer
from snorky.services import (
    ChatService,
    ConnectionsBackend,
    CursorsService,
    DataSyncBackend,
    DataSyncService,
    MessagingService,
    PubSubBackend,
    PubSubService,
)
from snorky.testing import RunningServer, running_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "protocol"
SECRET = "transcript-token-secret-0123456789"
WAIT = 10.0
LEFTOVER_WAIT = 0.02
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00")
TOKEN = re.compile(r"[a-z0-9]{32}")
# Where ``$offset:N`` remembers the epoch of the offsets received, which no transcript can name.
EPOCH = "$offset epoch"


def exchanges() -> Iterator[Any]:
    files = sorted((FIXTURES / "transcripts").glob("*.json"))
    assert files, "no transcripts"
    for path in files:
        transcript = json.loads(path.read_text())
        for exchange in transcript["exchanges"]:
            yield pytest.param(transcript["server"], exchange, id=f"{path.stem}: {exchange['name']}")


# ---------------------------------------------------------------------------------------------
# The server a transcript asks for
# ---------------------------------------------------------------------------------------------


def decider(spec: dict[str, Any]) -> Callable[[Any], bool] | None:
    """The transcript's policy: subjects in ``deny`` are refused, in ``fail`` the hook raises."""
    policy = spec.get("policy")
    if policy is None:
        return None
    deny, fail = policy.get("deny", []), policy.get("fail", [])

    def decide(subject: Any) -> bool:
        if subject in fail:
            raise RuntimeError(f"the transcript's policy fails for {subject!r}")
        return subject not in deny

    return decide


# Each kind of service with a policy hook, and the hook's name.
HOOKS: dict[str, tuple[type, str]] = {
    "pubsub": (PubSubService, "can_publish"),
    "chat": (ChatService, "can_join"),
    "cursors": (CursorsService, "can_join"),
    "messaging": (MessagingService, "is_name_allowed"),
}


def frontend_service(spec: dict[str, Any]) -> Any:
    kind, name, decide = spec["kind"], spec["name"], decider(spec)
    if kind == "datasync":
        return DataSyncService(name, [dealer(d) for d in spec.get("dealers", [])], **spec.get("limits", {}))
    assert kind in HOOKS, f"unknown frontend service kind {kind!r}"
    base, hook = HOOKS[kind]
    limits = spec.get("limits", {})
    if decide is None:
        return base(name, **limits)
    # A subclass overriding the hook, as an application would write it.
    listed = type(f"Listed{base.__name__}", (base,), {hook: lambda self, client, subject: decide(subject)})
    return listed(name, **limits)


def dealer(spec: dict[str, Any]) -> Dealer:
    if spec["kind"] == "broadcast":
        return BroadcastDealer(name=spec["name"], model=spec["model"])
    if spec["kind"] == "simple":
        return SimpleDealer(name=spec["name"], model=spec["model"], key=spec["key"])
    if spec["kind"] == "filter":
        return FilterDealer(name=spec["name"], model=spec["model"])
    raise AssertionError(f"unknown dealer kind {spec['kind']!r}")


def services(server: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    frontend = [frontend_service(spec) for spec in server.get("frontend", [])]
    by_name = {service.name: service for service in frontend}
    backend: list[Any] = []
    for spec in server.get("backend", []):
        if spec["kind"] == "connections":
            backend.append(ConnectionsBackend(spec["name"]))
            continue
        twin = by_name[spec["frontend"]]
        kinds = {"pubsub_backend": PubSubBackend, "datasync_backend": DataSyncBackend}
        backend.append(kinds[spec["kind"]](spec["name"], twin))
    return frontend, backend


def options(server: dict[str, Any]) -> dict[str, Any]:
    config = {key: (SECRET if value == "$secret" else value) for key, value in server.get("config", {}).items()}
    # The Python test helper allows every origin by default; the transcripts mean the server's default.
    config.setdefault("allowed_origins", [])
    return config


# ---------------------------------------------------------------------------------------------
# Values that vary
# ---------------------------------------------------------------------------------------------


def same_json(expected: Any, actual: Any) -> bool:
    """JSON equality: numbers by value, but a boolean is not a number."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    return type(expected) is type(actual) and expected == actual


def check(expected: Any, actual: Any, captures: dict[str, Any], at: str) -> None:
    """Checks ``actual`` against ``expected`` (exact but for the notations), remembering captures."""
    mismatch = f"at {at}: expected {json.dumps(expected)}, got {json.dumps(actual)}"
    if isinstance(expected, str) and expected.startswith("$") and not expected.startswith("$$"):
        kind, _, name = expected[1:].partition(":")
        if kind == "prefix":
            assert isinstance(actual, str) and actual.startswith(name), mismatch
            return
        if kind == "ref":
            assert name in captures and same_json(captures[name], actual), mismatch
            return
        if kind == "offset":
            # `N`, or `<epoch>-N` from nodes sharing a broker (remembered for the offsets sent).
            assert isinstance(actual, str), mismatch
            epoch, _, position = actual.rpartition("-")
            assert position == name and (epoch == "" or epoch.isdigit()), mismatch
            if epoch:
                captures[EPOCH] = f"{epoch}-"
            return
        fits = {
            "any": lambda: True,
            "timestamp": lambda: isinstance(actual, str) and TIMESTAMP.fullmatch(actual) is not None,
            "token": lambda: isinstance(actual, str) and TOKEN.fullmatch(actual) is not None,
            "int": lambda: isinstance(actual, int) and not isinstance(actual, bool),
        }.get(kind)
        assert fits is not None, f"at {at}: unknown notation {expected!r}"
        assert fits(), mismatch
        if name:
            captures[name] = actual
    elif isinstance(expected, str):
        assert actual == (expected[1:] if expected.startswith("$$") else expected), mismatch
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), mismatch
        assert sorted(expected) == sorted(actual), f"at {at}: expected the fields {sorted(expected)}, got {actual}"
        for key, value in expected.items():
            check(value, actual[key], captures, f"{at}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), mismatch
        for index, (value, got) in enumerate(zip(expected, actual, strict=True)):
            check(value, got, captures, f"{at}[{index}]")
    else:
        assert same_json(expected, actual), mismatch


def resolve(value: Any, captures: dict[str, Any]) -> Any:
    """A value to send, with ``$ref:NAME`` and ``$offset:N`` replaced and ``$$`` unescaped."""
    if isinstance(value, str) and value.startswith("$ref:"):
        return captures[value[5:]]
    if isinstance(value, str) and value.startswith("$$"):
        return value[1:]
    if isinstance(value, str) and value.startswith("$offset:"):
        return f"{captures.get(EPOCH, '')}{value[8:]}"
    assert not (isinstance(value, str) and value.startswith("$")), f"{value!r} cannot be sent"
    if isinstance(value, list):
        return [resolve(item, captures) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, captures) for key, item in value.items()}
    return value


def claims(value: Any) -> Any:
    """A token's claims with ``"$now"``, ``"$now+N"`` and ``"$now-N"`` replaced by Unix times."""
    if isinstance(value, str) and value.startswith("$now"):
        return int(time.time()) + int(value[4:] or 0)
    if isinstance(value, dict):
        return {key: claims(item) for key, item in value.items()}
    return value


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(spec: dict[str, Any]) -> str:
    """The token text a ``connect`` step's ``token`` describes (HS256 signed with the stdlib)."""
    if "raw" in spec:
        return str(spec["raw"]) * int(spec.get("repeat", 1))
    header = b64url(json.dumps(spec.get("header", {"alg": "HS256", "typ": "JWT"})).encode())
    payload = b64url(json.dumps(claims(spec["claims"])).encode())
    secret = spec.get("secret", SECRET).encode()
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def pad(text: str, spec: dict[str, Any]) -> str:
    size = spec.get("pad_to")
    if size is None:
        return text
    assert size >= len(text.encode()), f"pad_to {size} is shorter than the text"
    return text + " " * (size - len(text.encode()))


# ---------------------------------------------------------------------------------------------
# Replaying
# ---------------------------------------------------------------------------------------------


class Replay:
    def __init__(self, server: RunningServer, stack: ExitStack) -> None:
        self.server = server
        self.stack = stack
        self.clients: dict[str, ClientConnection] = {}
        self.captures: dict[str, Any] = {}

    def step(self, step: dict[str, Any]) -> None:
        if "connect" in step:
            self.connect(step["connect"], step)
        elif "send" in step:
            self.send(self.clients[step["send"]], step)
        elif "recv" in step:
            text = self.clients[step["recv"]].recv(timeout=WAIT)
            assert isinstance(text, str), f"expected a text frame, got {text!r}"
            check(step["frame"], json.loads(text), self.captures, "frame")
        elif "closed" in step:
            client = self.clients.pop(step["closed"])
            with pytest.raises(ConnectionClosed) as closed:
                frame = client.recv(timeout=WAIT)
                raise AssertionError(f"expected a close frame, got {frame!r}")
            assert closed.value.rcvd is not None, "the server closed without a close frame"
            check(step["code"], closed.value.rcvd.code, self.captures, "close code")
        elif "close" in step:
            self.clients.pop(step["close"]).close()
        elif "wait" in step:
            time.sleep(step["wait"])
        elif "shutdown" in step:
            assert self.server.handle.stop(WAIT), "the server stops"
        elif "http" in step:
            self.http(step["http"], step)
        else:
            raise AssertionError(f"unknown step {step}")

    def connect(self, name: str, step: dict[str, Any]) -> None:
        url = self.server.ws_url
        if "identity" in step:
            url += "?token=" + connection_token(step["identity"], SECRET, 3600)
        elif "token" in step:
            url += "?token=" + token(step["token"])
        elif "query" in step:
            url += "?" + step["query"]
        headers = {"Origin": step["origin"]} if "origin" in step else None
        refused = step.get("refused")
        if refused is None:
            self.clients[name] = self.stack.enter_context(connect(url, open_timeout=WAIT, additional_headers=headers))
            return
        with pytest.raises(InvalidStatus) as failure:
            connect(url, open_timeout=WAIT, additional_headers=headers).close()
        response = failure.value.response
        check(refused["status"], response.status_code, self.captures, "status")
        check(refused["body"], response.body.decode(), self.captures, "body")

    def send(self, client: ClientConnection, step: dict[str, Any]) -> None:
        if "binary" in step:
            client.send(base64.b64decode(step["binary"]))
        elif "text_bytes" in step:
            client.send(base64.b64decode(step["text_bytes"]), text=True)
        elif "frame" in step:
            client.send(pad(json.dumps(resolve(step["frame"], self.captures)), step))
        else:
            client.send(pad(step["text"], step))

    def http(self, request: dict[str, Any], step: dict[str, Any]) -> None:
        port = (
            self.server.handle.frontend_port
            if request.get("listener") == "frontend"
            else self.server.handle.backend_port
        )
        headers: list[tuple[str, str]] = []
        key = request.get("key", self.server.api_key)
        for each in key if isinstance(key, list) else [] if key is None else [key]:
            headers.append(("X-Backend-Key", self.server.api_key if each == "$key" else each))
        body: str | None = None
        if "body" in request:
            body = json.dumps(resolve(request["body"], self.captures))
        elif "text" in request:
            body = request["text"]
        if body is not None:
            body = pad(body, request)
            headers.append(("Content-Type", "application/json"))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        try:
            # The server may answer (413 from the announced length) and close before reading the
            # whole body; its answer is then waiting in the socket.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # Header by header: a header may be repeated.
                connection.putrequest(request.get("method", "POST"), request.get("path", "/backend"))
                payload = None if body is None else body.encode()
                for name, value in headers:
                    connection.putheader(name, value)
                if payload is not None:
                    connection.putheader("Content-Length", str(len(payload)))
                connection.endheaders(payload)
            response = connection.getresponse()
            status, answer = response.status, response.read().decode()
        finally:
            connection.close()
        check(step["status"], status, self.captures, "status")
        if "answer_text" in step:
            assert step["answer_text"] in answer, f"{step['answer_text']!r} is not in {answer!r}"
        else:
            check(step["answer"], json.loads(answer), self.captures, "answer")

    def no_leftovers(self) -> None:
        for name, client in self.clients.items():
            try:
                frame = client.recv(timeout=LEFTOVER_WAIT)
            except TimeoutError:
                continue
            raise AssertionError(f"client {name} received a frame no step expected: {frame!r}")


@pytest.mark.parametrize(("server", "exchange"), list(exchanges()))
def test_transcript(server: dict[str, Any], exchange: dict[str, Any]) -> None:
    frontend, backend = services(server)
    with running_server(frontend, backend, **options(server)) as running, ExitStack() as stack:
        replay = Replay(running, stack)
        for index, step in enumerate(exchange["steps"], start=1):
            try:
                replay.step(step)
            except AssertionError as error:
                raise AssertionError(f"step {index} {json.dumps(step)[:300]}: {error}") from None
        replay.no_leftovers()


def test_the_matcher_reports_what_differs() -> None:
    captures: dict[str, Any] = {}
    check({"a": ["$token:t", "$timestamp"]}, {"a": ["a" * 32, "2026-05-01T12:34:56.789+00:00"]}, captures, "x")
    assert captures == {"t": "a" * 32}
    assert resolve({"token": "$ref:t", "text": "$$1"}, captures) == {"token": "a" * 32, "text": "$1"}
    # Offsets: one server's, then a broker's, whose epoch the offsets sent later take.
    assert resolve("$offset:3", captures) == "3"
    check("$offset:2", "2", captures, "x")
    check("$offset:2", "1714560000000-2", captures, "x")
    assert resolve({"after": "$offset:3"}, captures) == {"after": "1714560000000-3"}
    for expected, actual in [
        ({"a": 1}, {"a": 1, "b": 2}),
        ([1, 2], [2, 1]),
        (1, True),
        ("$int", 1.5),
        ("$timestamp", "x"),
        ("$offset:2", "12"),
        ("$offset:2", "x-2"),
    ]:
        with pytest.raises(AssertionError):
            check(expected, actual, captures, "x")
