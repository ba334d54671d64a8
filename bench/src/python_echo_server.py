"""The Python-service server of the benchmark's `python` scenario, run as `python -c <this file>`
by `snorky-bench run --scenarios python`: Snorky's server built from Python with a trivial
`RPCService` (`echo`) and the built-in PubSub, on loopback ports chosen by the OS. Prints
`READY ws=... backend=...` and serves until stdin closes (or SIGTERM)."""

import os
import sys

from snorky import Server
from snorky.rpc import RPCService, rpc_command
from snorky.services import PubSubBackend, PubSubService


class Echo(RPCService):
    @rpc_command
    def echo(self, req, value=None):
        return value


pubsub = PubSubService("pubsub")
server = Server(
    [Echo("echo"), pubsub],
    [PubSubBackend("pubsub_backend", pubsub)],
    frontend_address="127.0.0.1:0",
    backend_address="127.0.0.1:0",
    api_key=os.environ["SNORKY_BENCH_KEY"],
    allowed_origins=["*"],
)
handle = server.start()
print(
    f"READY ws=ws://127.0.0.1:{handle.frontend_port}/ws backend=http://127.0.0.1:{handle.backend_port}/backend",
    flush=True,
)
sys.stdin.read()
handle.stop(2.0)
