"""Crash tests with the database as the truth.

    PYTHONPATH=tests:demos/todo .venv/bin/python -m crash            # the short run (make test-crash)
    PYTHONPATH=tests:demos/todo .venv/bin/python -m crash --long     # the long one (make crash)
    PYTHONPATH=tests:demos/todo .venv/bin/python -m crash --nodes 2  # two nodes sharing a Redis

The todo demo's models on a PostgreSQL server of the run's own, outbox delivery, clients
subscribed to the demo's API (see :mod:`crash.clients`), writers committing all along (see
:mod:`crash.writers`), and clients dropping their connections now and then and reconnecting
within the resume timeout. Then, phase by phase, a fault in the middle of the stream:

- ``database``: PostgreSQL stopped (``pg_ctl stop -m fast``) for 10 s, then started again;
- ``server``: ``manage.py snorky`` (server and relay) killed with SIGKILL, then started again
  (alternately as one process, and as a server with a ``--relay-only`` process beside it);
- ``relay``: only the relay killed with SIGKILL after the server answered a batch and before the
  relay committed its deletion, then started again.

``--nodes 2`` runs the same on several nodes: N ``manage.py snorky`` processes (each relaying the
outbox) sharing a ``redis-server``, each client on one node and moving to the next when its node
cannot be reached. Its faults:

- ``node``: one node killed with SIGKILL (the nodes in turn), started again a second later; its
  clients move to another node and resume there by offset once the dead node's subscriptions are
  handed over (``node_timeout``, 4 s here): none may need a refetch;
- ``broker``: ``redis-server`` killed, started again empty 5 s later. Nodes keep their
  connections; the backend answers 503 meanwhile (the relays retry); once Redis is back, the
  subscriptions it lost are closed with 1008 and their clients, told "Offset not retained" or
  "No such subscription", refetch (counted as resyncs after a broker restart);
- ``stall``: ``redis-server`` stopped with SIGSTOP for 5 s, then continued, with its data: what
  the nodes sent meanwhile runs late, after they gave up on it (an acquisition answered "Service
  unavailable" still takes its subscription, which its node then gives back). Clients resume by
  offset: none may need a refetch.

At the end of each phase the writers stop, the outbox drains, a last change (the *marker*, a
todo every user sees) is committed, and once every client holds it, every client's rows are
compared, field by field, with what the database says its user sees. The run fails on any
difference, on any delta a lineage received twice or out of order, on a client that had to
refetch although it reconnected within the resume timeout, and when the relay's kill did not
land between the answer and the commit; it reports, per phase, the deltas received, resumes and
resyncs (full refetches) by cause.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crash.clients import Client, Restarts, Tally
from crash.deployment import Deployment, Process

#: How long the outbox may take to drain, and every client to reach the marker, after a phase.
SETTLE_TIMEOUT = 90.0
#: How long the relay kill may wait for a keyed batch.
KILL_TIMEOUT = 30.0
#: How long PostgreSQL stays down.
DATABASE_DOWN = 10.0
#: How long Redis stays down (several nodes).
BROKER_DOWN = 5.0


@dataclass
class Options:
    clients: int
    users: int
    writers: int
    rate: float
    phase_seconds: float
    resume_timeout: float
    cuts_per_second: float
    late_cut_share: float
    abrupt_cuts: str
    offsets: bool
    phases: list[str]
    nodes: int
    seed: int
    keep: bool


def parse_options() -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m crash", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--long", action="store_true", help="5 rounds of every fault, a minute per phase, late reconnections"
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=3.0, help="transactions per second and writer")
    parser.add_argument("--phase-seconds", type=float, help="writing time of each phase (the fault is in its middle)")
    parser.add_argument("--resume-timeout", type=float, help="the server's RESUME_TIMEOUT")
    parser.add_argument("--cuts-per-second", type=float, default=4.0, help="clients dropping their connection")
    parser.add_argument(
        "--abrupt-cuts",
        choices=("auto", "on", "off"),
        default="auto",
        help="half the cuts drop the connection without a close frame, losing what is in flight: "
        "always, never, or (auto) when the clients resume by offset, without which such a "
        "resume may miss the deltas in flight",
    )
    parser.add_argument("--no-offsets", action="store_true", help="clients resume as Snorky 0.1's do, without offsets")
    parser.add_argument(
        "--nodes", type=int, default=1, help="several nodes sharing a redis-server (faults: a node killed, Redis lost)"
    )
    parser.add_argument("--rounds", type=int, help="repetitions of the phases")
    parser.add_argument(
        "--phases",
        help="the faults to inject, in order, comma-separated (instead of the default ones): database, server, "
        "relay; with --nodes: node, broker, stall, database",
    )
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (process logs)")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.long else 1)
    # A round: the database, then the server (killed as one process, started as server + relay),
    # then the relay alone; a long run also kills the split deployment and starts it as one process.
    if args.nodes > 1:
        # Several nodes: a node killed, Redis stalled, then Redis lost; a long run also stops the
        # database.
        phases = (
            ["node", "stall", "broker"]
            if rounds == 1 and not args.long
            else ["node", "stall", "broker", "database", "node"]
        )
    else:
        phases = (
            ["database", "server", "relay"]
            if rounds == 1 and not args.long
            else ["database", "server", "relay", "server"]
        )
    if args.phases:
        phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
        known = {"node", "broker", "stall", "database"} if args.nodes > 1 else {"database", "server", "relay"}
        if not phases or not set(phases) <= known:
            parser.error(f"--phases: choose among {', '.join(sorted(known))}")
    return Options(
        clients=args.clients,
        users=args.users,
        writers=args.writers,
        rate=args.rate,
        phase_seconds=args.phase_seconds or (60.0 if args.long else 6.0),
        # Long enough that a client held up by its own process (200 clients in one Python
        # process, on a loaded machine) still comes back in time; the server's default is 60 s.
        resume_timeout=args.resume_timeout or 30.0,
        cuts_per_second=args.cuts_per_second,
        late_cut_share=0.1 if args.long else 0.0,
        abrupt_cuts=args.abrupt_cuts,
        offsets=not args.no_offsets,
        phases=phases * rounds,
        nodes=max(args.nodes, 1),
        seed=args.seed,
        keep=args.keep,
    )


class Harness:
    def __init__(self, options: Options, run_dir: Path) -> None:
        self.options = options
        self.run_dir = run_dir
        self.random = random.Random(options.seed)
        self.deployment = Deployment(run_dir, options.resume_timeout, options.nodes, broker=options.nodes > 1)
        os.environ.update(
            {key: value for key, value in self.deployment.env.items() if key.startswith(("CRASH_", "DJANGO_"))}
        )
        self.tally = Tally()
        self.restarts = Restarts()
        self.clients: list[Client] = []
        self.marker_id = 0
        self.marker_version = 0
        self.user_ids: list[int] = []
        self.report: list[dict[str, Any]] = []
        #: Where the run is, for the failure's last line: "phase 2 (stall)", "start-up".
        self.stage = "start-up"
        self.combined = True
        self.nodes_killed = 0

    # --- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """The database, users, the marker todo; Django set up in this process."""
        self.deployment.prepare_database()
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from todos.models import Todo

        users = [
            # No password: the clients log in with force_login, and hashing one takes a while.
            get_user_model().objects.create_user(f"user{index:02}")
            for index in range(self.options.users)
        ]
        self.user_ids = [user.pk for user in users]
        self.marker_id = Todo.objects.create(title="marker v0", owner=users[0], shared=True).pk

    def make_client(self, index: int) -> Client:
        from django.contrib.auth import get_user_model
        from django.db import close_old_connections
        from django.test import Client as HttpClient

        import snorky_django

        user = get_user_model().objects.get(pk=self.user_ids[index % len(self.user_ids)])
        http = HttpClient(raise_request_exception=False)
        http.force_login(user)

        def fetch() -> tuple[dict[int, dict[str, Any]], str] | None:
            try:
                response = http.get("/api/todos/", headers={"X-Snorky": "Subscribe"})
            finally:
                close_old_connections()
            if response.status_code != 200:
                return None
            return {row["id"]: row for row in response.json()}, response["X-Subscription-Token"]

        def connection_token() -> str:
            return str(snorky_django.connection_token(user))

        nodes = self.deployment.nodes
        first = index % len(nodes)
        return Client(
            index,
            user.pk,
            [node.ws_url for node in nodes[first:] + nodes[:first]],
            fetch,
            connection_token,
            self.tally,
            self.restarts,
            self.options.resume_timeout,
            self.options.seed + index,
            offsets=self.options.offsets,
        )

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> None:
        # Fetches and ORM calls run on worker threads and mostly wait (for PostgreSQL, for the
        # server's authorization): after a restart, 200 clients fetch at once.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=16))
        started = time.monotonic()
        await asyncio.to_thread(self.prepare)
        prepared = time.monotonic()
        self.deployment.start_combined()
        self.clients = list(
            await asyncio.gather(*(asyncio.to_thread(self.make_client, index) for index in range(self.options.clients)))
        )
        for client in self.clients:
            client.start()
        try:
            await self.wait_for(lambda: all(client.ready for client in self.clients), "every client subscribed")
        except AssertionError as err:
            waiting = [client for client in self.clients if not client.ready][:3]
            raise AssertionError(f"{err}; the last events of some:\n{self.events_of(waiting)}") from None
        print(
            f"crash: database ready in {prepared - started:.1f} s, {len(self.clients)} clients of "
            f"{self.options.users} users subscribed {time.monotonic() - prepared:.1f} s later"
            f"{f' on {self.options.nodes} nodes sharing a Redis' if self.options.nodes > 1 else ''} "
            f"(seed {self.options.seed})",
            flush=True,
        )
        for number, phase in enumerate(self.options.phases, 1):
            await self.phase(number, phase)
        for client in self.clients:
            await client.stop()

    async def phase(self, number: int, fault: str) -> None:
        self.stage = f"phase {number} ({fault})"
        self.tally.reset()
        started = time.monotonic()
        writers = await asyncio.to_thread(self.start_writers, number)
        churn = asyncio.create_task(self.churn())
        try:
            await asyncio.sleep(self.options.phase_seconds / 2)
            details = await getattr(self, f"fault_{fault}")()
            await asyncio.sleep(self.options.phase_seconds / 2)
        except BaseException:
            # A fault that failed must not leave the writers writing after the run.
            writers.kill()
            raise
        finally:
            churn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await churn
        counts = await asyncio.to_thread(self.stop_writers, writers)
        rows = await self.settle()
        entry = {
            "phase": number,
            "fault": fault,
            "seconds": round(time.monotonic() - started, 1),
            **details,
            "commits": counts.get("commits"),
            "changes": counts.get("changes"),
            "failed transactions": counts.get("failures"),
            "deltas received": self.tally.deltas,
            "stale deltas (just after a fetch)": self.tally.stale,
            "offsets": self.tally.offsets,
            "cuts": dict(self.tally.cuts),
            "closed with 1008": self.tally.closed_1008,
            "resumes": dict(self.tally.resumes),
            "resyncs": dict(self.tally.resyncs),
            "rows compared": rows,
        }
        self.report.append(entry)
        print(f"crash: phase {number} ({fault}): {json.dumps(entry)}", flush=True)
        problems = list(self.tally.violations)
        if self.tally.resyncs.get("a lost connection", 0):
            problems.append(
                f"{self.tally.resyncs['a lost connection']} clients lost their subscription without a server restart"
            )
            problems += self.tally.lost[:5]
        if problems:
            events = self.events_of(self.named(problems))
            raise AssertionError("\n".join(problems[:50]) + f"\nthe last events of some of these clients:\n{events}")

    def start_writers(self, number: int) -> Process:
        users = ",".join(str(user) for user in self.user_ids)
        command = [
            sys.executable,
            "-m",
            "crash.writers",
            "--writers",
            str(self.options.writers),
            "--rate",
            str(self.options.rate),
            "--users",
            users,
            "--seed",
            str(self.options.seed + number),
        ]
        writers = Process("writers", command, self.deployment.env, self.run_dir)
        writers.start(ready="writing")
        return writers

    def stop_writers(self, writers: Process) -> dict[str, int]:
        writers.terminate(timeout=60)
        lines = writers.log_path.read_text().strip().splitlines()
        try:
            counts: dict[str, int] = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise AssertionError(f"the writers did not report their counts:\n{writers.tail()}") from None
        return counts

    async def churn(self) -> None:
        """Clients dropping their connections and coming back, most within the resume timeout."""
        if self.options.cuts_per_second <= 0:
            return
        while True:
            await asyncio.sleep(self.random.expovariate(self.options.cuts_per_second))
            client = self.random.choice(self.clients)
            if self.random.random() < self.options.late_cut_share:
                delay = self.options.resume_timeout + 3.0
            else:
                delay = self.random.uniform(0.1, min(3.0, self.options.resume_timeout / 2))
            abrupt = self.options.abrupt_cuts == "on" or (
                self.options.abrupt_cuts == "auto" and bool(self.tally.offsets)
            )
            client.cut(delay, abrupt=abrupt and self.random.random() < 0.5)

    # --- the faults --------------------------------------------------------------------------------

    async def fault_database(self) -> dict[str, Any]:
        await asyncio.to_thread(self.deployment.stop_database)
        await asyncio.sleep(DATABASE_DOWN)
        await asyncio.to_thread(self.deployment.start_database)
        return {"database down (s)": DATABASE_DOWN}

    async def fault_server(self) -> dict[str, Any]:
        was = "one process" if self.combined else "server and --relay-only"
        for process in self.deployment.processes():
            process.kill()
        self.restarts.count += 1
        self.restarts.cause = "a server restart"
        await asyncio.sleep(1.0)
        self.combined = not self.combined
        if self.combined:
            await asyncio.to_thread(self.deployment.start_combined)
        else:
            await asyncio.to_thread(self.deployment.start_split)
        now = "one process" if self.combined else "server and --relay-only"
        return {"killed": was, "started": now}

    async def fault_node(self) -> dict[str, Any]:
        """One node killed, the nodes in turn; started again a second later. Not a restart of the
        server: its clients must resume elsewhere without a refetch."""
        index = self.nodes_killed % len(self.deployment.nodes)
        self.nodes_killed += 1
        node = self.deployment.nodes[index]
        on_it = sum(client.ready and client.urls[0] == node.ws_url for client in self.clients)
        await asyncio.to_thread(self.deployment.kill_node, index)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.deployment.start_node, index)
        return {"killed": node.name, "its clients": on_it}

    async def fault_broker(self) -> dict[str, Any]:
        """Redis killed and started again, empty: the subscriptions it held are gone."""
        await asyncio.to_thread(self.deployment.stop_broker)
        self.restarts.count += 1
        self.restarts.cause = "a broker restart"
        await asyncio.sleep(BROKER_DOWN)
        await asyncio.to_thread(self.deployment.start_broker)
        return {"broker down (s)": BROKER_DOWN}

    async def fault_stall(self) -> dict[str, Any]:
        """Redis stopped (SIGSTOP) and continued: unreachable for a while, but with its data."""
        await asyncio.to_thread(self.deployment.stall_broker, BROKER_DOWN)
        return {"broker stalled (s)": BROKER_DOWN}

    async def fault_relay(self) -> dict[str, Any]:
        if self.combined:
            raise AssertionError("the relay fault needs the split deployment (a server phase first)")
        key = await asyncio.to_thread(self.deployment.kill_relay_after_answer, KILL_TIMEOUT)
        left = await asyncio.to_thread(self.entries_of_batch, key)
        if left == 0:
            raise AssertionError(f"the relay committed batch {key} although killed before its commit")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.deployment.restart_relay)
        switch = self.deployment.switch
        assert switch is not None
        if not await asyncio.to_thread(switch.resent.wait, KILL_TIMEOUT):
            raise AssertionError(f"the restarted relay never sent batch {key} again")
        answer = switch.resent_answer
        if answer.get("message", {}).get("type") != "response":
            raise AssertionError(f"the server refused the repeated batch {key}: {answer}")
        return {"batch interrupted": key, "its entries left in the outbox": left}

    # --- the check ---------------------------------------------------------------------------------

    def entries_of_batch(self, key: str) -> int:
        from django.db import connection

        from snorky_django.models import OutboxEntry

        try:
            return int(OutboxEntry.objects.filter(batch=key).count())
        finally:
            connection.close()

    def outbox_size(self) -> int:
        from django.db import connection

        from snorky_django.models import OutboxEntry

        try:
            return int(OutboxEntry.objects.count())
        finally:
            connection.close()

    def bump_marker(self) -> int:
        from django.db import connection
        from todos.models import Todo

        try:
            todo = Todo.objects.get(pk=self.marker_id)
            self.marker_version += 1
            todo.title = f"marker v{self.marker_version}"
            todo.save()
            return self.marker_version
        finally:
            connection.close()

    def committed_views(self) -> dict[int, dict[int, dict[str, Any]]]:
        """What each user sees, per the database: the demo's own queryset and serializer."""
        from django.db import connection
        from django.db.models import Q
        from todos.models import Todo
        from todos.serializers import TodoSerializer

        try:
            views = {}
            for user_id in self.user_ids:
                todos = Todo.objects.filter(Q(owner_id=user_id) | Q(shared=True)).select_related("owner")
                views[user_id] = {
                    row["id"]: json.loads(json.dumps(row)) for row in TodoSerializer(todos, many=True).data
                }
            return views
        finally:
            connection.close()

    async def settle(self) -> int:
        """Waits for the outbox to drain and every client to hold the marker; compares every
        client's rows with the database. Returns how many rows were compared."""
        await self.wait_for(lambda: self.outbox_size() == 0, "the outbox to drain", blocking=True)
        version = await asyncio.to_thread(self.bump_marker)

        def holds_marker(client: Client) -> bool:
            return client.ready and client.version(self.marker_id) == version

        try:
            await self.wait_for(
                lambda: all(holds_marker(client) for client in self.clients), f"every client to hold marker v{version}"
            )
        except AssertionError as err:
            behind = [client for client in self.clients if not holds_marker(client)]
            raise AssertionError(
                f"{err}: {len(behind)} do not; the last events of some:\n{self.events_of(behind[:3])}"
            ) from None
        views = await asyncio.to_thread(self.committed_views)
        compared = 0
        problems = []
        for client in self.clients:
            expected = views[client.user_id]
            compared += len(expected)
            if client.rows == expected:
                continue
            for row_id in sorted(set(expected) | set(client.rows)):
                held, committed = client.rows.get(row_id), expected.get(row_id)
                if held != committed:
                    problems.append(
                        f"client {client.index} (user {client.user_id}), todo {row_id}: "
                        f"holds {held}, committed {committed}"
                    )
        if problems:
            events = self.events_of(self.named(problems))
            raise AssertionError(
                f"{len(problems)} rows differ from the database:\n"
                + "\n".join(problems[:40])
                + "\nviolations:\n"
                + "\n".join(self.tally.violations[:20])
                + f"\nthe last events of some of these clients:\n{events}"
            )
        return compared

    def named(self, problems: list[str]) -> list[Client]:
        """The first few clients the problems name."""
        indexes = sorted({int(found) for problem in problems for found in re.findall(r"^client (\d+)", problem)})
        return [self.clients[index] for index in indexes[:5]]

    @staticmethod
    def events_of(clients: list[Client]) -> str:
        return "\n".join(f"client {client.index}:\n  {client.history_text()}" for client in clients)

    async def wait_for(
        self, condition: Callable[[], bool], what: str, timeout: float = SETTLE_TIMEOUT, blocking: bool = False
    ) -> None:
        """Polls ``condition`` (on a worker thread when ``blocking``) until it holds."""
        deadline = time.monotonic() + timeout
        while not (await asyncio.to_thread(condition) if blocking else condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.2 if blocking else 0.05)

    def summary(self) -> str:
        """Resumes and resyncs by fault, over every phase."""
        lines = []
        for fault in dict.fromkeys(entry["fault"] for entry in self.report):
            entries = [entry for entry in self.report if entry["fault"] == fault]
            resumes: Counter[str] = Counter()
            resyncs: Counter[str] = Counter()
            for entry in entries:
                resumes.update(entry["resumes"])
                resyncs.update(entry["resyncs"])
            deltas = sum(entry["deltas received"] for entry in entries)
            lines.append(
                f"  {fault} x{len(entries)}: {deltas} deltas received, resumes {dict(resumes)}, resyncs {dict(resyncs)}"
            )
        return "\n".join(lines)


