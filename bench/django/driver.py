"""The Python side of the benchmark's django scenario; ``bench/src/scenarios/django.rs`` runs it.

Each command is one step of the scenario, run as its own process with the site's settings
(``--site snorky``: ``bench_site``, the todo demo's app with snorky_django, in the project's venv;
``--site channels``: ``channels_ref.todo_settings``, the same model with Django Channels, and
``--site eventstream``: ``channels_ref.eventstream_settings``, with django-eventstream, both in
``bench/.venv-channels``):

- ``setup``: migrates, creates the users and a logged-in session for each (written as JSON).
- ``tokens`` (snorky): serves the site over HTTP in this process and, for each client, asks the
  DRF list view for a subscription (``GET /api/mine/`` or ``/api/all/`` with ``X-Snorky:
  Subscribe``, the session cookie) and ``/snorky/connection-token/`` for its connection token.
- ``write``: one writer process: creates, updates and deletes todos, each in
  ``transaction.atomic()``, at a given rate, and logs when each transaction committed.
- ``micro`` (snorky): the time of one ``save()`` and of a 100-row ``bulk_create`` in a
  transaction, with and without ``@subscribable`` (and with it on ``benchlight.LightTodo``, whose
  deltas come from a plain ``jsonify()`` instead of the demo's DRF serializer); in direct mode
  with the server running, in outbox and logical modes before it starts, so the relay's work does
  not share the machine with the saves (in logical mode with the database set up first, as
  ``manage.py snorky`` sets it up: ``REPLICA IDENTITY FULL``, the publication and the slot).

Every write's title is ``s<seq>`` (a number unique in the run) so the load generator can tell which
write a delta comes from; commit times are ``CLOCK_MONOTONIC`` microseconds, the load generator's
clock too. Results go to stdout as one JSON line (or to ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


#: The settings module (in ``bench/channels_ref/channels_ref``) of each reference site.
SETTINGS = {"channels": "todo_settings", "eventstream": "eventstream_settings"}


def setup_django(site: str) -> None:
    import django

    if site == "snorky":
        sys.path.insert(0, str(HERE))
        os.environ["DJANGO_SETTINGS_MODULE"] = "bench_site.settings"
    else:
        sys.path.insert(0, str(REPO / "bench" / "channels_ref"))
        os.environ["DJANGO_SETTINGS_MODULE"] = f"channels_ref.{SETTINGS[site]}"
    django.setup()


def todo_model(site: str, *, plain: bool = False):
    """The model the site writes: the demo's ``Todo`` (``@subscribable``) or ``PlainTodo``."""
    if site != "snorky" or plain:
        from benchtodos.models import PlainTodo

        return PlainTodo
    from todos.models import Todo

    return Todo


def same_fields() -> None:
    """Fails unless ``PlainTodo`` declares the demo ``Todo``'s fields (the baseline must match)."""
    from benchtodos.models import PlainTodo
    from todos.models import Todo

    def shape(model) -> list[tuple[str, str, object]]:
        return [(f.name, type(f).__name__, getattr(f, "max_length", None)) for f in model._meta.concrete_fields]

    if shape(Todo) != shape(PlainTodo):
        sys.exit(f"benchtodos.PlainTodo no longer matches todos.Todo: {shape(PlainTodo)} != {shape(Todo)}")


def emit(result: object, out: str | None) -> None:
    text = json.dumps(result, separators=(",", ":"))
    if out:
        Path(out).write_text(text)
    else:
        print(text, flush=True)


# --- setup ----------------------------------------------------------------------------------------


def setup(args: argparse.Namespace) -> None:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    if args.site == "snorky":
        same_fields()
    call_command("migrate", verbosity=0, interactive=False)
    user_model = get_user_model()
    user_model.objects.bulk_create(
        [user_model(username=f"user{i:05d}", password=make_password(None)) for i in range(args.users)]
    )
    users = []
    for user in user_model.objects.order_by("id"):
        # A session as login() leaves it, without hashing a password per user.
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        users.append({"id": user.pk, "session": store.session_key})
    emit({"users": users}, args.out)


# --- tokens ---------------------------------------------------------------------------------------


