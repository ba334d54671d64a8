"""The Server API: start/stop, configuration errors, graceful shutdown, health and metrics."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from wsclient import TIMEOUT, WsClient

from snorky import ConfigurationError, Server, ServiceRegistry
from snorky.services import PubSubBackend, PubSubService
from snorky.testing import running_server

KEY = "python-tests-api-key"


def make_server(**options: object) -> Server:
    pubsub = PubSubService()
    return Server(
        frontend=ServiceRegistry([pubsub]),
        backend=ServiceRegistry([PubSubBackend("pubsub_backend", pubsub)]),
        frontend_address="127.0.0.1:0",
        backend_address="127.0.0.1:0",
        **options,
    )


def test_refuses_to_start_without_an_api_key():
    with pytest.raises(ConfigurationError, match="api_key"):
        make_server()


def test_unknown_option_is_named():
    with pytest.raises(ConfigurationError, match="frobnicate"):
        make_server(api_key=KEY, frobnicate=1)


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("ping_interval", "often", "invalid server option ping_interval='often': "),
        ("max_frame_size", -1, "invalid server option max_frame_size=-1: "),
        ("max_connections", 2.5, "invalid server option max_connections=2.5: "),
        ("max_connections", True, "invalid server option max_connections=True: expected a number, not a boolean"),
        ("ping_interval", False, "invalid server option ping_interval=False: expected a number, not a boolean"),
        ("sockjs", "false", "invalid server option sockjs='false': "),
        ("sockjs", 0, "invalid server option sockjs=0: "),
        ("sockjs_prefix", ["x"] * 200, "invalid server option sockjs_prefix=['x', 'x'"),
    ],
)
def test_an_option_of_the_wrong_type_is_named_with_its_value(option, value, named):
    with pytest.raises(ConfigurationError) as refused:
        make_server(api_key=KEY, **{option: value})
    assert str(refused.value).startswith(named)
    assert len(str(refused.value)) < 300, "a long value is cut short"


@pytest.mark.parametrize("name", ["API_KEY", "redis_url", "Token_Secret", "sockjs_client_url"])
def test_the_value_of_an_unknown_or_secret_looking_option_is_not_quoted(name):
    with pytest.raises(ConfigurationError) as refused:
        make_server(api_key=KEY, **{name: ["hunter2-hunter2"]})
    assert name in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_wrong_api_key_type_is_named_but_not_quoted():
    with pytest.raises(ConfigurationError, match=r"invalid server option api_key=\.\.\.: ") as refused:
        make_server(api_key=b"a-secret-of-the-wrong-type")
    assert "a-secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("option", "value", "least"),
    [
        ("max_connections", 0, 1),
        ("max_connections_per_address", 0, 1),
        ("max_http_connections", 0, 2),
        ("max_http_connections", 1, 2),
        ("max_http_connections_per_address", 1, 2),
    ],
)
def test_a_connection_cap_too_small_is_refused_naming_it(option, value, least):
    with pytest.raises(ConfigurationError, match=f"^{option} must be at least {least}"):
        make_server(api_key=KEY, **{option: value})


def test_a_huge_duration_is_quoted_short():
    with pytest.raises(ConfigurationError, match=r"ping_interval must be .* not 1e300$"):
        make_server(api_key=KEY, ping_interval=1e300)


def test_a_service_option_of_the_wrong_type_is_named():
    from snorky.services import ChatService, DataSyncService

    with pytest.raises(ConfigurationError, match="invalid DataSync option max_items='many': "):
        DataSyncService("datasync", [], max_items="many")
    with pytest.raises(ConfigurationError, match="invalid Chat option max_channels=-3: "):
        ChatService("chat", max_channels=-3)


def test_a_bad_origin_entry_is_refused():
    with pytest.raises(ConfigurationError, match="allowed_origins"):
        make_server(api_key=KEY, allowed_origins=["example.com"])


def test_allowed_origins_given_as_one_string_says_to_make_it_a_list():
    with pytest.raises(ConfigurationError, match=r"allowed_origins must be a list .*\['https://app.example.com'\]"):
        make_server(api_key=KEY, allowed_origins="https://app.example.com")


def test_duplicate_names_are_refused():
    with pytest.raises(ConfigurationError, match="unique"):
        Server([PubSubService("a"), PubSubService("a")], api_key=KEY)


def test_services_must_be_on_their_side():
    pubsub = PubSubService()
    with pytest.raises(ConfigurationError, match="backend registry"):
        Server([pubsub, PubSubBackend("b", pubsub)], api_key=KEY)
    with pytest.raises(ConfigurationError, match="not a Snorky service"):
        Server([object()], api_key=KEY)  # type: ignore[list-item]


def test_a_busy_port_fails_at_start_with_the_address():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = Server(
            [PubSubService()], frontend_address=f"127.0.0.1:{port}", backend_address="127.0.0.1:0", api_key=KEY
        )
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}"):
            server.start()


def test_start_gives_ports_and_the_context_manager_stops_gracefully():
    server = make_server(api_key=KEY, allowed_origins=["*"])
    with server.start() as handle:
        assert handle.running
        assert handle.frontend_port > 0 and handle.backend_port > 0
        client = WsClient(f"ws://127.0.0.1:{handle.frontend_port}/ws")
        assert client.call("pubsub", "subscribe", channel="x")["type"] == "response"
    assert not handle.running
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


# A process that starts a server, never stops it, and exits once its standard input closes. Its
# Python service logs from the hooks the server's threads run, with logging at DEBUG, so that
# those threads call into Python while the process exits.
LEFT_RUNNING = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from snorky import Server
from snorky.rpc import RPCService, rpc_command

class Echo(RPCService):
    @rpc_command
    def echo(self, request, text: str):
        return text

    def client_disconnected(self, client):
        logging.getLogger("echo").info("bye %s", client.id)

server = Server([Echo("echo")], frontend_address="127.0.0.1:0", backend_address="127.0.0.1:0",
                api_key="a-key-for-the-exit-test", allowed_origins=["*"])
handle = server.start()
print(handle.frontend_port, flush=True)
sys.stdin.read()
"""


