"""A real Snorky server for the JavaScript client's integration tests, driven over stdin/stdout.

    python server.py [--frontend-port N] [--backend-port N] [--option NAME=JSON ...]

Starts a server on 127.0.0.1 (free ports unless given), with extra ``Server`` options if any
(``--option outbox_limit=65536``), and prints one JSON line:

    {"ready": true, "ws_url": ..., "backend_url": ..., "api_key": ..., "token_secret": ...,
     "frontend_port": ..., "backend_port": ..., "services": [...], "backend_services": [...]}

Then it reads one JSON command per line on stdin and answers each with one JSON line,
``{"id": <the command's id>, "ok": true, "result": ...}`` or ``{"id": ..., "ok": false,
"error": "<text>", "kind": "<exception class>"}``:

- ``{"cmd": "publish", "channel", "message"}``: through ``SnorkyBackend.publish``
- ``{"cmd": "publish_local", "channel", "message"}``: ``PubSubService.publish`` in this process;
  result: the number of subscribers reached
- ``{"cmd": "authorize", "items", "service"?}``: DataSync ``authorizeSubscription``; result: the token
- ``{"cmd": "publish_deltas", "deltas", "service"?}``: DataSync ``publishDeltas``
- ``{"cmd": "token", "identity", "ttl"?, "info"?}``: ``snorky.connection_token``; result: the JWT
- ``{"cmd": "stop"}``: graceful shutdown (clients get close code 1001)
- ``{"cmd": "start", "fresh"?}``: starts again on the same ports with the same service objects
  (so DataSync subscriptions survive and resume), or with new ones when ``fresh`` is true
  (a restarted server process: every subscription is gone); result: like the ready line
- ``{"cmd": "exit"}``: stops the server and exits. End of input does the same.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from snorky import connection_token
from snorky.backend import SnorkyBackend
from snorky.dealers import BroadcastDealer, FilterDealer, SimpleDealer
from snorky.server import Server, ServerHandle
from snorky.services import (
    ChatService,
    Client,
    CursorsService,
    DataSyncBackend,
    DataSyncService,
    MessagingService,
    PubSubBackend,
    PubSubService,
    Request,
    RPCError,
    RPCService,
    rpc_asynchronous,
    rpc_command,
)


class GuardedPubSub(PubSubService):
    """Anyone may publish, except to channels whose name starts with "readonly"."""

    def can_publish(self, client: Client, channel: Any) -> bool:
        return not (isinstance(channel, str) and channel.startswith("readonly"))


class Calculator(RPCService):
    """A service written in Python, reached from JavaScript with ``call()``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.unanswered: list[Request] = []

    @rpc_command
    def add(self, req: Request, a: int, b: int) -> int:
        return a + b

    @rpc_command
    def echo(self, req: Request, value: Any = None) -> Any:
        return value

    @rpc_command
    def whoami(self, req: Request) -> Any:
        client = req.client
        return None if client is None else {"identity": client.identity, "info": client.info}

    @rpc_command
    def refuse(self, req: Request, text: str) -> None:
        raise RPCError(text)

    @rpc_command
    def crash(self, req: Request) -> None:
        raise ValueError("a bug in the service (expected by the test)")

    @rpc_command
    def push(self, req: Request, message: Any) -> bool:
        """Pushes ``{"type": "pushed", "message": ...}`` to the caller before answering."""
        assert req.client is not None
        return self.send_message_to(req.client, {"type": "pushed", "message": message})

    @rpc_command
    async def later(self, req: Request, value: Any) -> Any:
        return {"later": value}

    @rpc_asynchronous
    def deferred(self, req: Request, value: Any) -> None:
        """Answers from another thread."""
        threading.Timer(0.01, lambda: req.reply({"deferred": value})).start()

    @rpc_asynchronous
    def never(self, req: Request) -> None:
        """Never answers (the request is kept: dropping it would answer "Internal error")."""
        self.unanswered.append(req)


class AllTasks(BroadcastDealer):
    model = "Task"


class TasksByOwner(SimpleDealer):
    model = "Task"
    key = "owner.id"


class FilteredTasks(FilterDealer):
    model = "Task"


def build_services() -> tuple[list[Any], list[Any]]:
    """New service objects: the frontend ones and the backend ones."""
    pubsub = GuardedPubSub("pubsub")
    datasync = DataSyncService("datasync", [AllTasks, TasksByOwner, FilteredTasks])
    # A tiny resume buffer: a client away for more than 2 deltas must resync.
    small = DataSyncService("datasync_small", [AllTasks], retention=2)
    frontend: list[Any] = [
        pubsub,
        Calculator("calc"),
        ChatService("chat"),
        CursorsService("cursors"),
        MessagingService("messaging"),
        datasync,
        small,
    ]
    backend: list[Any] = [
        PubSubBackend("pubsub_backend", pubsub),
        DataSyncBackend("datasync_backend", datasync),
        DataSyncBackend("datasync_small_backend", small),
    ]
    return frontend, backend


