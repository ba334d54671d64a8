"""The PubSub demo starts, serves its page and the shipped client, and relays messages between pages."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from wsclient import WsClient

from test_cli import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demos" / "pubsub" / "run.py"
CLIENT = ROOT / "python" / "snorky_django" / "static" / "snorky" / "snorky.min.js"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def test_demo_serves_the_page_and_relays_messages():
    http, ws, backend = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--no-browser", "--http-port", str(http), "--ws-port", str(ws),
         "--backend-port", str(backend)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        page = None
        while page is None and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/", timeout=1) as response:
                    page = response.read().decode()
            except OSError:
                time.sleep(0.1)
        assert page is not None and "Message board" in page
        assert '<script src="/snorky/snorky.min.js">' in page
        # The shipped client, byte for byte, and where the page finds the WebSocket.
        assert fetch(f"http://127.0.0.1:{http}/snorky/snorky.min.js") == CLIENT.read_bytes()
        assert f":{ws}/ws" in fetch(f"http://127.0.0.1:{http}/config.js").decode()
        assert b"Snorky.PubSub" in fetch(f"http://127.0.0.1:{http}/pubsub.js")

        origin = {"origin": f"http://127.0.0.1:{http}"}
        first = WsClient(f"ws://127.0.0.1:{ws}/ws", additional_headers=origin)
        second = WsClient(f"ws://127.0.0.1:{ws}/ws", additional_headers=origin)
        for client in (first, second):
            assert client.call("pubsub", "subscribe", channel="messages")["type"] == "response"
        first.call("pubsub", "publish", channel="messages", message="hi")
        assert second.recv()["message"] == {"type": "message", "channel": "messages", "message": "hi"}
        first.close()
        second.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    assert process.returncode == 0
