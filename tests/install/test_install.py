"""The wheel and the sdist in dist/ (``make dist``), installed and used the way a user would.

The wheel goes into a fresh virtualenv whose ``PATH`` has no ``cargo`` or ``rustc``, with
``pip install "dist/snorky-...whl[django]"``; everything after that runs from that virtualenv only,
in a directory outside the repository: a server through the Python API and through the ``snorky``
command, publishing with ``SnorkyBackend``, and a Django project made with ``django-admin
startproject`` that adds ``snorky_django``, passes ``manage.py check``, migrates and serves
``manage.py snorky``, whose deltas reach a WebSocket client. The sdist is built and installed with
cargo, and a Python the wheel does not support (3.10) is refused by pip with the wheel's tag.

Run by ``make test-install``, which builds dist/ first (once per run; the tests reuse it), in two
processes (pytest-xdist's loadscope): the sdist's build (its own test class) beside the rest.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from ports import free_port
from wsclient import WsClient

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "dist"
# The tag `scripts/dist` builds: CPython 3.11+ stable ABI, glibc 2.17+ on x86_64.
WHEEL_TAGS = "cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64"
WHEEL_SIZE_LIMIT = 6_000_000
API_KEY = "install-test-key"
# Waits for servers to come up and for subprocesses that do not compile anything.
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0


def only(pattern: str) -> Path:
    found = sorted(DIST.glob(pattern))
    if len(found) != 1:
        pytest.fail(f"expected one dist/{pattern}, found {[p.name for p in found]}: run `make dist`")
    return found[0]


def path_without_rust() -> str:
    """This process's PATH minus every directory holding cargo or rustc (and the dev virtualenv)."""
    keep = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or Path(entry).resolve() == Path(sys.executable).parent.resolve():
            continue
        if any(os.access(Path(entry) / tool, os.X_OK) for tool in ("cargo", "rustc")):
            continue
        keep.append(entry)
    return os.pathsep.join(keep)


def clean_env(path: str, **extra: str) -> dict[str, str]:
    """An environment for a virtualenv's commands: this one's minus what points into the repository."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUALENV", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")
        and not key.startswith(("SNORKY_", "PYTEST_", "CARGO_TARGET_DIR"))
    }
    env.update(PATH=path, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run(
    args: list[str | Path], *, env: dict[str, str], cwd: Path, timeout: float = COMMAND_TIMEOUT, stderr: bool = False
) -> str:
    """Runs a command to completion; returns its stdout (and stderr), or fails the test with its output."""
    result = subprocess.run(
        [str(arg) for arg in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{args} exited with {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout + (result.stderr if stderr else "")


class Process:
    """A long-running command whose output goes to a file (read on failure and on demand)."""

    def __init__(self, args: list[str | Path], *, env: dict[str, str], cwd: Path, log: Path, stdin: bool = False):
        self.log = log
        self._out = log.open("w")
        self.popen = subprocess.Popen(
            [str(arg) for arg in args],
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_output(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} in the output of {self.popen.args}:\n{self.output()}")

    def wait_healthy(self, port: int, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"{self.popen.args} did not answer on port {port}:\n{self.output()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (or closing stdin, for a process that reads it), then the exit status."""
        if self.popen.stdin:
            self.popen.stdin.close()
        else:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)
            pytest.fail(f"{self.popen.args} did not stop within {timeout} s:\n{self.output()}")
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._out.close()


class Venv:
    """A fresh virtualenv in ``root``; commands run with ``env`` from ``cwd``."""

    def __init__(self, root: Path, env: dict[str, str], cwd: Path) -> None:
        self.root = root
        self.env = env
        self.cwd = cwd
        # The base interpreter, not the dev virtualenv's: a virtualenv made from a virtualenv
        # uses the same base anyway, this just says so.
        base = getattr(sys, "_base_executable", sys.executable)
        run([base, "-m", "venv", root], env=env, cwd=cwd)
        self.python = root / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def run(self, *args: str | Path, timeout: float = COMMAND_TIMEOUT, cwd: Path | None = None) -> str:
        return run(list(args), env=self.env, cwd=cwd or self.cwd, timeout=timeout)

    def pip_install(self, *args: str | Path, timeout: float = COMMAND_TIMEOUT) -> str:
        """pip's output, with the build's (on stderr)."""
        return run(
            [self.python, "-m", "pip", "install", *args], env=self.env, cwd=self.cwd, timeout=timeout, stderr=True
        )


def constraints(tmp: Path) -> Path:
    """The dev requirements' pins as pip constraints (those with extras cannot be constraints), so
    the extras resolve to the versions the rest of the suite tests, from pip's cache."""
    lines = (REPO / "requirements-dev.txt").read_text().splitlines()
    path = tmp / "constraints.txt"
    path.write_text("\n".join(line for line in lines if "==" in line and "[" not in line) + "\n")
    return path


