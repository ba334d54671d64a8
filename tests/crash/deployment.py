"""The processes of a deployment, as an operator runs them, and the faults the crash tests inject.

- :class:`Node`: one ``manage.py snorky``, either with its outbox relay (the default deployment)
  or ``--no-relay``, next to a :class:`Relay` (``manage.py snorky --relay-only``).
- :class:`RelayKillSwitch`: a proxy between the relay and the server's backend. Armed, it
  lets the next keyed ``publishDeltas`` reach the server, takes the server's answer, and kills the
  relay with SIGKILL before handing the answer on: the relay dies after the server accepted (and
  delivered) the batch and before it could commit the deletion of the batch's entries.
- :class:`Deployment`: the database, the nodes and the relay, and the faults: ``kill_node``,
  ``kill_relay_after_answer``, ``stop_database``.

Every process writes its output to a file in the run's directory; a failure shows their tails.
Nodes keep their ports across restarts, as a service behind a fixed address does.

Several nodes: ``Deployment(nodes=N, broker=True)`` starts a ``redis-server`` (as
tests/redis_server.py does, on a free port, keeping nothing on disk) and N nodes sharing it
(``--broker``), each relaying the outbox (PostgreSQL's row locks keep two relays from sending a
batch twice or out of order). Each client knows every node's URL, its own first, and moves to the
next when a connection fails, so a client of a killed node resumes (by offset) on another. The
faults of several nodes: ``kill_node`` (one node), and ``stop_broker``/``start_broker`` (Redis
killed, then started again empty, as after a crash without persistence).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import psycopg
from backendproxy import BackendProxy
from pgcluster import PostgresCluster, free_port
from redis_server import RedisServer

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
#: Where ``todo_site`` and ``todos`` (the demo's project and app) are imported from.
DEMO = ROOT / "demos" / "todo"
START_TIMEOUT = 30.0
#: The nodes' ``node_timeout`` when they share a broker: how long a killed node's subscriptions
#: stay held before another node may hand them over (the server's default is 15 s).
NODE_TIMEOUT = 4.0


def environment(
    db_port: int, frontend_port: int, backend_port: int, resume_timeout: float, node_timeout: float | None
) -> dict[str, str]:
    """The environment of every process of the deployment (read by ``crash.settings``)."""
    return {
        **({"CRASH_NODE_TIMEOUT": str(node_timeout)} if node_timeout is not None else {}),
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "crash.settings",
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(DEMO), os.environ.get("PYTHONPATH", "")]),
        "CRASH_DB_PORT": str(db_port),
        "CRASH_FRONTEND_ADDRESS": f"127.0.0.1:{frontend_port}",
        "CRASH_BACKEND_ADDRESS": f"127.0.0.1:{backend_port}",
        "CRASH_RESUME_TIMEOUT": str(resume_timeout),
    }


class Process:
    """A child process whose output goes to ``<run dir>/<name>.log`` (appended across restarts)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], run_dir: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = run_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, ready: str | None, timeout: float = START_TIMEOUT) -> None:
        """Starts the process; waits until its log shows ``ready`` (when given)."""
        self._log = self.log_path.open("ab")
        offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        if ready is None:
            return
        deadline = time.monotonic() + timeout
        while ready.encode() not in self.log_path.read_bytes()[offset:]:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not print {ready!r} within {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a crash or the OOM killer."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._reap()

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and waits (SIGKILL after ``timeout``); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()
        return self.process.returncode

    def _reap(self) -> None:
        if self.process is not None:
            self.process.wait(30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return f"({self.name}: no output)"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  {self.name}| {line}" for line in text)


def manage(*args: str) -> list[str]:
    """The command line of ``manage.py`` with ``args`` (``python -m django``, settings from the
    environment)."""
    return [sys.executable, "-m", "django", *args]


class Node:
    """One Snorky server process (``manage.py snorky``) on fixed ports."""

    def __init__(
        self, name: str, db_port: int, resume_timeout: float, run_dir: Path, broker: RedisServer | None = None
    ) -> None:
        self.name = name
        self.frontend_port, self.backend_port = free_port(), free_port()
        node_timeout = NODE_TIMEOUT if broker is not None else None
        self.env = environment(db_port, self.frontend_port, self.backend_port, resume_timeout, node_timeout)
        self.run_dir = run_dir
        self.broker = broker
        self.process: Process | None = None
        self.with_relay = True

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.frontend_port}/ws"

    def start(self, with_relay: bool) -> None:
        self.with_relay = with_relay
        args = ["snorky", "--node-name", self.name] + ([] if with_relay else ["--no-relay"])
        if self.broker is not None:
            args += ["--broker", self.broker.url]
        self.process = Process(self.name, manage(*args), self.env, self.run_dir)
        self.process.start(ready="Starting Snorky server")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()


class Relay:
    """``manage.py snorky --relay-only``, posting to ``backend_address``."""

    def __init__(self, env: dict[str, str], backend_port: int, run_dir: Path) -> None:
        command = manage("snorky", "--relay-only", f"--backend-address=127.0.0.1:{backend_port}")
        self.process = Process("relay", command, env, run_dir)

    def start(self) -> None:
        self.process.start(ready="Relaying the outbox")

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.terminate()


class RelayKillSwitch(BackendProxy):
    """A proxy in front of a node's backend for the relay. ``arm(relay)``: the next
    ``publishDeltas`` with a key is forwarded, and once the server has answered, the relay is killed
    with SIGKILL and the answer never reaches it. ``killed_key`` is that batch's key; ``resent``
    is set when a later request carries the same key (the relay's next life sending it again),
    and ``resent_answer`` is what the server answered it."""

    def __init__(self, target_port: int) -> None:
        self.killed_key: str | None = None
        self.resent = threading.Event()
        self.resent_answer: Any = None
        self._armed: Relay | None = None
        self._killed = threading.Event()
        self._lock = threading.Lock()
        super().__init__(target_port)

    def handle(self, body: bytes, key: str) -> tuple[int, bytes] | None:
        batch = _batch_key(body)
        with self._lock:
            relay = self._armed if batch is not None else None
            if relay is not None:
                self._armed = None
        answer = self.forward(body, key)
        if relay is not None:
            relay.kill()
            self.killed_key = batch
            self._killed.set()
            return None  # the relay is gone: nobody reads an answer
        if batch is not None and batch == self.killed_key:
            self.resent_answer = json.loads(answer[1])
            self.resent.set()
        return answer

    def arm(self, relay: Relay) -> None:
        with self._lock:
            self._armed = relay
            self._killed.clear()
            self.resent.clear()

    def wait_killed(self, timeout: float) -> str:
        """Waits until the armed kill happened; returns the key of the batch it interrupted."""
        if not self._killed.wait(timeout):
            raise AssertionError(f"no keyed publishDeltas reached the server within {timeout} s")
        assert self.killed_key is not None
        return self.killed_key


def _batch_key(body: bytes) -> str | None:
    """The idempotency key of a ``publishDeltas`` body, if it is one with a key."""
    try:
        message = json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(message, dict) or message.get("command") != "publishDeltas":
        return None
    key = message.get("params", {}).get("key")
    return key if isinstance(key, str) else None


class Deployment:
    """The database, the Snorky nodes and, when split, the relay and its kill switch."""

    def __init__(self, run_dir: Path, resume_timeout: float, nodes: int = 1, broker: bool = False) -> None:
        self.run_dir = run_dir
        self.resume_timeout = resume_timeout
        self.db = PostgresCluster(max_connections=100)
        self.broker = RedisServer() if broker else None
        self.nodes = [
            Node(f"node{index}", self.db.port, resume_timeout, run_dir, self.broker) for index in range(nodes)
        ]
        self.relay: Relay | None = None
        self.switch: RelayKillSwitch | None = None
        self.env = self.nodes[0].env

    def prepare_database(self) -> None:
        """Starts PostgreSQL, creates the database and migrates it (the demo's and Snorky's tables,
        the outbox trigger)."""
        self.db.start()
        with psycopg.connect(host=self.db.host, port=self.db.port, user="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE todo")
        result = subprocess.run(
            manage("migrate", "--no-input"), env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{result.stdout}\n{result.stderr}")

    def start_combined(self) -> None:
        """Each node relays the outbox itself (``manage.py snorky``, the default)."""
        for node in self.nodes:
            node.start(with_relay=True)

    def start_split(self) -> None:
        """Nodes without relay, and one ``--relay-only`` process posting to the first node through
        the kill switch."""
        for node in self.nodes:
            node.start(with_relay=False)
        if self.switch is None:
            self.switch = RelayKillSwitch(self.nodes[0].backend_port)
        self.relay = Relay(self.env, self.switch.port, self.run_dir)
        self.relay.start()

    def kill_node(self, index: int = 0) -> None:
        """SIGKILL a node (with its relay, when it runs one)."""
        self.nodes[index].kill()

    def start_node(self, index: int) -> None:
        """Starts a node again (as it was: with its relay or without)."""
        node = self.nodes[index]
        node.start(with_relay=node.with_relay)

    def stop_broker(self) -> None:
        """SIGKILL ``redis-server``: what it held (subscriptions, the delta stream) is lost."""
        assert self.broker is not None, "the deployment has no broker"
        self.broker.stop()

    def stall_broker(self, seconds: float) -> None:
        """SIGSTOP ``redis-server`` for ``seconds``, then SIGCONT: it keeps its data, and the
        commands sent meanwhile run when it goes on (after their senders gave up on them)."""
        assert self.broker is not None and self.broker.process is not None, "the deployment has no broker"
        self.broker.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            self.broker.process.send_signal(signal.SIGCONT)

    def start_broker(self) -> None:
        """Starts ``redis-server`` again on its port, empty."""
        assert self.broker is not None, "the deployment has no broker"
        self.broker.start()

    def kill_relay_after_answer(self, timeout: float) -> str:
        """Kills the relay between the server's answer to a batch and the relay's commit; returns
        the batch's key once the kill happened."""
        assert self.relay is not None and self.switch is not None, "the relay runs in its own process"
        self.switch.arm(self.relay)
        return self.switch.wait_killed(timeout)

    def restart_relay(self) -> None:
        assert self.relay is not None
        self.relay.start()

    def stop_database(self) -> None:
        self.db.stop("fast")

    def start_database(self) -> None:
        self.db.start()

    def processes(self) -> list[Process]:
        found = [node.process for node in self.nodes if node.process is not None]
        return found + ([self.relay.process] if self.relay is not None else [])

    def tails(self) -> str:
        return "\n".join(process.tail() for process in self.processes())

    def close(self) -> None:
        for process in self.processes():
            process.kill()
        if self.switch is not None:
            self.switch.close()
        if self.broker is not None:
            self.broker.close()
        self.db.destroy()
