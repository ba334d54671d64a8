"""End to end over real sockets: Django's test client → DRF → a subscription token → a WebSocket
client acquires it → a model saved in a transaction → the delta arrives (or, rolled back, not)."""

from __future__ import annotations

import json
import re

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import Client, override_settings
from websockets.exceptions import InvalidStatus

from django_tests.conftest import client_for, subscribe
from django_tests.testapp.models import Label, Task, Team
from snorky_django.testing import live_snorky_server

pytestmark = pytest.mark.django_db(transaction=True)


def test_list_subscribe_then_a_committed_insert_arrives(live, ws_factory, alice):
    http = client_for(alice)
    Task.objects.create(title="existing", owner=alice)
    body, token = subscribe(http, "/api/tasks/")
    assert [task["title"] for task in body] == ["existing"]

    ws = ws_factory(live.ws_url, user=alice)
    ws.acquire(token)
    with transaction.atomic():
        task = Task.objects.create(title="write the guide", owner=alice)
    delta = ws.delta()
    assert delta["type"] == "insert" and delta["model"] == "Task"
    assert delta["data"]["id"] == task.pk and delta["data"]["owner"] == alice.pk
    assert delta["data"]["title"] == "write the guide"


def test_response_headers_expose_the_token_and_forbid_caching(live, alice):
    response = client_for(alice).get("/api/tasks/", headers={"X-Snorky": "subscribe"})
    assert response.status_code == 200
    assert "X-Subscription-Token" in response["Access-Control-Expose-Headers"]
    assert "no-store" in response["Cache-Control"]
    assert "X-Snorky" in response["Vary"]
    plain = client_for(alice).get("/api/tasks/")
    assert "X-Subscription-Token" not in plain


def test_rolled_back_transaction_publishes_nothing(live, ws_factory, alice):
    http = client_for(alice)
    _, token = subscribe(http, "/api/tasks/")
    ws = ws_factory(live.ws_url, user=alice)
    ws.acquire(token)

    with pytest.raises(RuntimeError), transaction.atomic():
        Task.objects.create(title="never", owner=alice)
        raise RuntimeError("roll back")
    assert http.post("/failing-create/").status_code == 409
    Task.objects.create(title="after", owner=alice)
    # Deltas arrive in order: the first one is the committed change, the rolled-back ones never came.
    assert ws.delta()["data"]["title"] == "after"
    ws.assert_silent()
    assert list(Task.objects.values_list("title", flat=True)) == ["after"]


def test_update_and_delete_carry_old_data_in_commit_order(live, ws_factory, alice):
    task = Task.objects.create(title="draft", owner=alice)
    _, token = subscribe(client_for(alice), "/api/tasks/")
    ws = ws_factory(live.ws_url, user=alice)
    ws.acquire(token)
    with transaction.atomic():
        task.title = "final"
        task.save()
        task.delete()
    update, delete = ws.deltas(2)
    assert update["type"] == "update"
    assert update["oldData"]["title"] == "draft" and update["newData"]["title"] == "final"
    assert delete == {"type": "delete", "model": "Task", "data": update["newData"]}


def test_users_see_only_their_own_tasks(live, ws_factory, alice, bob):
    _, alice_token = subscribe(client_for(alice), "/api/tasks/")
    _, bob_token = subscribe(client_for(bob), "/api/tasks/")
    alice_ws, bob_ws = ws_factory(live.ws_url, user=alice), ws_factory(live.ws_url, user=bob)
    alice_ws.acquire(alice_token)
    bob_ws.acquire(bob_token)

    # Alice cannot take Bob's subscription, even with his token.
    assert alice_ws.call("datasync", "acquireSubscription", token=bob_token) == {
        "type": "error",
        "callId": 2,
        "message": "No such subscription",
    }
    Task.objects.create(title="bob's secret", owner=bob)
    Task.objects.create(title="alice's", owner=alice)
    assert alice_ws.delta()["data"]["title"] == "alice's"
    assert bob_ws.delta()["data"]["title"] == "bob's secret"
    alice_ws.assert_silent()
    # And the list itself is filtered the same way.
    assert [t["title"] for t in client_for(alice).get("/api/tasks/").json()] == ["alice's"]


def test_an_update_moving_a_task_out_of_view_is_a_delete(live, ws_factory, alice, bob):
    task = Task.objects.create(title="handover", owner=alice)
    _, alice_token = subscribe(client_for(alice), "/api/tasks/")
    _, bob_token = subscribe(client_for(bob), "/api/tasks/")
    alice_ws, bob_ws = ws_factory(live.ws_url, user=alice), ws_factory(live.ws_url, user=bob)
    alice_ws.acquire(alice_token)
    bob_ws.acquire(bob_token)

    with transaction.atomic():
        task.owner = bob
        task.save()
    gone = alice_ws.delta()
    assert gone["type"] == "delete" and gone["data"]["owner"] == alice.pk
    arrived = bob_ws.delta()
    assert arrived["type"] == "insert" and arrived["data"]["owner"] == bob.pk