def exit_with_clients(script: str) -> str:
    """Runs ``script``, connects three clients that call it, lets it exit; checks that it exited
    with code 0 and each client got close code 1001. Returns its standard error."""
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], TIMEOUT)
            assert ready, f"the script printed no port within {TIMEOUT} s"
            port = int(child.stdout.readline())
            clients = [WsClient(f"ws://127.0.0.1:{port}/ws") for _ in range(3)]
            for client in clients:
                assert client.call("echo", "echo", text="hi")["data"] == "hi"
            _, errors = child.communicate(input="", timeout=30)
        finally:
            child.kill()
    assert child.returncode == 0, errors[-2000:]
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    return errors


def test_a_server_left_running_at_exit_is_stopped_gracefully():
    for _ in range(3):
        errors = exit_with_clients(LEFT_RUNNING)
        assert errors.count("bye") == 3, errors[-2000:]


# The same server, stopped by an exit handler that runs after the extension's own (registered
# before snorky is imported, so it runs later): its threads then run with Python already exiting.
STOPPED_LATE = """
import atexit
late = []
atexit.register(lambda: [stop() for stop in late])
""" + LEFT_RUNNING.replace(
    "sys.stdin.read()",
    """import snorky.server
snorky.server._started.discard(handle)
late.append(lambda: handle.stop(timeout=10))
sys.stdin.read()""",
)


def test_server_threads_do_not_call_python_once_it_exits():
    errors = exit_with_clients(STOPPED_LATE)
    # The hooks were not called: Python was exiting.
    assert "bye" not in errors, errors[-2000:]


def test_health_on_both_listeners_and_metrics_on_the_backend(pubsub_server):
    for port in (pubsub_server.handle.frontend_port, pubsub_server.handle.backend_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT) as response:
            assert json.load(response) == {"status": "ok"}
    client = WsClient(pubsub_server.ws_url)
    client.call("pubsub", "subscribe", channel="m")
    pubsub_server.backend().publish("m", "hello")
    assert client.recv()["message"]["message"] == "hello"
    url = f"http://127.0.0.1:{pubsub_server.handle.backend_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    assert "snorky_connections 1" in text
    assert "snorky_deliveries_total 1" in text
    assert "snorky_frames_received_total 1" in text
    client.close()


def test_two_servers_in_one_process_are_independent():
    one = PubSubService()
    two = PubSubService()
    with running_server([one], [PubSubBackend("pubsub_backend", one)]) as a, running_server([two]) as b:
        ca, cb = WsClient(a.ws_url), WsClient(b.ws_url)
        ca.call("pubsub", "subscribe", channel="c")
        cb.call("pubsub", "subscribe", channel="c")
        a.backend().publish("c", 1)
        assert ca.recv()["message"]["message"] == 1
        with pytest.raises(TimeoutError):
            cb.recv(timeout=0.3)
        ca.close()
        cb.close()


def test_a_short_api_key_is_refused():
    with pytest.raises(ConfigurationError, match="at least 16"):
        make_server(api_key="short-key")


@pytest.mark.parametrize(
    "option", ["ping_interval", "stall_timeout", "header_read_timeout", "body_read_timeout", "shutdown_timeout"]
)
def test_a_duration_too_long_for_the_clock_is_refused_at_start(option):
    with pytest.raises(ConfigurationError, match=option):
        make_server(api_key=KEY, **{option: 1e300})


def test_datasync_timeouts_too_long_for_the_clock_are_refused():
    from snorky.dealers import BroadcastDealer
    from snorky.services import DataSyncService

    class All(BroadcastDealer):
        model = "Task"

    for option in ("subscription_timeout", "resume_timeout"):
        with pytest.raises(ConfigurationError, match=option):
            DataSyncService("datasync", [All], **{option: 1e300})


def test_an_address_without_a_host_is_refused_saying_what_to_write():
    with pytest.raises(ConfigurationError, match='frontend_address ":5101" has no host: give one'):
        Server([PubSubService()], frontend_address=":5101", api_key=KEY)
