"""The chat demo: Django login, chat rooms with presence and read receipts, shared notes with everyone's cursor.

Run with ``python demos/chat/run.py``. It migrates the SQLite database, creates the demo users and
rooms, starts ``manage.py snorky`` and ``manage.py runserver --noreload`` as child processes,
prints the URL and the credentials, and opens a browser. Ctrl-C (or SIGTERM) stops both servers.
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
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    args = parser.parse_args()
    for option, port in (("--port", args.port), ("--ws-port", args.ws_port), ("--backend-port", args.backend_port)):
        if not devserver.port_is_free(port, reuse_address=False):
            parser.exit(2, f"run.py: port {port} is in use: stop what uses it, or pick another with {option}\n")

    url = f"http://127.0.0.1:{args.port}/"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "chat_site.settings",
        "DEMO_DATABASE": str(args.db.resolve()),
        "SNORKY_API_KEY": secrets.token_urlsafe(24),  # known to the two children only
        "SNORKY_FRONTEND_ADDRESS": f"127.0.0.1:{args.ws_port}",
        "SNORKY_BACKEND_ADDRESS": f"127.0.0.1:{args.backend_port}",
        "SNORKY_ALLOWED_ORIGINS": f"http://127.0.0.1:{args.port},http://localhost:{args.port}",
    }

    devserver.interrupt_on_stop_signals()
    servers: list[devserver.Child] = []
    try:
        subprocess.run([*MANAGE, "migrate", "--noinput", "-v", "0"], env=env, cwd=HERE, check=True)
        credentials = subprocess.run(
            [*MANAGE, "demo_users"], env=env, cwd=HERE, check=True, capture_output=True, text=True
        ).stdout.splitlines()
        servers.append(start_server("snorky", env))
        servers.append(start_server("runserver", env, f"127.0.0.1:{args.port}", "--noreload"))
        devserver.wait_until_up(f"http://127.0.0.1:{args.backend_port}/health", servers[0])
        devserver.wait_until_up(f"{url}login/", servers[1])
        print(
            f"\n  Snorky chat demo: {url}\n"
            f"  Log in as {', '.join(credentials)} (username / password);\n"
            "  as a second user in a private window, to see each other.\n"
            "  Ctrl-C stops both servers.\n",
            flush=True,
        )
        if not args.no_browser:
            devserver.open_browser(url, "  (no display: open {url} in your browser)\n")
        return devserver.supervise(servers)
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as err:
        print(f"run.py: manage.py {err.cmd[2]} failed with status {err.returncode}", file=sys.stderr)
        if err.stderr:
            print(err.stderr, file=sys.stderr, end="")
        return 1
    except devserver.ServerExitedError as err:
        print(f"run.py: {err.name} exited with status {err.status}", file=sys.stderr)
        return 1
    except TimeoutError as err:
        print(f"run.py: {err}", file=sys.stderr)
        return 1
    finally:
        devserver.ignore_stop_signals()  # a second Ctrl-C must not cut the shutdown short
        devserver.stop(servers)


def start_server(command: str, env: dict[str, str], *args: str) -> devserver.Child:
    """``manage.py <command> <args>``, started by :func:`devserver.start`."""
    return devserver.start([*MANAGE, command, *args], env, HERE)


if __name__ == "__main__":
    sys.exit(main())