class Driver:
    def __init__(self, frontend_port: int, backend_port: int, options: dict[str, Any]) -> None:
        self.options = options
        self.api_key = secrets.token_hex(16)
        self.token_secret = secrets.token_hex(16)
        self.frontend_port = frontend_port
        self.backend_port = backend_port
        self.frontend, self.backend = build_services()
        self.handle: ServerHandle | None = None
        self.client: SnorkyBackend | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, fresh: bool = False) -> dict[str, Any]:
        if self.handle is not None and self.handle.running:
            raise RuntimeError("the server is already running")
        if fresh:
            self.frontend, self.backend = build_services()
        options: dict[str, Any] = {"allowed_origins": ["*"], "token_secret": self.token_secret, **self.options}
        server = Server(
            self.frontend,
            self.backend,
            frontend_address=f"127.0.0.1:{self.frontend_port}",
            backend_address=f"127.0.0.1:{self.backend_port}",
            api_key=self.api_key,
            **options,
        )
        self.handle = server.start()
        # Port 0 the first time; the bound ports from then on, so a restart reuses them.
        self.frontend_port = self.handle.frontend_port
        self.backend_port = self.handle.backend_port
        # Generous: a test publishes batches of 20,000 deltas to this debug build while other test
        # files (and, in the test command, the release builds) share the machine; still below the
        # 15 s within which the tests want each command's answer, so a slow call fails with its
        # own error.
        self.client = SnorkyBackend(self.backend_url, self.api_key, timeout=12.0)
        return self.describe()

    def stop(self) -> dict[str, Any]:
        stopped = True
        if self.handle is not None:
            stopped = self.handle.stop(10.0)
            self.handle = None
        return {"stopped": stopped}

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}/backend"

    def describe(self) -> dict[str, Any]:
        return {
            "ws_url": f"ws://127.0.0.1:{self.frontend_port}/ws",
            "backend_url": self.backend_url,
            "api_key": self.api_key,
            "token_secret": self.token_secret,
            "frontend_port": self.frontend_port,
            "backend_port": self.backend_port,
            "services": [service.name for service in self.frontend],
            "backend_services": [service.name for service in self.backend],
        }

    # -- commands -----------------------------------------------------------------------------

    def backend_client(self) -> SnorkyBackend:
        if self.client is None:
            raise RuntimeError("the server was never started")
        return self.client

    def publish(self, channel: Any, message: Any) -> None:
        self.backend_client().publish(channel, message)

    def publish_local(self, channel: Any, message: Any) -> int:
        pubsub: PubSubService = self.frontend[0]
        return pubsub.publish(channel, message)

    def authorize(self, items: list[Any], service: str = "datasync_backend") -> str:
        return self.backend_client().authorize_subscription(items, service=service)

    def publish_deltas(self, deltas: list[Any], service: str = "datasync_backend") -> None:
        self.backend_client().publish_deltas(deltas, service=service)

    def token(self, identity: str, ttl: int = 3600, info: Any = None) -> str:
        return connection_token(identity, self.token_secret, ttl=ttl, info=info)

    def run_command(self, command: dict[str, Any]) -> tuple[Any, bool]:
        """Runs one command; returns its result and whether to exit afterwards."""
        args = {key: value for key, value in command.items() if key not in ("cmd", "id")}
        name = command.get("cmd")
        if name == "exit":
            self.stop()
            return None, True
        handlers: dict[str, Callable[..., Any]] = {
            "publish": self.publish,
            "publish_local": self.publish_local,
            "authorize": self.authorize,
            "publish_deltas": self.publish_deltas,
            "token": self.token,
            "stop": self.stop,
            "start": self.start,
        }
        handler = handlers.get(str(name))
        if handler is None:
            raise ValueError(f"unknown command {name!r}")
        return handler(**args), False


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frontend-port", type=int, default=0)
    parser.add_argument("--backend-port", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], metavar="NAME=JSON", help="a Server option")
    args = parser.parse_args()
    options = {name: json.loads(value) for name, value in (option.split("=", 1) for option in args.option)}

    driver = Driver(args.frontend_port, args.backend_port, options)
    reply({"ready": True, **driver.start()})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            command: dict[str, Any] = {}
            try:
                command = json.loads(line)
                result, done = driver.run_command(command)
            except Exception as error:
                traceback.print_exc(file=sys.stderr)
                reply({"id": command.get("id"), "ok": False, "error": str(error), "kind": type(error).__name__})
                continue
            reply({"id": command.get("id"), "ok": True, "result": result})
            if done:
                return 0
    finally:
        driver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