@pytest.fixture(scope="module")
def wheel() -> Path:
    return only("snorky-*.whl")


@pytest.fixture(scope="module")
def sdist() -> Path:
    return only("snorky-*.tar.gz")


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The wheel with the ``django`` extra, in a virtualenv made and used without a Rust toolchain."""
    tmp = tmp_path_factory.mktemp("wheel-venv")
    path = path_without_rust()
    env = clean_env(path)
    work = tmp / "work"
    work.mkdir()
    venv = Venv(tmp / "venv", env, work)
    venv.env = clean_env(f"{venv.root / 'bin'}{os.pathsep}{path}")
    venv.pip_install("-c", constraints(tmp), f"{wheel}[django]")
    return venv


# --- The wheel itself ---------------------------------------------------------------------------


def test_the_wheel_is_abi3_manylinux2014_small_and_has_the_typed_packages_and_the_js_client(wheel: Path):
    assert wheel.name.endswith(f"-{WHEEL_TAGS}.whl"), wheel.name
    assert wheel.stat().st_size <= WHEEL_SIZE_LIMIT, f"{wheel.name}: {wheel.stat().st_size} bytes"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in (
        "snorky/py.typed",
        "snorky/_core.pyi",
        "snorky_django/py.typed",
        "snorky_django/static/snorky/snorky.min.js",
        "snorky_django/static/snorky/snorky.mjs",
        "snorky_django/migrations/0001_initial.py",
    ):
        assert name in names, f"{name} is not in {wheel.name}"
    libraries = sorted(name for name in names if ".so" in name)
    assert libraries == ["snorky/_core.abi3.so"], libraries


def test_auditwheel_finds_only_manylinux_2_17_system_libraries(wheel: Path):
    auditwheel = Path(sys.executable).parent / "auditwheel"
    out = subprocess.run(
        [auditwheel, "show", wheel], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=True
    ).stdout
    text = " ".join(out.split())
    assert 'is consistent with the following platform tag: "manylinux_2_17_x86_64"' in text, out
    # Only glibc's own libraries: nothing to vendor, nothing that a manylinux2014 system lacks.
    libraries = set(re.findall(r"(\S+\.so(?:\.\d+)*) with versions", text))
    assert libraries <= {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "libgcc_s.so.1"}, out


def test_versions_agree_wheel_package_changelog_and_npm_package(wheel: Path, venv: Venv):
    wheel_version = wheel.name.split("-")[1]
    installed = json.loads(
        venv.run(
            venv.python,
            "-c",
            "import json, importlib.metadata, snorky; "
            "print(json.dumps([snorky.__version__, importlib.metadata.version('snorky'), snorky.__file__]))",
        )
    )
    changelog = (REPO / "CHANGELOG.md").read_text()
    match = re.search(r"^## .*?\b(\d+\.\d+\.\d+\S*?)\)?$", changelog, re.MULTILINE)
    assert match, "CHANGELOG.md has no version heading"
    assert installed[:2] == [wheel_version, wheel_version]
    assert match.group(1) == wheel_version, (
        f"CHANGELOG.md's latest version is {match.group(1)}, the wheel's {wheel_version}"
    )
    # Imported from the virtualenv, not from the repository.
    assert Path(installed[2]).is_relative_to(venv.root), installed[2]
    # The browser client released beside it carries the same version.
    assert json.loads((REPO / "js" / "package.json").read_text())["version"] == wheel_version


# --- Without Rust: the Python API, the command line, the backend client -----------------------------

SERVE_WITH_THE_API = """
import json, sys
from snorky import Server, ServiceRegistry
from snorky.services import PubSubBackend, PubSubService

pubsub = PubSubService("pubsub")
server = Server(frontend=ServiceRegistry([pubsub]), backend=ServiceRegistry([PubSubBackend("pubsub_backend", pubsub)]),
                frontend_address="127.0.0.1:0", backend_address="127.0.0.1:0", api_key=sys.argv[1])
with server.start() as handle:
    print(json.dumps({"frontend": handle.frontend_port, "backend": handle.backend_port}), flush=True)
    sys.stdin.read()  # until the test closes it
print("stopped", flush=True)
"""

PUBLISH = """
import sys
from snorky.backend import SnorkyBackend

