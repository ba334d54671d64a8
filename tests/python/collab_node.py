"""A node with Chat, Cursors and Messaging on a broker, run as a process of its own by
``test_broker_collab.py`` (which kills it with SIGKILL): ``collab_node.py REDIS_URL NAME SECRET``.
It prints its WebSocket URL, then serves until killed (two minutes at most)."""

from __future__ import annotations

import sys
import time

from snorky.services import ChatService, CursorsService, MessagingService
from snorky.testing import running_server


def main() -> None:
    url, name, secret = sys.argv[1:4]
    services = [ChatService(), CursorsService(), MessagingService()]
    with running_server(services, broker=url, node_name=name, token_secret=secret, node_timeout=2.0) as server:
        print(f"READY {server.ws_url}", flush=True)
        time.sleep(120)


if __name__ == "__main__":
    main()
