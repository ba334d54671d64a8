"""The system checks (`manage.py check`)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import models
from django.test import override_settings
from django.test.utils import isolate_apps

import snorky
from snorky_django import changes, subscribable

KEY = "checks-test-api-key"


def messages(**snorky) -> list[checks.CheckMessage]:
    with override_settings(SNORKY={"API_KEY": KEY, **snorky}):
        return checks.run_checks(tags=["snorky"])


def ids(**snorky) -> set[str]:
    return {message.id for message in messages(**snorky)}


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


def test_an_api_key_the_server_refuses_is_an_error():
    assert ids(API_KEY="swordfish") == {"snorky.E014"}
    assert ids(API_KEY="  " + "x" * 15 + "  ") == {"snorky.E014"}  # the server trims it too
    assert ids(API_KEY="x" * 16) == set()
    [message] = messages(API_KEY="swordfish")
    assert "shorter than 16 characters" in message.msg and "token_urlsafe" in (message.hint or "")


@pytest.mark.parametrize("key", ["swordfish", "x" * 15, "x" * 16, " " + "x" * 15 + "\t", "é" * 16, "é" * 15])
def test_the_api_key_check_agrees_with_the_server(key):
    # The server's own rule (src/server/config.rs), through the extension: building a server
    # validates its configuration without listening.
    try:
        snorky.Server([], [], frontend_address="127.0.0.1:0", backend_address="127.0.0.1:0", api_key=key)
        refused = False
    except snorky.ConfigurationError as err:
        assert "api_key is too short" in str(err)
        refused = True
    assert ("snorky.E014" in ids(API_KEY=key)) == refused


def test_an_address_without_a_host_is_an_error():
    [message] = messages(FRONTEND_ADDRESS=":5101")
    assert message.id == "snorky.E004"
    assert "has no host" in message.msg and "0.0.0.0:5101" in message.msg and "127.0.0.1:5101" in message.msg


TEMPLATES_WITHOUT_REQUEST = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.contrib.auth.context_processors.auth"]},
    }
]


def test_templates_without_the_request_context_processor_warn():
    with override_settings(TEMPLATES=TEMPLATES_WITHOUT_REQUEST):
        assert ids() == {"snorky.W007"}
        assert ids(PUBLIC_URL="/snorky/ws") == {"snorky.W007"}  # completed from the request too
        assert ids(PUBLIC_URL="wss://live.example.com/ws") == set()  # needs no request
        [message] = messages()
        assert "django.template.context_processors.request" in (message.hint or "")
    # Another backend has it: the tag can be given a request.
    with override_settings(TEMPLATES=[{**TEMPLATES_WITHOUT_REQUEST[0], "NAME": "other"}, *settings.TEMPLATES]):
        assert ids() == set()
    with override_settings(TEMPLATES=[]):
        assert ids() == set()  # no Django templates: no tag


def test_a_dealer_naming_an_unknown_model():
    with override_settings(SNORKY={"API_KEY": KEY, "DEALERS": ["django_tests.extra_dealers.GhostTasks"]}):
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


def test_tokens_living_longer_than_the_servers_memory_of_a_logout_warn():
    assert ids(CONNECTION_TOKEN_TTL=3600) == set(), "as long as the default revocation_window"
    assert ids(CONNECTION_TOKEN_TTL=7200) == {"snorky.W008"}
    assert ids(CONNECTION_TOKEN_TTL=7200, SERVER_OPTIONS={"revocation_window": 7200}) == set()
    [message] = messages(CONNECTION_TOKEN_TTL=600, SERVER_OPTIONS={"revocation_window": 300})
    assert message.id == "snorky.W008"
    assert "revocation_window" in (message.hint or "")