SnorkyBackend(sys.argv[1], sys.argv[2]).publish("news", {"title": "from the wheel", "via": sys.argv[3]})
"""


def test_no_rust_toolchain_is_reachable_from_the_virtualenv(venv: Venv):
    assert shutil.which("cargo", path=venv.env["PATH"]) is None
    assert shutil.which("rustc", path=venv.env["PATH"]) is None
    assert shutil.which("snorky", path=venv.env["PATH"]) == str(venv.bin("snorky"))


@pytest.mark.parametrize("how", ["python-api", "snorky-command"])
def test_a_server_from_the_wheel_delivers_what_snorky_backend_publishes(venv: Venv, how: str):
    script = venv.cwd / "serve.py"
    script.write_text(SERVE_WITH_THE_API)
    if how == "python-api":
        server = Process(
            [venv.python, script, API_KEY], env=venv.env, cwd=venv.cwd, log=venv.cwd / f"{how}.log", stdin=True
        )
        ports = json.loads(server.wait_for_output(r"\{.*\}").group(0))
        frontend, backend = ports["frontend"], ports["backend"]
    else:
        frontend, backend = free_port(), free_port()
        server = Process(
            [venv.bin("snorky"), "serve", "--frontend-address", f"127.0.0.1:{frontend}",
             "--backend-address", f"127.0.0.1:{backend}"],
            env={**venv.env, "SNORKY_API_KEY": API_KEY},
            cwd=venv.cwd,
            log=venv.cwd / f"{how}.log",
        )  # fmt: skip
        server.wait_healthy(backend)
    try:
        client = WsClient(f"ws://127.0.0.1:{frontend}/ws")
        try:
            assert client.call("pubsub", "subscribe", channel="news")["type"] == "response"
            venv.run(venv.python, "-c", PUBLISH, f"http://127.0.0.1:{backend}/backend", API_KEY, how)
            assert client.recv()["message"] == {
                "type": "message",
                "channel": "news",
                "message": {"title": "from the wheel", "via": how},
            }
        finally:
            client.close()
        assert server.stop() == 0, server.output()
    finally:
        server.kill()


# --- Without Rust: a new Django project --------------------------------------------------------------

NOTES_MODEL = """
from django.db import models
from snorky_django import subscribable


@subscribable(fields=["id", "text"])  # what deltas carry: declared, or manage.py check warns
class Note(models.Model):
    text = models.CharField(max_length=100)
"""

SETTINGS = """
INSTALLED_APPS += ["rest_framework", "snorky_django", "notes"]
SNORKY = {{"API_KEY": {key!r}, "FRONTEND_ADDRESS": "127.0.0.1:{frontend}", "BACKEND_ADDRESS": "127.0.0.1:{backend}"}}
"""


def test_a_new_django_project_serves_live_deltas_from_the_wheel(venv: Venv):
    venv.run(venv.bin("django-admin"), "startproject", "mysite")
    project = venv.cwd / "mysite"
    manage = [venv.python, "manage.py"]
    venv.run(*manage, "startapp", "notes", cwd=project)
    (project / "notes" / "models.py").write_text(NOTES_MODEL)
    frontend, backend = free_port(), free_port()
    with (project / "mysite" / "settings.py").open("a") as settings:
        settings.write(SETTINGS.format(key=API_KEY, frontend=frontend, backend=backend))

    assert "System check identified no issues" in venv.run(*manage, "check", cwd=project)
    venv.run(*manage, "makemigrations", "notes", cwd=project)
    migrated = venv.run(*manage, "migrate", "--noinput", cwd=project)
    assert "Applying snorky_django.0001_initial... OK" in migrated
    assert "Applying notes.0001_initial... OK" in migrated

    server = Process([*manage, "snorky"], env=venv.env, cwd=project, log=venv.cwd / "manage-snorky.log")
    try:
        server.wait_healthy(backend)
        banner = server.wait_for_output(r"Quit the server with CONTROL-C")
        assert banner and "DataSync dealers: Note, NoteById" in server.output()
        token = venv.run(
            *manage,
            "shell",
            "-c",
            "from snorky_django import authorize_subscription; "
            "print(authorize_subscription([{'dealer': 'Note', 'query': None}]))",
            cwd=project,
        ).splitlines()[-1]  # after Django's "objects imported automatically" note
        client = WsClient(f"ws://127.0.0.1:{frontend}/ws")
        try:
            reply = client.call("datasync", "acquireSubscription", token=token)
            assert reply["type"] == "response", (reply, token)
            venv.run(
                *manage,
                "shell",
                "-c",
                "from notes.models import Note; Note.objects.create(text='live from a wheel')",
                cwd=project,
            )
            frame = client.recv()
            assert frame["service"] == "datasync"
            assert frame["message"]["type"] == "delta"
            delta = frame["message"]["delta"]
            assert (delta["type"], delta["model"], delta["data"]["text"]) == ("insert", "Note", "live from a wheel")
        finally:
            client.close()
        assert server.stop() == 0, server.output()
        assert "Snorky stopped." in server.output()
    finally:
        server.kill()


# --- Bad input: a Python the wheel does not support -------------------------------------------------


def python310() -> str | None:
    """A Python 3.10 interpreter that runs, if this machine has one (on PATH or from pyenv)."""
    candidates = [
        shutil.which("python3.10"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10"))),
    ]
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=30).returncode == 0:
            return candidate
    return None


def assert_refused_with_tag(result: subprocess.CompletedProcess[str], wheel: Path) -> None:
    assert result.returncode != 0, result.stdout
    # pip names the file, whose name carries the tags: cp311-abi3-manylinux...
    assert f"{wheel.name} is not a supported wheel on this platform" in result.stderr, result.stderr
    assert "cp311-abi3" in wheel.name


def test_pip_refuses_the_wheel_for_python_3_10_naming_its_tag(wheel: Path, venv: Venv, tmp_path: Path):
    # pip resolving for a 3.10 target, as it would on a 3.10 machine.
    result = subprocess.run(
        [venv.python, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", "--only-binary=:all:",
         "--python-version", "3.10", "--target", tmp_path / "target", wheel],
        env=venv.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert_refused_with_tag(result, wheel)


def test_a_real_python_3_10_refuses_the_wheel_and_nothing_is_installed(wheel: Path, tmp_path: Path):
    interpreter = python310()
    if interpreter is None:
        pytest.skip("no Python 3.10 on this machine (the --python-version test covers pip's check)")
    env = clean_env(path_without_rust())
    run([interpreter, "-m", "venv", tmp_path / "venv310"], env=env, cwd=tmp_path)
    python = tmp_path / "venv310" / "bin" / "python"
    result = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", wheel],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert_refused_with_tag(result, wheel)
    imported = subprocess.run([python, "-c", "import snorky"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "No module named 'snorky'" in imported.stderr


# --- The sdist, built with cargo ----------------------------------------------------------------------

SMOKE = """
import importlib.metadata, json, sys, sysconfig
from pathlib import Path
from snorky import Server, ServiceRegistry, __version__
from snorky.services import PubSubService

