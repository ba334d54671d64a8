"""Loopback ports for servers the tests start and hand a port to (``snorky serve``, Redis,
PostgreSQL, the demos).

Asking the kernel for a free port (binding port 0) returns one from the ephemeral range, the same
range every outgoing connection draws its local port from. Between the check and the server's own
bind, a client socket of another test worker can take that port, and the server then fails to
start. Ports here come from below the ephemeral range instead, where no client socket lands; each
pick is random, so parallel workers rarely choose the same port in the same instant (a walk from a
random start would not do: two walks that meet stay in step), and every port is checked free
before it is handed out.
"""

from __future__ import annotations

import random
import socket


def _ephemeral_start() -> int:
    """Where this machine's ephemeral range begins (Linux's default is 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as limits:
            return int(limits.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Clear of the well-known ports below and of the ephemeral range above. A machine whose ephemeral
# range starts below 21000 still gets a thousand ports to pick from, overlapping that range.
_FIRST = 20000
_LAST = max(min(32000, _ephemeral_start()), _FIRST + 1000)

_handed_out: set[int] = set()
_random = random.SystemRandom()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nobody listens on now, outside the ephemeral range, not handed out before
    by this process."""
    for _ in range(1000):
        port = _random.randrange(_FIRST, _LAST)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port found between {_FIRST} and {_LAST} in 1000 tries")
