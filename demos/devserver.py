"""Running a demo's ``manage.py`` servers as child processes: shared by ``todo/run.py`` and ``chat/run.py``.

Each child runs in a session of its own, so that Ctrl-C in the terminal reaches only ``run.py``, which
then stops each child once, in order; and it gets SIGTERM when ``run.py`` dies, however it dies, so
that no server outlives it. A ``run.py`` imports this module after putting ``demos/`` on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT = 60.0  # seconds each server gets to answer
STOP_TIMEOUT = 10.0  # seconds each server gets to stop gracefully before it is killed

Child = subprocess.Popen[bytes]


class ServerExitedError(TimeoutError):
    """A server exited before it answered: raised by :func:`wait_until_up`."""

    def __init__(self, name: str, status: int, url: str) -> None:
        super().__init__(f"{name} exited with status {status} before answering at {url}")
        self.name = name
        self.status = status
        self.url = url


def port_is_free(port: int, *, reuse_address: bool = True) -> bool:
    """Whether a server could listen on ``127.0.0.1:port``.

    With ``reuse_address`` (as the servers themselves bind), connections of a previous run lingering
    in TIME_WAIT do not count.
    """
    with socket.socket() as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(command: Sequence[str], env: dict[str, str], cwd: Path) -> Child:
    """Starts ``command`` in a session of its own, to get SIGTERM when this process dies."""
    return subprocess.Popen(list(command), env=env, cwd=cwd, start_new_session=True, preexec_fn=die_with_parent)


def die_with_parent() -> None:
    """In the child: asks Linux for SIGTERM when the parent dies (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def name_of(child: Child) -> str:
    """``manage.py <command>``, for messages: the child runs ``python manage.py <command> ...``."""
    return f"manage.py {child.args[2]}"


def wait_until_up(url: str, child: Child, timeout: float = START_TIMEOUT) -> None:
    """Polls ``url`` until it answers (any HTTP status), for at most ``timeout`` seconds.

    Raises :class:`ServerExitedError` if ``child`` exits meanwhile, :class:`TimeoutError` if it does
    not answer in time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise ServerExitedError(name_of(child), child.returncode, url)
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{name_of(child)} did not answer at {url} within {timeout:.0f} s")


def supervise(children: Sequence[Child]) -> int:
    """Waits until a child exits, says so on stderr, and returns 1 (the exit status for ``run.py``)."""
    while True:
        for child in children:
            if child.poll() is not None:
                print(f"run.py: {name_of(child)} exited with status {child.returncode}", file=sys.stderr)
                return 1
        time.sleep(0.2)


def stop(children: Sequence[Child], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM to each child, then SIGKILL to those still running after ``timeout`` seconds."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_stop_signals() -> None:
    """Makes SIGINT and SIGTERM raise KeyboardInterrupt in the main thread.

    SIGINT too: a shell may have started this process with SIGINT ignored (in the background).
    """
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)


def ignore_stop_signals() -> None:
    """Ignores SIGINT and SIGTERM from now on: a second Ctrl-C must not cut the shutdown short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def open_browser(url: str, no_display_note: str = "  (no display found: open {url} in your browser)\n") -> None:
    """Opens ``url`` in a browser; without a display (on Linux), prints ``no_display_note`` instead.

    Without a display, Python would start a text-mode browser in this terminal.
    """
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print(no_display_note.format(url=url), flush=True)
        return
    webbrowser.open(url)