site = Path(sysconfig.get_paths()["purelib"])
server = Server(frontend=ServiceRegistry([PubSubService("pubsub")]), frontend_address="127.0.0.1:0",
                backend_address="127.0.0.1:0", api_key="sdist-smoke-test-key")
with server.start() as handle:
    ports = [handle.frontend_port, handle.backend_port]
print(json.dumps({
    "version": __version__, "metadata": importlib.metadata.version("snorky"), "ports": ports,
    "files": [p for p in ("snorky/py.typed", "snorky_django/py.typed", "snorky_django/static/snorky/snorky.min.js")
              if (site / p).is_file()],
}))
"""


def stale_builds_of_the_extension(target: Path) -> list[Path]:
    """Cargo's records of earlier builds of the extension (the crate with its `python` feature) in
    the dev profile of `target`: an sdist's files all carry the same old mtime, so cargo would take
    such a build, of other sources, for fresh."""
    stale = []
    for record in target.glob("debug/.fingerprint/snorky-*/lib-snorky.json"):
        try:
            features = json.loads(record.read_text()).get("features", "")
        except (OSError, ValueError):
            features = '"python"'  # unreadable: removed, to be safe
        if '"python"' in features and '"fuzzing"' not in features:
            stale.append(record.parent)
    return stale


class TestTheSdist:
    """A class of its own so that `make test-install` runs it in one process (pytest-xdist's
    loadscope groups a class's tests) while the wheel's tests run in the other."""

    @pytest.mark.timeout(1800)
    def test_builds_with_cargo_and_installs(self, sdist: Path, wheel: Path, tmp_path: Path) -> None:
        assert shutil.which("cargo"), "building the sdist needs cargo on PATH"
        # Built in the dev profile, in the repository's target directory, where `maturin develop`
        # (scripts/setup) compiled the dependencies with the same features: only snorky itself is
        # compiled here. What this proves is that the sdist holds everything a build needs and that
        # pip installs what it builds; the release profile is what the wheel is built with
        # (scripts/dist), from the same sources.
        target = REPO / "target"
        for stale in stale_builds_of_the_extension(target):
            shutil.rmtree(stale)
        env = clean_env(os.environ["PATH"], CARGO_TARGET_DIR=str(target), MATURIN_PEP517_ARGS="--profile dev")
        venv = Venv(tmp_path / "venv", env, tmp_path)
        # --no-cache-dir: pip would otherwise reuse a wheel it built from an sdist of the same name.
        built = venv.pip_install("-v", "--no-cache-dir", sdist, timeout=1700)
        assert re.search(r"Compiling snorky v", built), built[-3000:]
        result = json.loads(venv.run(venv.python, "-c", SMOKE))
        version = wheel.name.split("-")[1]
        assert result["version"] == result["metadata"] == version
        assert all(port > 0 for port in result["ports"])
        assert result["files"] == [
            "snorky/py.typed",
            "snorky_django/py.typed",
            "snorky_django/static/snorky/snorky.min.js",
        ]
