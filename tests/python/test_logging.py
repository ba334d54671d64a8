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
