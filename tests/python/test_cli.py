"""``python -m snorky serve``: options, environment variables, start-up errors, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ports import free_port
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsclient import TIMEOUT, WsClient

from snorky import connection_token
from snorky.backend import SnorkyBackend

FIXTURES = str(Path(__file__).parent / "fixtures")


def snorky(
    *args: str, env: dict[str, str] | None = None, command: list[str] | None = None, **kwargs
) -> subprocess.Popen[str]:
    """``python -m snorky`` (or ``command``) with ``args``; a ``PYTHONPATH`` in ``env`` goes before
    the inherited one (which may be where snorky itself is imported from)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SNORKY_")}
    full_env.update(env or {})
    if env and "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):
        full_env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], os.environ["PYTHONPATH"]])
    return subprocess.Popen(
        [*(command or [sys.executable, "-m", "snorky"]), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_healthy(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not become healthy")


def test_help_lists_options_and_environment_variables():
    process = snorky("serve", "--help")
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    for text in ("--frontend-address", "--backend-address", "--api-key", "SNORKY_API_KEY", "--allowed-origin"):
        assert text in out


def test_missing_api_key_fails_with_what_to_set():
    process = snorky("serve", "--frontend-address", "127.0.0.1:0", "--backend-address", "127.0.0.1:0")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "api_key" in err and "SNORKY_API_KEY" in err


@pytest.mark.parametrize("via_env", [False, True])
def test_serves_and_shuts_down_gracefully_on_sigterm(via_env: bool):
    front, back = free_port(), free_port()
    settings = {
        "SNORKY_FRONTEND_ADDRESS": f"127.0.0.1:{front}",
        "SNORKY_BACKEND_ADDRESS": f"127.0.0.1:{back}",
        "SNORKY_API_KEY": "swordfish-swordfish",
    }
    if via_env:
        process = snorky("serve", env=settings)
    else:
        process = snorky(
            "serve",
            "--frontend-address", settings["SNORKY_FRONTEND_ADDRESS"],
            "--backend-address", settings["SNORKY_BACKEND_ADDRESS"],
            "--api-key", "swordfish-swordfish",
        )  # fmt: skip
    try:
        wait_healthy(back, process)
        client = WsClient(f"ws://127.0.0.1:{front}/ws")
        assert client.call("pubsub", "subscribe", channel="news")["type"] == "response"
        SnorkyBackend(f"http://127.0.0.1:{back}/backend", "swordfish-swordfish").publish("news", {"n": 1})
        assert client.recv()["message"] == {"type": "message", "channel": "news", "message": {"n": 1}}
        process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "snorky stopped" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_sigint_also_stops_it():
    front, back = free_port(), free_port()
    process = snorky(
        "serve", "--frontend-address", f"127.0.0.1:{front}", "--backend-address", f"127.0.0.1:{back}",
        "--api-key", "cli-test-key-0123456789",
    )  # fmt: skip
    try:
        wait_healthy(back, process)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_services_are_loaded_from_a_module_path():
    front, back = free_port(), free_port()
    fixtures = str(Path(__file__).parent / "fixtures")
    process = snorky(
        "serve", "--frontend-address", f"127.0.0.1:{front}", "--backend-address", f"127.0.0.1:{back}",
        "--api-key", "cli-test-key-0123456789", "--services", "cli_services:build",
        env={"PYTHONPATH": fixtures},
    )  # fmt: skip
    try:
        wait_healthy(back, process)
        client = WsClient(f"ws://127.0.0.1:{front}/ws")
        assert client.call("echo", "echo", value=[1, "a"])["data"] == [1, "a"]
        assert client.call("pubsub", "subscribe", channel="c")["type"] == "response"
        assert (
            SnorkyBackend(f"http://127.0.0.1:{back}/backend", "cli-test-key-0123456789").call("stats", "ping") == "pong"
        )
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nodots", "must look like"),
        ("no_such_module:build", "cannot import"),
        ("cli_services:not_services", "not a Snorky service"),
        ("json:loads", "calling it raised TypeError"),
    ],
)
def test_bad_services_paths_fail_clearly(path: str, message: str):
    fixtures = str(Path(__file__).parent / "fixtures")
    process = snorky("serve", "--api-key", "cli-test-key-0123456789", "--services", path, env={"PYTHONPATH": fixtures})
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert message in err and "Traceback" not in err


def test_a_callable_returning_one_service_is_accepted():
    # As in Django's SNORKY["SERVICES"]: a callable may return a service or a list of them.
    front, back = free_port(), free_port()
    process = snorky(
        "serve", "--frontend-address", f"127.0.0.1:{front}", "--backend-address", f"127.0.0.1:{back}",
        "--api-key", "cli-test-key-0123456789", "--services", "cli_services:single", "--no-pubsub",
        env={"PYTHONPATH": FIXTURES},
    )  # fmt: skip
    try:
        wait_healthy(back, process)
        client = WsClient(f"ws://127.0.0.1:{front}/ws")
        assert client.call("echo", "echo", value="one")["data"] == "one"
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def test_a_callable_returning_no_service_is_a_configuration_error_without_traceback():
    process = snorky(
        "serve", "--api-key", "cli-test-key-0123456789", "--services", "cli_services:nothing",
        env={"PYTHONPATH": FIXTURES},
    )  # fmt: skip
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "returned None, which is not a Snorky service" in err and "Traceback" not in err


def test_other_server_options_are_given_with_option():
    front, back = free_port(), free_port()
    process = snorky(
        "serve", "--frontend-address", f"127.0.0.1:{front}", "--backend-address", f"127.0.0.1:{back}",
        "--api-key", "cli-test-key-0123456789", "--option", "max_connections=1", "--option", "sockjs=false",
        "--node-timeout", "4", "--broker-prefix", "other", env={"SNORKY_LOG_LEVEL": "warning"},
    )  # fmt: skip
    try:
        wait_healthy(back, process)
        first = WsClient(f"ws://127.0.0.1:{front}/ws")
        with pytest.raises(InvalidStatus) as refused:
            WsClient(f"ws://127.0.0.1:{front}/ws")
        assert refused.value.response.status_code == 503, "max_connections=1 holds"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{front}/sockjs/info", timeout=TIMEOUT)
        missing.value.close()
        assert missing.value.code == 404, "sockjs=false holds"
        first.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    # The level came from the environment, in lower case; broker options without a broker are
    # pointed out.
    assert "node_timeout, broker_prefix set without a broker: this node runs alone" in err


def test_the_token_secret_from_the_environment_checks_connection_tokens():
    front, back = free_port(), free_port()
    secret = "cli-token-secret-0123456789"
    process = snorky(
        "serve", "--frontend-address", f"127.0.0.1:{front}", "--backend-address", f"127.0.0.1:{back}",
        "--api-key", "cli-test-key-0123456789", env={"SNORKY_TOKEN_SECRET": secret},
    )  # fmt: skip
    try:
        wait_healthy(back, process)
        WsClient(f"ws://127.0.0.1:{front}/ws?token={connection_token('alice', secret)}").close()
        forged = connection_token("alice", "another-secret-0123456789")
        with pytest.raises(InvalidStatus):
            WsClient(f"ws://127.0.0.1:{front}/ws?token={forged}")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert secret not in err


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--option", "api_key=correct-horse-battery-staple"], {}, "--option api_key: set it with --api-key"),
        (["--option", "token_secret=correct-horse-battery-staple"], {}, "set it with --token-secret"),
        (["--option", "max_connections"], {}, "one has no '='"),
        (["--option", "max connections=3"], {}, "not an option name"),
        (["--option", "max_connections=3", "--option", "max_connections=4"], {}, "given twice"),
        (["--option", "no_such_option=1"], {}, "no_such_option"),
        (["--option", "max_connections=-1"], {}, "max_connections"),
        ([], {"SNORKY_NODE_TIMEOUT": "soon"}, "--node-timeout"),
        ([], {"SNORKY_LOG_LEVEL": "verbose"}, "'verbose' is not one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_bad_options_fail_at_start_up_naming_them(args: list[str], env: dict[str, str], message: str):
    process = snorky(
        "serve", "--frontend-address", "127.0.0.1:0", "--backend-address", "127.0.0.1:0",
        "--api-key", "cli-test-key-0123456789", *args, env=env,
    )  # fmt: skip
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2, err
    assert message in err
    assert "correct-horse" not in err and "Traceback" not in err


def console_script(directory: Path) -> list[str]:
    """The ``snorky`` console script as pip writes it, from pyproject.toml's [project.scripts]."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    module, _, function = pyproject["project"]["scripts"]["snorky"].partition(":")
    script = directory / "bin" / "snorky"
    script.parent.mkdir()
    script.write_text(
        "import re\n"
        "import sys\n"
        f"from {module} import {function}\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({function}())\n"
    )
    return [sys.executable, str(script)]


def test_the_console_script_imports_services_from_the_current_directory(tmp_path: Path):
    (tmp_path / "project_services.py").write_text(
        "from snorky.services import RPCService, rpc_command\n\n\n"
        "class Echo(RPCService):\n"
        "    @rpc_command\n"
        "    def echo(self, req, value=None):\n"
        "        return value\n\n\n"
        "def build():\n"
        "    return Echo('echo')\n"
    )
    front, back = free_port(), free_port()
    process = snorky(
        "serve", "--frontend-address", f"127.0.0.1:{front}", "--backend-address", f"127.0.0.1:{back}",
        "--api-key", "cli-test-key-0123456789", "--services", "project_services:build",
        command=console_script(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_healthy(back, process)
        client = WsClient(f"ws://127.0.0.1:{front}/ws")
        assert client.call("echo", "echo", value=2)["data"] == 2
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def test_usage_names_the_program_as_invoked(tmp_path: Path):
    for command, usage in (
        (console_script(tmp_path), "usage: snorky serve"),
        ([sys.executable, "-m", "snorky"], "usage: python -m snorky serve"),
    ):
        process = snorky("serve", "--help", command=command)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert out.startswith(usage), out
