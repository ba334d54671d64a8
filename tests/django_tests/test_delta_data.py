"""What deltas carry: what the model declares (a serializer, a field list, jsonify()) or, failing
that, the serializer of the views subscribing to it; never a secret field it does not name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core import checks
from django.db import models
from django.test import override_settings
from django.test.utils import isolate_apps
from rest_framework import serializers

from django_tests.testapp.models import Account, Task
from django_tests.testapp.serializers import TaskSerializer
from snorky_django import changes, serialization, subscribable


@pytest.fixture
def isolated() -> Iterator[None]:
    """Models declared in the test are forgotten by snorky_django afterwards."""
    before = set(changes._registry)
    with isolate_apps("django_tests.testapp"):
        yield
    for model in set(changes._registry) - before:
        del changes._registry[model]
    serialization.forget_delta_data()


def check_ids(model: type[models.Model]) -> set[str]:
    return {m.id for m in checks.run_checks(tags=["snorky"]) if m.obj is model}


@pytest.mark.django_db(transaction=True)
def test_a_serializer_with_all_fields_does_not_send_the_secret_ones(live, ws_factory):
    # The review's case: a user-like model made subscribable with an "__all__" serializer. Its
    # deltas, through the real server, carry neither the password hash nor the API token, nor a
    # secret nested in a JSON field; the rest arrives.
    token = live.backend().authorize_subscription([{"dealer": "Account", "query": None}])
    ws = ws_factory(live.ws_url)
    ws.acquire(token)
    account = Account.objects.create(
        username="alice",
        password="pbkdf2_sha256$870000$salt$hash",
        api_token="tok-123",
        nickname="Al",
        profile={"bio": "hello", "recovery_secret": "blue"},
    )
    assert ws.delta()["data"] == {
        "id": account.pk,
        "username": "alice",
        "nickname": "Al",
        "profile": {"bio": "hello"},
    }
    account.password = "pbkdf2_sha256$870000$salt$other"  # a change only to secrets: nothing to send
    account.save()
    account.nickname = "Ally"
    account.save()
    update = ws.delta()
    assert update["oldData"]["nickname"] == "Al" and update["newData"]["nickname"] == "Ally"
    assert "password" not in update["newData"] and "password" not in update["oldData"]


@pytest.mark.usefixtures("isolated")
def test_named_secret_fields_are_sent():
    class Member(models.Model):
        password = models.CharField(max_length=128)
        api_token = models.CharField(max_length=64)
        name = models.CharField(max_length=50)

        class Meta:
            app_label = "testapp"

    subscribable(name="Member", fields=["id", "password", "name"])(Member)
    member = Member(pk=1, password="hash", api_token="t", name="m")
    assert serialization.serialize(member) == {"id": 1, "password": "hash", "name": "m"}

    class MemberSerializer(serializers.ModelSerializer):
        token = serializers.CharField(source="api_token")

        class Meta:
            model = Member
            fields = ("id", "password", "token")

    subscribable(name="Member", serializer=MemberSerializer)(Member)
    assert serialization.serialize(member) == {"id": 1, "password": "hash", "token": "t"}
    assert serialization.delta_data(Member).source == "serializer"


@pytest.mark.usefixtures("isolated")
def test_jsonify_names_its_keys_and_undeclared_models_send_no_secret(settings):
    class Legacy(models.Model):
        secret_answer = models.CharField(max_length=50)

        class Meta:
            app_label = "testapp"

        def jsonify(self) -> dict[str, Any]:
            return {"id": self.pk, "secret_answer": self.secret_answer}

    class Plain(models.Model):
        name = models.CharField(max_length=50)
        user_password = models.CharField(max_length=128)
        Stripe_API_Key = models.CharField(max_length=40)  # patterns ignore case
        SessionKey = models.CharField(max_length=40)
        last_session_key = models.CharField(max_length=40)

        class Meta:
            app_label = "testapp"

    subscribable(fields=None)(Legacy)
    subscribable(Plain)
    assert serialization.serialize(Legacy(pk=1, secret_answer="blue")) == {"id": 1, "secret_answer": "blue"}
    plain = Plain(pk=2, name="n", user_password="h", Stripe_API_Key="k", SessionKey="s", last_session_key="t")
    assert serialization.serialize(plain) == {"id": 2, "name": "n"}
    assert serialization.delta_data(Plain).source == "undeclared"
    assert check_ids(Plain) == {"snorky.W006"}
    assert check_ids(Legacy) == set()

    settings.SNORKY = {**settings.SNORKY, "SECRET_FIELDS": ["name"]}  # the list is a setting
    assert serialization.serialize(plain) == {
        "id": 2,
        "user_password": "h",
        "Stripe_API_Key": "k",
        "SessionKey": "s",
        "last_session_key": "t",
    }


def test_the_views_serializer_is_adopted_when_the_model_declares_nothing():
    data = serialization.delta_data(Task)
    assert data.source == "view" and data.detail == "django_tests.testapp.serializers.TaskSerializer"
    with override_settings(ROOT_URLCONF="django_tests.misconfigured_urls"):
        disagreeing = serialization.delta_data(Task)
        assert disagreeing.source == "undeclared"
        assert "TaskTitles use TaskTitleSerializer" in disagreeing.detail
        warnings = [m for m in checks.run_checks(tags=["snorky"]) if m.id == "snorky.W006"]
        assert [m.obj for m in warnings] == [Task] and "disagree" in warnings[0].msg
    assert serialization.delta_data(Task).source == "view"
    assert TaskSerializer.Meta.fields == "__all__"


@pytest.mark.usefixtures("isolated")
def test_bad_declarations():
    class Thing(models.Model):
        name = models.CharField(max_length=50)

        class Meta:
            app_label = "testapp"

    with pytest.raises(TypeError, match="not both"):
        subscribable(fields=["name"], serializer=TaskSerializer)(Thing)
    with pytest.raises(TypeError, match="list of field names"):
        subscribable(fields="name")(Thing)
    with pytest.raises(TypeError, match="list of field names"):
        subscribable(fields=[])(Thing)
    subscribable(name="Thing", fields=["id", "nmae"])(Thing)
    assert check_ids(Thing) == {"snorky.E012"}
    subscribable(name="Thing", serializer="django_tests.testapp.nowhere.ThingSerializer")(Thing)
    assert check_ids(Thing) == {"snorky.E012"}