def test_filter_dealer_view(live, ws_factory, alice):
    red, blue = Team.objects.create(slug="red", name="Red"), Team.objects.create(slug="blue", name="Blue")
    Task.objects.create(title="red one", owner=alice, team=red)
    body, token = subscribe(client_for(alice), f"/api/teams/{red.pk}/tasks/")
    assert [t["title"] for t in body] == ["red one"]
    ws = ws_factory(live.ws_url, user=alice)
    ws.acquire(token)
    Task.objects.create(title="blue one", owner=alice, team=blue)
    finished = Task.objects.create(title="red two", owner=alice, team=red)
    assert ws.delta()["data"]["title"] == "red two"
    finished.done = True
    finished.save()  # no longer matches ["==", "done", false]: a delete
    assert ws.delta()["type"] == "delete"


def test_retrieve_subscribes_to_one_object_by_primary_key(live, ws_factory, alice):
    mine = Task.objects.create(title="mine", owner=alice)
    other = Task.objects.create(title="other", owner=alice)
    body, token = subscribe(client_for(alice), f"/api/tasks/{mine.pk}/")
    assert body["title"] == "mine"
    ws = ws_factory(live.ws_url, user=alice)
    ws.acquire(token)
    other.title = "other, changed"
    other.save()
    mine.title = "mine, changed"
    mine.save()
    delta = ws.delta()
    assert delta["type"] == "update" and delta["newData"]["title"] == "mine, changed"
    ws.assert_silent()


def test_retrieve_api_view(live, ws_factory, alice):
    task = Task.objects.create(title="shared", owner=alice)
    body, token = subscribe(client_for(alice), f"/api/any-task/{task.pk}/")
    assert body["title"] == "shared"
    ws = ws_factory(live.ws_url, user=alice)
    ws.acquire(token)
    task.delete()
    assert ws.delta() == {"type": "delete", "model": "Task", "data": body}


def test_retrieve_of_someone_elses_task_is_404_and_authorizes_nothing(live, alice, bob):
    theirs = Task.objects.create(title="bob's", owner=bob)
    response = client_for(alice).get(f"/api/tasks/{theirs.pk}/", headers={"X-Snorky": "Subscribe"})
    assert response.status_code == 404
    assert "X-Subscription-Token" not in response
    assert live.server.services.frontend[1].subscription_count == 0


def test_broadcast_view_and_creating_through_the_api(live, ws_factory, alice, bob):
    _, token = subscribe(client_for(bob), "/api/all-tasks/")
    ws = ws_factory(live.ws_url, user=bob)
    ws.acquire(token)
    response = client_for(alice).post("/api/all-tasks/", {"title": "via the API"}, content_type="application/json")
    assert response.status_code == 201, response.content
    delta = ws.delta()
    assert delta["type"] == "insert" and delta["data"] == response.json()


@override_settings(ROOT_URLCONF="django_tests.misconfigured_urls")
def test_a_list_view_without_a_dealer_authorizes_nothing(live, alice, bob):
    # A view that filters its rows but names no dealer used to fall back to the broadcast dealer,
    # handing bob's task deltas to alice. Now the subscribing request fails, loudly, and the
    # plain list still works.
    Task.objects.create(title="bob's", owner=bob)
    http = client_for(alice)
    with pytest.raises(ImproperlyConfigured, match=r"MyTasksWithoutDealer .* broadcast = True"):
        http.get("/mine/", headers={"X-Snorky": "Subscribe"})
    with pytest.raises(ImproperlyConfigured, match=r"both"):
        http.get("/both/", headers={"X-Snorky": "Subscribe"})
    assert live.server.services.frontend[1].subscription_count == 0
    assert http.get("/mine/").json() == []
    subscribe(http, "/overridden/")
    assert live.server.services.frontend[1].subscription_count == 1


def test_python_key_and_model_class_dealers(live, ws_factory, alice):
    from django_tests.testapp.snorky import TasksByTeam

    team = Team.objects.create(slug="t", name="T")
    backend = live.backend()
    by_word = backend.authorize_subscription([{"dealer": "TasksByTitleWord", "query": "urgent"}])
    by_team = backend.authorize_subscription([{"dealer": TasksByTeam.name, "query": team.pk}])
    word_ws, team_ws = ws_factory(live.ws_url), ws_factory(live.ws_url)
    word_ws.acquire(by_word)
    team_ws.acquire(by_team)
    Task.objects.create(title="Urgent fix", owner=alice)
    Task.objects.create(title="calm", owner=alice, team=team)
    assert word_ws.delta()["data"]["title"] == "Urgent fix"
    assert team_ws.delta()["data"]["title"] == "calm"
    word_ws.assert_silent(0.2)
    team_ws.assert_silent(0.2)


