"""Shared fixtures: a real server on free ports and WebSocket clients with bounded waits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from wsclient import WsClient

from snorky.services import PubSubBackend, PubSubService
from snorky.testing import RunningServer, running_server


@pytest.fixture
def pubsub_server() -> Iterator[RunningServer]:
    pubsub = PubSubService("pubsub")
    with running_server([pubsub], [PubSubBackend("pubsub_backend", pubsub)]) as server:
        yield server


@pytest.fixture
def client_factory(pubsub_server: RunningServer) -> Iterator[Any]:
    clients: list[WsClient] = []

    def make(**kwargs: Any) -> WsClient:
        client = WsClient(pubsub_server.ws_url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
