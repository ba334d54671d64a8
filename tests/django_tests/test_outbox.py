"""DELIVERY = "outbox": deltas are rows written with the change, relayed in order, deleted only
once the server accepted them; a server or relay that goes away loses nothing."""

from __future__ import annotations

import pytest
from django.db import transaction

from django_tests.conftest import TcpProxy, client_for, subscribe, wait_until
from django_tests.testapp.models import Label, Task
from snorky.backend import SnorkyBackend
from snorky_django import publish_deltas
from snorky_django.models import OutboxEntry
from snorky_django.relay import OutboxRelay
from snorky_django.testing import live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def outbox_mode(settings):
    settings.SNORKY = {**settings.SNORKY, "DELIVERY": "outbox"}


def test_outbox_rows_commit_and_roll_back_with_the_change(outbox_mode, alice):
    OutboxEntry.objects.all().delete()  # alice's creation is not subscribable; nothing there
    with transaction.atomic():
        task = Task.objects.create(title="kept", owner=alice)
        with pytest.raises(ValueError), transaction.atomic():
            Task.objects.create(title="undone", owner=alice)
            raise ValueError
    with pytest.raises(ValueError), transaction.atomic():
        Task.objects.create(title="rolled back", owner=alice)
        raise ValueError
    task.title = "kept, renamed"
    task.save()
    deltas = list(OutboxEntry.objects.values_list("delta", flat=True))
    assert [(d["type"], (d.get("data") or d["newData"])["title"]) for d in deltas] == [
        ("insert", "kept"),
        ("update", "kept, renamed"),
    ]


def test_relay_delivers_every_delta_in_order(live_outbox, ws_factory, alice):
    _, token = subscribe(client_for(alice), "/api/tasks/")
    ws = ws_factory(live_outbox.ws_url)
    ws.acquire(token)
    task = Task.objects.create(title="0", owner=alice)
    for i in range(1, 20):
        with transaction.atomic():
            task.title = str(i)
            task.save()
    deltas = ws.deltas(20)
    assert deltas[0]["type"] == "insert"
    assert [d["newData"]["title"] for d in deltas[1:]] == [str(i) for i in range(1, 20)]
    wait_until(lambda: not OutboxEntry.objects.exists(), message="an empty outbox")


def test_server_unreachable_while_changes_commit_then_back(ws_factory, alice):
    with live_snorky_server(DELIVERY="outbox", relay=False) as live:
        proxy = TcpProxy(live.handle.backend_port)
        relay = OutboxRelay(
            SnorkyBackend(proxy.url, live.api_key, timeout=2.0), poll_interval=0.02, max_retry_delay=0.1
        )
        _, token = subscribe(client_for(alice), "/api/tasks/")
        ws = ws_factory(live.ws_url)
        ws.acquire(token)
        relay.start()
        try:
            Task.objects.create(title="before", owner=alice)
            assert ws.delta()["data"]["title"] == "before"
            # The relay deletes a batch only once the server's answer is back: wait for that, or
            # cutting the proxy could catch the answer in flight (and the entry be sent again).
            wait_until(lambda: not OutboxEntry.objects.exists(), message="the first entry relayed")

            proxy.down()
            for i in range(5):
                with transaction.atomic():
                    Task.objects.create(title=f"during {i}", owner=alice)
            ws.assert_silent(0.3)
            assert OutboxEntry.objects.count() == 5  # kept while the server is away

            proxy.up()
            assert [d["data"]["title"] for d in ws.deltas(5)] == [f"during {i}" for i in range(5)]
            wait_until(lambda: not OutboxEntry.objects.exists(), message="an empty outbox")
        finally:
            assert relay.stop(5.0)
            proxy.down()


def test_a_refused_entry_is_kept_aside_and_the_rest_delivered(live_outbox, ws_factory, alice, caplog):
    _, token = subscribe(client_for(alice), "/api/tasks/")
    ws = ws_factory(live_outbox.ws_url)
    ws.acquire(token)
    live_outbox.relay.stop()
    with transaction.atomic():
        Task.objects.create(title="one", owner=alice)
        publish_deltas([{"type": "insert", "model": "Ghost", "data": {}}])
        Task.objects.create(title="two", owner=alice)
    assert live_outbox.relay.drain() == 2
    assert [d["data"]["title"] for d in ws.deltas(2)] == ["one", "two"]
    refused = OutboxEntry.objects.get()
    assert refused.delta["model"] == "Ghost" and refused.error
    assert "Snorky refused outbox entry" in caplog.text


def test_outbox_mode_never_calls_the_server_from_the_request(outbox_mode, alice):
    # The backend URL points nowhere: in outbox mode a save does not notice.
    label = Label.objects.create(name="quiet")
    assert OutboxEntry.objects.get().delta["data"]["id"] == str(label.pk)
