"""The todo demo: Django + DRF + Snorky. Run with ``scripts/demo`` (or ``python demos/todo/run.py``).

Migrates the database (SQLite, or PostgreSQL with ``--database-url``), starts ``manage.py snorky``
and ``manage.py runserver`` as child processes, creates the demo users, prints the URL and the
credentials, and opens a browser. Ctrl-C (or SIGTERM) stops both servers.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # demos/, for the shared devserver module
import devserver

HERE = Path(__file__).resolve().parent
MANAGE = [sys.executable, str(HERE / "manage.py")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="the Django server's port (default %(default)s)")
    parser.add_argument("--ws-port", type=int, default=5001, help="Snorky's WebSocket port (default %(default)s)")
    parser.add_argument("--backend-port", type=int, default=5002, help="Snorky's backend port (default %(default)s)")
    parser.add_argument("--db", type=Path, default=HERE / "db.sqlite3", help="the SQLite file (default %(default)s)")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL database instead of SQLite: postgresql://user:password@host:port/name",
    )
    parser.add_argument(
        "--delivery",
        choices=["direct", "outbox", "logical"],
        default="direct",
        help="how changes reach Snorky (default %(default)s; logical needs --database-url)",
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--no-samples", action="store_true", help="start with no todos (a new database only)")
    args = parser.parse_args()

    if args.delivery == "logical" and not args.database_url:
        parser.exit(2, "run.py: --delivery logical reads PostgreSQL's WAL: give --database-url postgresql://...\n")
    for name, port in (("--port", args.port), ("--ws-port", args.ws_port), ("--backend-port", args.backend_port)):
        if not devserver.port_is_free(port):
            parser.exit(2, f"run.py: port {port} is in use: stop what uses it, or choose another with {name}\n")

    url = f"http://127.0.0.1:{args.port}/"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DEMO_DATABASE": str(args.db.resolve()),
        "DEMO_DATABASE_URL": args.database_url or "",
        "SNORKY_DELIVERY": args.delivery,
        "SNORKY_API_KEY": secrets.token_urlsafe(24),  # shared by the two children only
        "SNORKY_FRONTEND_ADDRESS": f"127.0.0.1:{args.ws_port}",
        "SNORKY_BACKEND_ADDRESS": f"127.0.0.1:{args.backend_port}",
        "SNORKY_ALLOWED_ORIGINS": f"http://127.0.0.1:{args.port},http://localhost:{args.port}",
    }
    children: list[devserver.Child] = []

    devserver.interrupt_on_stop_signals()
    try:
        subprocess.run([*MANAGE, "migrate", "--noinput", "-v", "0"], env=env, check=True)
        # Snorky first, so that the sample todos the next step may create are published somewhere.
        children.append(devserver.start([*MANAGE, "snorky"], env, HERE))
        devserver.wait_until_up(f"http://127.0.0.1:{args.backend_port}/health", children[-1])
        setup = [*MANAGE, "demo_users", *(["--no-samples"] if args.no_samples else [])]
        users = subprocess.run(setup, env=env, check=True, capture_output=True, text=True).stdout.split()
        children.append(devserver.start([*MANAGE, "runserver", f"127.0.0.1:{args.port}", "--noreload"], env, HERE))
        devserver.wait_until_up(f"{url}accounts/login/", children[-1])

        credentials = "  and  ".join(" ".join(users[i : i + 3]) for i in range(0, len(users), 3))
        print(
            f"\n  Snorky todo demo: {url}\n"
            f"  Sign in as {credentials} (one of them in a private window).\n"
            "  Ctrl-C stops both servers.\n",
            flush=True,
        )
        if not args.no_browser:
            devserver.open_browser(url)
        return devserver.supervise(children)
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as err:
        print(f"run.py: {' '.join(map(str, err.cmd[1:]))} failed with status {err.returncode}", file=sys.stderr)
        if err.stderr:
            print(err.stderr, file=sys.stderr)
        return 1
    except TimeoutError as err:
        print(f"run.py: {err}", file=sys.stderr)
        return 1
    finally:
        devserver.ignore_stop_signals()
        devserver.stop(children)


if __name__ == "__main__":
    sys.exit(main())