def test_bulk_operations_publish_deltas(live, ws_factory, alice):
    _, token = subscribe(client_for(alice), "/api/tasks/")
    ws = ws_factory(live.ws_url, user=alice)
    ws.acquire(token)

    created = Task.objects.bulk_create([Task(title=f"bulk {i}", owner=alice) for i in range(3)])
    assert [d["type"] for d in ws.deltas(3)] == ["insert"] * 3

    assert Task.objects.filter(owner=alice, title__in=["bulk 0", "bulk 1"]).update(done=True) == 2
    updates = ws.deltas(2)
    assert {d["newData"]["title"] for d in updates} == {"bulk 0", "bulk 1"}
    assert all(d["oldData"]["done"] is False and d["newData"]["done"] is True for d in updates)

    for task in created:
        task.priority = 5
    Task.objects.bulk_update(created, ["priority"])
    assert [d["newData"]["priority"] for d in ws.deltas(3)] == [5, 5, 5]

    alice.tasks.filter(priority=5, done=True).delete()
    assert sorted(d["data"]["title"] for d in ws.deltas(2)) == ["bulk 0", "bulk 1"]
    ws.assert_silent()


def test_uuid_primary_keys_and_custom_names(live, ws_factory):
    from snorky_django import delivery

    label = Label.objects.create(name="bug")
    assert delivery.flush(5.0)  # its insert delta is not this test's
    token = live.backend().authorize_subscription([{"dealer": "TagById", "query": str(label.pk)}])
    ws = ws_factory(live.ws_url)
    ws.acquire(token)
    Label.objects.filter(pk=label.pk).update(color="red")
    delta = ws.delta()
    assert delta["model"] == "Tag"
    assert delta["newData"] == {"id": str(label.pk), "name": "bug", "color": "red", "tasks": []}


def test_pubsub_publish_from_a_view(live, ws_factory, alice):
    ws = ws_factory(live.ws_url)
    assert ws.call("pubsub", "subscribe", channel="news")["type"] == "response"
    assert client_for(alice).get("/announce/", {"text": "hello"}).json() == {"ok": True}
    assert ws.recv()["message"] == {"type": "message", "channel": "news", "message": {"text": "hello"}}


def test_template_tag_config_identifies_the_user_to_the_server(ws_factory, alice):
    # Chat needs an identity: enable it, and join with the token the page carries.
    with live_snorky_server(SERVICES=["pubsub", "datasync", "chat"]) as live:
        page = client_for(alice).get("/page/").content.decode()
        found = re.search(r'<script id="snorky-config" type="application/json">(.*?)</script>', page)
        config = json.loads(found.group(1))
        assert config["url"] == live.ws_url
        ws = ws_factory(f"{config['url']}?token={config['token']}")
        assert ws.call("chat", "join", channel="room") == {
            "type": "response",
            "callId": 1,
            "data": {"members": [str(alice.pk)]},
        }
        with pytest.raises(InvalidStatus, match="401"):
            ws_factory(f"{config['url']}?token={config['token']}x")


def test_template_tag_for_anonymous_users_and_escaping(live, settings):
    settings.SNORKY = {**settings.SNORKY, "PUBLIC_URL": "/live/</script><script>alert(1)</script>"}
    page = Client().get("/page/", secure=True).content.decode()
    assert "<script>alert(1)" not in page
    config = json.loads(re.search(r'type="application/json">(.*?)</script>', page).group(1))
    assert config == {
        "url": "wss://testserver/live/</script><script>alert(1)</script>",
        "token": None,
        "tokenUrl": "/snorky/connection-token/",
    }


def test_an_unreachable_server_never_breaks_the_request(alice, settings, caplog):
    from django_tests.conftest import free_port
    from snorky_django import delivery

    settings.SNORKY = {**settings.SNORKY, "BACKEND_URL": f"http://127.0.0.1:{free_port()}/backend"}
    delivery.stats.reset()
    response = client_for(alice).post("/api/tasks/", {"title": "saved anyway"}, content_type="application/json")
    assert response.status_code == 201
    assert Task.objects.filter(title="saved anyway").exists()
    assert delivery.flush(5.0)
    assert delivery.stats.failed == 1
    assert "could not publish 1 delta(s)" in caplog.text
    # Asking for a subscription, though, answers 503: the client knows live updates are off.
    unavailable = client_for(alice).get("/api/tasks/", headers={"X-Snorky": "Subscribe"})
    assert unavailable.status_code == 503
    with pytest.raises(Exception, match="cannot reach"):
        from snorky_django import publish

        publish("news", "x")
    publish("news", "x", fail_silently=True)