def main() -> int:
    options = parse_options()
    run_dir = Path(tempfile.mkdtemp(prefix="snorky-crash-"))
    harness = Harness(options, run_dir)
    failure: BaseException | None = None
    started = time.monotonic()
    try:
        asyncio.run(harness.run())
    except BaseException as err:
        failure = err
        print(f"process logs:\n{harness.deployment.tails()}", file=sys.stderr, flush=True)
    finally:
        harness.deployment.close()
        if options.keep or failure is not None:
            print(f"crash: logs kept in {run_dir}", flush=True)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    if failure is not None:
        # The reason comes last: a CI page that shows only the end of the output still shows it.
        reason = str(failure).strip() or type(failure).__name__
        print(f"crash: FAILED: {reason}", file=sys.stderr)
        print(
            f"crash: FAILED in {harness.stage} after {time.monotonic() - started:.0f} s: {reason.splitlines()[0]}",
            file=sys.stderr,
        )
        if not isinstance(failure, AssertionError):
            raise failure
        return 1
    resyncs = sum(sum(entry["resyncs"].values()) for entry in harness.report)
    resumes = sum(sum(entry["resumes"].values()) for entry in harness.report)
    print(
        f"crash: passed in {time.monotonic() - started:.0f} s: {len(harness.report)} faults, {resumes} resumes, "
        f"{resyncs} resyncs; every client equal to the database after each\n{harness.summary()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
