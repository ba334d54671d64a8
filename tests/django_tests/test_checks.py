"""The system checks (`manage.py check`)."""

from __future__ import annotations

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import models
from django.test import override_settings
from django.test.utils import isolate_apps

from snorky_django import changes, subscribable


def ids(**snorky) -> set[str]:
    with override_settings(SNORKY={"API_KEY": "k", **snorky}):
        return {message.id for message in checks.run_checks(tags=["snorky"])}


def test_the_test_project_is_clean():
    assert ids() == set()
    call_command("check")


def test_setting_errors():
    assert "snorky.E001" in ids(API_KEY="")
    with override_settings(SNORKY={}):
        assert {m.id for m in checks.run_checks(tags=["snorky"])} == {"snorky.E001"}
    assert ids(BACKEND_URL="127.0.0.1:5002") == {"snorky.E002"}
    assert ids(BACKEND_URL="ftp://x/backend") == {"snorky.E002"}
    assert ids(FRONTEND_ADDRESS="5001") == {"snorky.E004"}
    assert ids(DELIVERY="later") == {"snorky.E005"}
    assert ids(DIRECT_SEND="threaded") == {"snorky.E005"}
    assert ids(DIRECT_QUEUE_SIZE=0) == {"snorky.E005"}
    assert ids(DIRECT_QUEUE_SIZE="100") == {"snorky.E005"}
    assert ids(DIRECT_LINGER=-0.1) == {"snorky.E005"}
    assert ids(DIRECT_LINGER="0.002") == {"snorky.E005"}
    assert ids(DIRECT_LINGER=5) == {"snorky.E005"}
    assert ids(SERVICES=["pubsub", "chatroom"]) == {"snorky.E006"}
    assert ids(TOKEN_SECRET="short") == {"snorky.E008"}
    assert ids(PUBLIC_URL="http://example.com/ws") == {"snorky.E009"}
    assert ids(DEALERS=["django_tests.nowhere.Dealer"]) == {"snorky.E010"}
    assert ids(API_KEYS="typo") == {"snorky.W001"}


def test_a_dealer_naming_an_unknown_model():
    with override_settings(SNORKY={"API_KEY": "k", "DEALERS": ["django_tests.extra_dealers.GhostTasks"]}):
        messages = checks.run_checks(tags=["snorky"])
    assert [m.id for m in messages] == ["snorky.E003"]
    assert "'Ghost'" in messages[0].msg and "Task" in messages[0].hint


def test_duplicate_dealer_names():
    assert ids(DEALERS=["django_tests.extra_dealers.TasksByOwner"]) == {"snorky.E007"}


def test_origin_warnings():
    with override_settings(ALLOWED_HOSTS=["*"]):
        assert ids() == {"snorky.W003"}
    with override_settings(ALLOWED_HOSTS=["*"], DEBUG=True):
        assert ids() == set()
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://*.example.com"]):
        assert ids() == {"snorky.W004"}


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_outbox_on_sqlite_needs_immediate_transactions():
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x", "OPTIONS": {}}
    with override_settings(DATABASES={"default": sqlite}):
        assert ids(DELIVERY="outbox") == {"snorky.W005"}
        assert ids() == set()
    immediate = {**sqlite, "OPTIONS": {"transaction_mode": "IMMEDIATE"}}
    with override_settings(DATABASES={"default": immediate}):
        assert ids(DELIVERY="outbox") == set()


@isolate_apps("django_tests.testapp")
def test_a_custom_manager_without_the_subscribable_queryset_warns():
    try:

        @subscribable(name="Custom", fields=["id"])
        class Custom(models.Model):
            objects = models.Manager()

            class Meta:
                app_label = "testapp"

        @subscribable(name="Custom", fields=["id"])
        class Twin(models.Model):
            class Meta:
                app_label = "testapp"

        found = {m.id for m in checks.run_checks(tags=["snorky"])}
        assert found == {"snorky.W002", "snorky.E007"}
    finally:
        for model in list(changes._registry):
            if model.__name__ in ("Custom", "Twin"):
                del changes._registry[model]


def test_manage_py_check_fails_on_errors():
    with override_settings(SNORKY={}), pytest.raises(SystemCheckError, match=r"snorky\.E001"):
        call_command("check")


def test_decorating_an_abstract_model_is_refused():
    with pytest.raises(TypeError, match=r"concrete models"):

        @subscribable
        class Abstract(models.Model):
            class Meta:
                abstract = True
                app_label = "testapp"


@override_settings(ROOT_URLCONF="django_tests.misconfigured_urls")
def test_a_list_view_without_a_dealer_is_a_configuration_error():
    messages = [m for m in checks.run_checks(tags=["snorky"]) if m.id == "snorky.E011"]
    by_view = {m.obj.__name__: m.msg for m in messages}
    assert set(by_view) == {"MyTasksWithoutDealer", "DealerAndBroadcast"}  # not ItemsOverridden, TaskTitles
    assert "broadcast = True" in by_view["MyTasksWithoutDealer"] and "dealer =" in by_view["MyTasksWithoutDealer"]
    assert "both" in by_view["DealerAndBroadcast"]
    with pytest.raises(SystemCheckError, match=r"snorky\.E011"):
        call_command("check")
