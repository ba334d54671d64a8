"""SnorkyBackend: calls, error mapping, connection failures."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from snorky import BackendError, ConfigurationError, SnorkyConnectionError, SnorkyError
from snorky.backend import SnorkyBackend


def test_call_returns_data_and_raises_the_server_text(pubsub_server):
    backend = pubsub_server.backend()
    assert backend.call("pubsub_backend", "publish", channel="c", message=1) is None
    with pytest.raises(BackendError, match=r"^Invalid params$"):
        backend.call("pubsub_backend", "publish", channel="c")
    with pytest.raises(SnorkyError, match="Unknown command"):
        backend.call("pubsub_backend", "subscribe", channel="c")


def test_refusals_are_explained(pubsub_server):
    wrong = SnorkyBackend(pubsub_server.backend_url, "not the key")
    with pytest.raises(BackendError, match="401"):
        wrong.publish("c", 1)
    with pytest.raises(BackendError, match="Unknown service"):
        pubsub_server.backend().call("pubsub", "publish", channel="c", message=1)


def test_unreachable_server_raises_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = SnorkyBackend(f"http://127.0.0.1:{port}/backend", "k", timeout=2)
    with pytest.raises(SnorkyConnectionError, match=f"127.0.0.1:{port}"):
        backend.publish("c", 1)


def test_bad_url_fails_at_construction():
    with pytest.raises(ConfigurationError, match="http://"):
        SnorkyBackend("127.0.0.1:5002/backend", "k")
    with pytest.raises(ConfigurationError, match="empty"):
        SnorkyBackend("http://127.0.0.1:5002/backend", "")


def test_one_client_is_shared_between_threads(pubsub_server):
    backend = pubsub_server.backend()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(50):
                backend.publish("c", i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


def test_backend_errors_carry_the_http_status(pubsub_server):
    with pytest.raises(BackendError) as refused:
        SnorkyBackend(pubsub_server.backend_url, "wrong").publish("c", 1)
    assert refused.value.status == 401
    with pytest.raises(BackendError) as rpc:
        pubsub_server.backend().call("pubsub_backend", "publish")
    assert rpc.value.status is None


def test_a_closed_client_is_usable_again(pubsub_server):
    backend = pubsub_server.backend()
    backend.publish("c", 1)
    backend.close()
    backend.close()  # closing twice is harmless
    backend.publish("c", 2)  # its threads start again


# A process that used a client, its debug logging going to Python (so the client's threads log as
# they wind down), then exits: the client is closed at exit, so no thread of it needs the GIL
# while Python finalizes (which crashed the process now and then).
EXITING = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
import snorky._core
from snorky.backend import SnorkyBackend
snorky._core.reset_log_cache()
backend = SnorkyBackend(sys.argv[1], sys.argv[2])
for n in range(3):
    backend.publish("c", n)
"""


def test_a_process_exits_cleanly_after_using_a_client(pubsub_server):
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", EXITING, pubsub_server.backend_url, pubsub_server.api_key],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
