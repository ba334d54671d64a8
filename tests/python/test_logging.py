"""Rust logs reach Python's logging under the ``snorky`` logger."""

from __future__ import annotations

import logging

from wsclient import WsClient

from snorky.services import PubSubService
from snorky.testing import running_server


def test_server_logs_go_to_the_snorky_logger(caplog):
    caplog.set_level(logging.DEBUG, logger="snorky")
    with running_server([PubSubService()]) as server:
        client = WsClient(server.ws_url)
        client.ws.send("not json")
        client.call("pubsub", "subscribe", channel="c")
        client.close()
    names = {record.name for record in caplog.records}
    assert "snorky.server" in names
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("snorky")]
    assert any("snorky listening" in message for message in messages)
    assert any("dropped a frame" in message for message in messages)


def test_log_level_configured_after_import_is_honoured(caplog):
    caplog.set_level(logging.WARNING, logger="snorky")
    with running_server([PubSubService()]):
        pass
    assert not [r for r in caplog.records if r.name.startswith("snorky") and r.levelno < logging.WARNING]


def test_a_client_gone_without_a_close_frame_is_not_logged_as_a_bad_frame(caplog):
    import socket
    import time

    caplog.set_level(logging.DEBUG, logger="snorky")
    with running_server([PubSubService()]) as server:
        client = WsClient(server.ws_url)
        client.call("pubsub", "subscribe", channel="c")
        # The process dies, say: its socket is closed, no close frame is sent.
        client.ws.socket.shutdown(socket.SHUT_RDWR)
        client.ws.socket.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("closed" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        bad = WsClient(server.ws_url)
        bad.ws.socket.sendall(b"\x81\x02{}")  # an unmasked frame: a real protocol error
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("bad frame" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
    bad_frames = [r.getMessage() for r in caplog.records if "bad frame" in r.getMessage()]
    assert len(bad_frames) == 1, f"only the unmasked frame is a bad frame: {bad_frames}"
    assert "closing with 1002" in bad_frames[0]
