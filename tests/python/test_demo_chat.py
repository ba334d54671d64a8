"""The chat demo's run.py migrates, creates the users, starts both servers, and stops them on a signal.

What the page does is tested in Chromium by tests/browser/chat.test.mjs.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from test_cli import free_port

DEMO = Path(__file__).resolve().parents[2] / "demos" / "chat" / "run.py"


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_the_chat_and_stops_both_servers(tmp_path, stop_signal):
    web, ws, backend = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--no-browser", "--port", str(web), "--ws-port", str(ws),
         "--backend-port", str(backend), "--db", str(tmp_path / "db.sqlite3")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = ""
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while "Ctrl-C stops both servers" not in output:
            assert time.monotonic() < deadline, output
            line = process.stdout.readline()
            assert line, f"run.py exited ({process.wait()}):\n{output}"
            output += line
        assert f"http://127.0.0.1:{web}/" in output
        assert "alice / wonderland, bob / builder, carol / christmas" in output

        # Logged in through Django's form, the page carries the user's connection token and the
        # WebSocket's URL; the notes view answers with the room's notes.
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        login = opener.open(f"http://127.0.0.1:{web}/login/", timeout=5).read().decode()
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login)
        assert csrf is not None
        form = {"username": "alice", "password": "wonderland", "csrfmiddlewaretoken": csrf.group(1)}
        request = urllib.request.Request(
            f"http://127.0.0.1:{web}/login/",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Referer": f"http://127.0.0.1:{web}/login/"},
        )
        page = opener.open(request, timeout=5).read().decode()
        config = re.search(r'<script id="snorky-config" type="application/json">(.*?)</script>', page)
        assert config is not None, page
        assert json.loads(config.group(1))["url"] == f"ws://127.0.0.1:{ws}/ws"
        assert json.loads(config.group(1))["token"]
        assert "snorky/snorky.min.js" in page
        notes = json.loads(opener.open(f"http://127.0.0.1:{web}/rooms/general/notes", timeout=5).read())
        assert notes["text"].startswith("Friday demo") and notes["version"] == 0
    finally:
        process.send_signal(stop_signal)
        try:
            output += process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output += process.communicate()[0]
    assert process.returncode == 0, output
    deadline = time.monotonic() + 5
    while any(listening(port) for port in (web, ws, backend)):
        assert time.monotonic() < deadline, "a server outlived run.py"
        time.sleep(0.1)
