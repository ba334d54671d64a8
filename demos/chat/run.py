"""The chat demo: Django login, chat rooms with presence and read receipts, shared notes with everyone's cursor.

Run with ``python demos/chat/run.py``. It migrates the SQLite database, creates the demo users and
rooms, starts ``manage.py snorky`` and ``manage.py runserver --noreload`` as child processes,
prints the URL and the credentials, and opens a browser. Ctrl-C (or SIGTERM) stops both servers.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANAGE = [sys.executable, str(HERE / "manage.py")]
START_TIMEOUT = 60.0  # seconds each server has to answer
STOP_TIMEOUT = 10.0  # seconds each server has to stop before it is killed


class StopRequestedError(Exception):
    """SIGINT or SIGTERM arrived."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="the Django server's port (default %(default)s)")
    parser.add_argument("--ws-port", type=int, default=5001, help="Snorky's WebSocket port (default %(default)s)")
    parser.add_argument("--backend-port", type=int, default=5002, help="Snorky's backend port (default %(default)s)")
    parser.add_argument("--db", type=Path, default=HERE / "db.sqlite3", help="the SQLite file (default %(default)s)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    args = parser.parse_args()
    for option, port in (("--port", args.port), ("--ws-port", args.ws_port), ("--backend-port", args.backend_port)):
        if not port_is_free(port):
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

    def stop_requested(signum: int, frame: object) -> None:
        raise StopRequestedError

    signal.signal(signal.SIGINT, stop_requested)
    signal.signal(signal.SIGTERM, stop_requested)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([*MANAGE, "migrate", "--noinput", "-v", "0"], env=env, cwd=HERE, check=True)
        credentials = subprocess.run(
            [*MANAGE, "demo_users"], env=env, cwd=HERE, check=True, capture_output=True, text=True
        ).stdout.splitlines()
        servers.append(start_server("snorky", env))
        servers.append(start_server("runserver", env, f"127.0.0.1:{args.port}", "--noreload"))
        wait_until_up(servers[0], f"http://127.0.0.1:{args.backend_port}/health")
        wait_until_up(servers[1], f"{url}login/")
        print(
            f"\n  Snorky chat demo: {url}\n"
            f"  Log in as {', '.join(credentials)} (username / password);\n"
            "  as a second user in a private window, to see each other.\n"
            "  Ctrl-C stops both servers.\n",
            flush=True,
        )
        if not args.no_browser:
            open_browser(url)
        while True:
            for server in servers:
                if server.poll() is not None:
                    print(f"run.py: manage.py {server.args[2]} exited with status {server.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
    except (StopRequestedError, KeyboardInterrupt):
        return 0
    except subprocess.CalledProcessError as err:
        print(f"run.py: manage.py {err.cmd[2]} failed with status {err.returncode}", file=sys.stderr)
        if err.stderr:
            print(err.stderr, file=sys.stderr, end="")
        return 1
    except TimeoutError as err:
        print(f"run.py: {err}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_servers(servers)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_server(command: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """``manage.py <command>`` in a session of its own: Ctrl-C in the terminal reaches only run.py,
    which stops each server once, in order; and SIGTERM when run.py dies, however it dies."""
    return subprocess.Popen(
        [*MANAGE, command, *args], env=env, cwd=HERE, start_new_session=True, preexec_fn=_die_with_parent
    )


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGTERM), on Linux; elsewhere an orphan is stopped by hand.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def wait_until_up(server: subprocess.Popen[bytes], url: str) -> None:
    """Polls ``url`` until it answers (any status), for at most START_TIMEOUT seconds."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise TimeoutError(f"manage.py {server.args[2]} exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"manage.py {server.args[2]} did not answer at {url} within {START_TIMEOUT:.0f} s")


def stop_servers(servers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each server (both stop gracefully on it), SIGKILL after STOP_TIMEOUT seconds."""
    for server in servers:
        if server.poll() is None:
            server.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for server in servers:
        try:
            server.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def open_browser(url: str) -> None:
    # With no display, webbrowser would start a text browser in this terminal: print the URL instead.
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print(f"  (no display: open {url} in your browser)\n", flush=True)
        return
    webbrowser.open(url)


if __name__ == "__main__":
    sys.exit(main())
