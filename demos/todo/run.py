"""The todo demo: Django + DRF + Snorky. Run with ``scripts/demo`` (or ``python demos/todo/run.py``).

Migrates the SQLite database, starts ``manage.py snorky`` and ``manage.py runserver`` as child
processes, creates the demo users, prints the URL and the credentials, and opens a browser. Ctrl-C
(or SIGTERM) stops both servers.
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
START_TIMEOUT = 60.0  # seconds each server gets to answer
STOP_TIMEOUT = 10.0  # seconds each server gets to stop gracefully before it is killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="the Django server's port (default %(default)s)")
    parser.add_argument("--ws-port", type=int, default=5001, help="Snorky's WebSocket port (default %(default)s)")
    parser.add_argument("--backend-port", type=int, default=5002, help="Snorky's backend port (default %(default)s)")
    parser.add_argument("--db", type=Path, default=HERE / "db.sqlite3", help="the SQLite file (default %(default)s)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--no-samples", action="store_true", help="start with no todos (a new database only)")
    args = parser.parse_args()

    for name, port in (("--port", args.port), ("--ws-port", args.ws_port), ("--backend-port", args.backend_port)):
        if not port_is_free(port):
            parser.exit(2, f"run.py: port {port} is in use: stop what uses it, or choose another with {name}\n")

    url = f"http://127.0.0.1:{args.port}/"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DEMO_DATABASE": str(args.db.resolve()),
        "SNORKY_API_KEY": secrets.token_urlsafe(24),  # shared by the two children only
        "SNORKY_FRONTEND_ADDRESS": f"127.0.0.1:{args.ws_port}",
        "SNORKY_BACKEND_ADDRESS": f"127.0.0.1:{args.backend_port}",
        "SNORKY_ALLOWED_ORIGINS": f"http://127.0.0.1:{args.port},http://localhost:{args.port}",
    }
    children: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell may have started this process with SIGINT ignored (in the background).
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        subprocess.run([*MANAGE, "migrate", "--noinput", "-v", "0"], env=env, check=True)
        # Snorky first, so that the sample todos the next step may create are published somewhere.
        children.append(start([*MANAGE, "snorky"], env))
        wait_until_up(f"http://127.0.0.1:{args.backend_port}/health", children[-1], "manage.py snorky")
        setup = [*MANAGE, "demo_users", *(["--no-samples"] if args.no_samples else [])]
        users = subprocess.run(setup, env=env, check=True, capture_output=True, text=True).stdout.split()
        children.append(start([*MANAGE, "runserver", f"127.0.0.1:{args.port}", "--noreload"], env))
        wait_until_up(f"{url}accounts/login/", children[-1], "manage.py runserver")

        credentials = "  and  ".join(" ".join(users[i : i + 3]) for i in range(0, len(users), 3))
        print(
            f"\n  Snorky todo demo: {url}\n"
            f"  Sign in as {credentials} (one of them in a private window).\n"
            "  Ctrl-C stops both servers.\n",
            flush=True,
        )
        if not args.no_browser:
            open_browser(url)
        while True:
            for child in children:
                if child.poll() is not None:
                    print(f"run.py: manage.py {child.args[2]} exited with status {child.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
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
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(children)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers do: connections of a previous run lingering in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own, so that Ctrl-C reaches only this process, which then stops each child
    # once; and a signal when this process dies, so that no server outlives it even if it is killed.
    return subprocess.Popen(command, env=env, cwd=HERE, start_new_session=True, preexec_fn=die_with_parent)


def die_with_parent() -> None:
    """In the child: asks Linux for SIGTERM when the parent dies (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_until_up(url: str, child: subprocess.Popen[bytes], name: str) -> None:
    """Polls ``url`` until it answers (any HTTP status), for at most START_TIMEOUT seconds."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise TimeoutError(f"{name} exited with status {child.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{name} did not answer at {url} within {START_TIMEOUT:.0f} s")


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each child, then SIGKILL to those still running after STOP_TIMEOUT seconds."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def open_browser(url: str) -> None:
    # Without a display, Python would start a text-mode browser in this terminal: just say so.
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print(f"  (no display found: open {url} in your browser)\n", flush=True)
        return
    webbrowser.open(url)


if __name__ == "__main__":
    sys.exit(main())