def tokens(args: argparse.Namespace) -> None:
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    users = json.loads(Path(args.users_file).read_text())["users"]
    httpd = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
    httpd.set_app(get_wsgi_application())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def get(path: str, session: str, subscribe: bool) -> tuple[str | None, bytes]:
        headers = {"Cookie": f"sessionid={session}"}
        if subscribe:
            headers["X-Snorky"] = "Subscribe"
        request = urllib.request.Request(base + path, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.headers.get("X-Subscription-Token"), response.read()

    def client(job: tuple[str, dict]) -> dict:
        which, user = job
        subscription, _ = get(f"/api/{which}/", user["session"], True)
        if not subscription:
            raise RuntimeError(f"GET /api/{which}/ answered no X-Subscription-Token")
        _, body = get("/snorky/connection-token/", user["session"], False)
        return {"list": which, "user": user["id"], "sub": subscription, "conn": json.loads(body)["token"]}

    jobs = [("mine", user) for user in users[: args.mine]] + [("all", user) for user in users[: args.all]]
    with ThreadPoolExecutor(args.concurrency) as pool:
        clients = list(pool.map(client, jobs))
    httpd.shutdown()
    emit({"clients": clients}, args.out)


# --- write ----------------------------------------------------------------------------------------


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def stamp(into: list[int]) -> None:
    into.append(monotonic_us())


def write(args: argparse.Namespace) -> None:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    model = todo_model(args.site)
    owner_ids = json.loads(Path(args.users_file).read_text())["users"][: args.owners]
    owners = list(get_user_model().objects.filter(pk__in=[user["id"] for user in owner_ids]))
    rng = random.Random(args.index)
    interval = 1 / args.rate
    # Set up: the load generator gives every writer the same start time.
    print("READY", flush=True)
    start = int(sys.stdin.readline()) / 1e6
    while time.monotonic() < start:
        time.sleep(min(start - time.monotonic(), 0.05))
    start = max(start, time.monotonic())
    pool: deque = deque()
    log: list[str] = []
    k = 0
    while True:
        due = start + k * interval
        if due - start >= args.secs:
            break
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        seq = args.seq_start + k * args.of + args.index
        op = "cud"[k % 3]
        # Deletes take the oldest rows, once there are some to take.
        if (op == "d" and len(pool) < 10) or (op == "u" and not pool):
            op = "c"
        committed: list[int] = []
        with transaction.atomic():
            # Registered first, so it runs first: right after COMMIT, before any delivery hook.
            transaction.on_commit(functools.partial(stamp, committed))
            if op == "c":
                todo = model(title=f"s{seq}", owner=rng.choice(owners))
                todo.save()
                pool.append(todo)
            elif op == "u":
                todo = pool[rng.randrange(len(pool))]
                todo.title = f"s{seq}"
                todo.save()
            else:
                todo = pool.popleft()
                todo_id = todo.pk
                todo.delete()
                todo.pk = todo_id
        log.append(f"{seq}\t{op}\t{todo.pk}\t{todo.owner_id}\t{committed[0]}\n")
        k += 1
    elapsed = time.monotonic() - start
    Path(args.log).write_text("".join(log))
    emit({"writes": len(log), "secs": elapsed}, args.out)


# --- micro ----------------------------------------------------------------------------------------


def micro(args: argparse.Namespace) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    owner = get_user_model().objects.order_by("id").first()
    logical_slot = None
    if args.site == "snorky":
        from snorky_django.conf import snorky_settings

        if snorky_settings.DELIVERY == "logical":
            from snorky_django.logical_setup import prepare

            # The saves are timed as in production: the tables log whole old rows, the slot keeps
            # the WAL.
            logical_slot = prepare("default").slot
    # Each variant: the model saved, and what to do before each of its blocks. On the Snorky site,
    # PlainTodo against the demo's @subscribable Todo; on the reference ones, PlainTodo without and
    # with the receivers that send on commit (group_send, send_event; bulk_create sends no signal
    # there: not timed).
    if args.site == "snorky":
        from benchlight.models import LightTodo

        # "light": @subscribable with a jsonify() returning the fields, so the demo's DRF
        # serializer's share of the cost shows.
        variants = {
            "plain": (todo_model("snorky", plain=True), None),
            "subscribable": (todo_model("snorky"), None),
            "light": (LightTodo, None),
        }
        kinds: tuple[str, ...] = ("insert", "update", "bulk")
    else:
        from benchtodos.models import PlainTodo
        from channels_ref.todo_live import connect_receivers, disconnect_receivers

        if args.site == "eventstream":
            from channels_ref.eventstream_live import connect as connect_receivers

        variants = {"plain": (PlainTodo, disconnect_receivers), "subscribable": (PlainTodo, connect_receivers)}
        kinds = ("insert", "update")
    times: dict[str, list[int]] = {f"{kind} {name}": [] for kind in kinds for name in variants}
    # CPU time of this process's thread: the Python side's own cost, which waits on nothing and
    # so moves less than wall time with the load of a shared machine.
    cpu: dict[str, list[int]] = {key: [] for key in times}
    existing = {name: model.objects.create(title="m", owner=owner) for name, (model, _) in variants.items()}

    def timed(key: str, action, *args) -> None:
        begin, begin_cpu = time.perf_counter_ns(), time.thread_time_ns()
        with transaction.atomic():
            action(*args)
        times[key].append(time.perf_counter_ns() - begin)
        cpu[key].append(time.thread_time_ns() - begin_cpu)

    block = 20
    for round_ in range(max(args.n // block, 1)):
        # Interleaved in small blocks, so a change of the machine's load touches both alike.
        for name, (model, prepare) in variants.items():
            if prepare is not None:
                prepare()
            for i in range(block):
                timed(f"insert {name}", model(title=f"m{i}", owner=owner).save)
            todo = existing[name]
            for i in range(block):
                todo.title = f"m{round_}-{i}"
                timed(f"update {name}", todo.save)
            if "bulk" in kinds:
                for _ in range(max(block // 10, 1)):
                    rows = [model(title="b", owner=owner) for _ in range(100)]
                    timed(f"bulk {name}", model.objects.bulk_create, rows)
    result: dict[str, float | str] = {}
    for key, samples in times.items():
        result[f"{key} us"] = statistics.median(samples) / 1000
        result[f"{key} cpu us"] = statistics.median(cpu[key]) / 1000
    if args.site == "snorky":
        from snorky_django.delivery import get_backend

        result["delivery"] = snorky_settings.DELIVERY
        if snorky_settings.DELIVERY == "direct":
            # The part of a direct-mode save that waits for the server: one publishDeltas round trip.
            backend = get_backend()
            delta = {"type": "insert", "model": "Todo", "data": {"id": 0, "title": "m", "owner": owner.pk}}
            round_trips = []
            for _ in range(args.n):
                begin = time.perf_counter_ns()
                backend.publish_deltas([delta], service=snorky_settings.DATASYNC_BACKEND_SERVICE)
                round_trips.append(time.perf_counter_ns() - begin)
            result["publishDeltas round trip us"] = statistics.median(round_trips) / 1000
    tables = ["todos_todo", "benchlight_lighttodo", "snorky_django_outboxentry"] if args.site == "snorky" else []
    with connection.cursor() as cursor:
        # The lists the clients fetch next start empty, and in outbox mode (timed before the server
        # and its relay start) nothing of this reaches them: raw SQL, which publishes nothing.
        for table in ["benchtodos_plaintodo", *tables]:
            cursor.execute(f"DELETE FROM {table}")
    if logical_slot is not None:
        # The relay would read all of the above from the slot when the server starts: flush the WAL
        # (decoding sees flushed WAL only), then move the slot past it.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = on")
            cursor.execute("SELECT pg_logical_emit_message(true, 'snorky-flush', '')")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", [logical_slot])
    emit(result, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", choices=("snorky", "channels", "eventstream"), required=True)
    parser.add_argument("--out", help="write the JSON result here instead of stdout")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("setup")
    command.add_argument("--users", type=int, required=True)
    command = commands.add_parser("tokens")
    command.add_argument("--users-file", required=True)
    command.add_argument("--mine", type=int, required=True, help="clients of /api/mine/ (users 0..mine)")
    command.add_argument("--all", type=int, required=True, help="clients of /api/all/ (users 0..all)")
    command.add_argument("--concurrency", type=int, default=8)
    command = commands.add_parser("write")
    command.add_argument("--users-file", required=True)
    command.add_argument("--owners", type=int, required=True, help="owners: the first N users")
    command.add_argument("--rate", type=float, required=True, help="this writer's transactions per second")
    command.add_argument("--secs", type=float, required=True)
    command.add_argument("--index", type=int, required=True)
    command.add_argument("--of", type=int, required=True, help="writers in all (sequence numbers interleave)")
    command.add_argument("--seq-start", type=int, required=True)
    command.add_argument("--log", required=True)
    command = commands.add_parser("micro")
    command.add_argument("--n", type=int, required=True, help="save() calls timed per kind and model")
    args = parser.parse_args()
    setup_django(args.site)
    {"setup": setup, "tokens": tokens, "write": write, "micro": micro}[args.command](args)


if __name__ == "__main__":
    main()
