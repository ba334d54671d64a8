"""System checks (``manage.py check``): the ``SNORKY`` settings and the declared dealers.

=========== ==================================================================================
id          what
=========== ==================================================================================
E001        no ``API_KEY``
E002        ``BACKEND_URL`` is not an ``http(s)://host:port/path`` URL
E003        a dealer names a model that is not ``@subscribable``
E004        ``FRONTEND_ADDRESS`` or ``BACKEND_ADDRESS`` is not ``host:port``
E005        ``DELIVERY`` is not ``"direct"``, ``"outbox"`` or ``"logical"``, ``DIRECT_SEND`` neither
            ``"background"`` nor ``"inline"``, ``DIRECT_QUEUE_SIZE`` not a positive integer, or
            ``DIRECT_LINGER`` not a number of seconds between 0 and 1
E006        a ``SERVICES`` entry is neither a built-in service nor a dotted path
E007        two dealers, or two subscribable models, share a name
E008        ``TOKEN_SECRET`` is shorter than 16 characters
E009        ``PUBLIC_URL`` is neither a ``ws(s)://`` URL nor a path
E010        a ``snorky.py`` module or a ``DEALERS`` path cannot be imported
E011        a list view hands out subscriptions without a dealer (nor ``broadcast = True``)
E012        ``@subscribable(fields=...)`` names a field the model does not have, or its
            ``serializer`` path cannot be imported
E013        ``PUBSUB_PUBLISH_CHANNELS``, ``PUBSUB_PUBLISH_POLICY`` or ``MESSAGING_NAMES`` is unusable
E014        ``API_KEY`` is shorter than 16 characters (the server refuses it)
E015        ``DELIVERY = "logical"`` with subscribable models on a database that is not PostgreSQL,
            or a ``LOGICAL_SLOT`` or ``LOGICAL_PUBLICATION`` that is not 1 to 63 of ``[a-z0-9_]``
W001        an unknown key in ``SNORKY`` (a typo?)
W002        a subscribable model's default manager is not a ``SubscribableManager``
W003        browsers from any origin may connect (``ALLOWED_ORIGINS`` is ``"*"``) outside DEBUG
W004        a wildcard ``CSRF_TRUSTED_ORIGINS`` entry cannot be used as a WebSocket origin
W005        outbox delivery on SQLite without ``"transaction_mode": "IMMEDIATE"``
W006        a subscribable model does not declare what its deltas carry (every field but the
            secret ones is sent)
W007        ``{% snorky_client_config %}`` needs the request (``PUBLIC_URL`` is not an absolute
            ``ws(s)://`` URL) and no ``DjangoTemplates`` backend has the ``request`` context
            processor
W008        ``CONNECTION_TOKEN_TTL`` is longer than the server's ``revocation_window``: a token
            issued before a logout would work again once the revocation is forgotten
W009        (``check --database``, and ``migrate``) logical delivery on a PostgreSQL server that
            cannot serve it: ``wal_level``, ``max_wal_senders``, its version
W010        (the same) the database user has neither ``REPLICATION`` nor superuser
W011        (the same) the replication slot does not exist yet: what commits before the relay
            first starts is not delivered
=========== ==================================================================================
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from snorky import _core
from snorky_django.conf import (
    BUILTIN_SERVICES,
    DEFAULTS,
    DELIVERY_MODES,
    DIRECT_SEND_MODES,
    snorky_settings,
    split_address,
    valid_backend_url,
)

__all__ = [
    "check_dealers",
    "check_logical_databases",
    "check_settings",
    "check_templates",
    "check_views",
    "routed_views",
]

#: The shortest API key the server accepts (characters, surrounding whitespace trimmed).
MIN_API_KEY_LENGTH: int = _core.MIN_API_KEY_LENGTH

#: The context processor that puts the request in the templates' context.
REQUEST_CONTEXT_PROCESSOR = "django.template.context_processors.request"


@register("snorky")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Checks the ``SNORKY`` dict."""
    messages: list[CheckMessage] = []
    user = snorky_settings.user_settings
    for key in user:
        if key not in DEFAULTS:
            messages.append(
                Warning(
                    f'Unknown Snorky setting SNORKY["{key}"].',
                    hint=f"Known settings: {', '.join(sorted(DEFAULTS))}.",
                    id="snorky.W001",
                )
            )
    api_key = snorky_settings.API_KEY
    if not isinstance(api_key, str) or not api_key.strip():
        messages.append(
            Error(
                'SNORKY["API_KEY"] is not set: Django cannot talk to the Snorky server.',
                hint='Set SNORKY = {"API_KEY": os.environ.get("SNORKY_API_KEY", "")} and export SNORKY_API_KEY, '
                'a long random secret (python -c "import secrets; print(secrets.token_urlsafe(32))").',
                id="snorky.E001",
            )
        )
    # str.strip() trims a little more than Rust's trim() (also \x1c-\x1f): never laxer than the server.
    elif len(api_key.strip()) < MIN_API_KEY_LENGTH:
        messages.append(
            Error(
                f'SNORKY["API_KEY"] is shorter than {MIN_API_KEY_LENGTH} characters: the server refuses it.',
                hint="Use a long random secret, the same in Django and the server "
                '(python -c "import secrets; print(secrets.token_urlsafe(32))").',
                id="snorky.E014",
            )
        )
    url = snorky_settings.BACKEND_URL
    if not valid_backend_url(url):
        messages.append(
            Error(
                f'SNORKY["BACKEND_URL"] = {url!r} is not a backend URL.',
                hint='Use the form "http://127.0.0.1:5002/backend", '
                "or leave it unset to derive it from BACKEND_ADDRESS.",
                id="snorky.E002",
            )
        )
    for key in ("FRONTEND_ADDRESS", "BACKEND_ADDRESS"):
        value = getattr(snorky_settings, key)
        try:
            split_address(value) if isinstance(value, str) else split_address("")
        except ValueError as err:
            problem = str(err) if isinstance(value, str) else f"{value!r} is not HOST:PORT"
            messages.append(
                Error(
                    f'SNORKY["{key}"] = {problem}.',
                    hint=f'For example {DEFAULTS[key]!r}; an IPv6 host goes in brackets: "[::1]:5001".',
                    id="snorky.E004",
                )
            )
    if snorky_settings.DELIVERY not in DELIVERY_MODES:
        messages.append(
            Error(
                f'SNORKY["DELIVERY"] = {snorky_settings.DELIVERY!r} is not a delivery mode.',
                hint='Use "direct" (publish on commit), "outbox" (through the outbox table, relayed by '
                'manage.py snorky) or "logical" (read from PostgreSQL\'s logical decoding by manage.py snorky).',
                id="snorky.E005",
            )
        )
    if snorky_settings.DIRECT_SEND not in DIRECT_SEND_MODES:
        messages.append(
            Error(
                f'SNORKY["DIRECT_SEND"] = {snorky_settings.DIRECT_SEND!r} is not a way to send.',
                hint='Use "background" (a sender thread per process, the default) or "inline" '
                "(the committing thread sends and waits).",
                id="snorky.E005",
            )
        )
    queue_size = snorky_settings.DIRECT_QUEUE_SIZE
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        messages.append(
            Error(
                f'SNORKY["DIRECT_QUEUE_SIZE"] = {queue_size!r} is not a positive integer.',
                hint="The deltas a process may hold for its sender thread; "
                f"the default is {DEFAULTS['DIRECT_QUEUE_SIZE']}.",
                id="snorky.E005",
            )
        )
    linger = snorky_settings.DIRECT_LINGER
    if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not 0 <= linger <= 1:
        messages.append(
            Error(
                f'SNORKY["DIRECT_LINGER"] = {linger!r} is not a number of seconds between 0 and 1.',
                hint="How long the sender thread lets commits arriving in quick succession join one "
                f"request; the default is {DEFAULTS['DIRECT_LINGER']}, 0 sends each at once.",
                id="snorky.E005",
            )
        )
    for entry in list(snorky_settings.SERVICES) + list(snorky_settings.BACKEND_SERVICES):
        if not isinstance(entry, str) or (entry not in BUILTIN_SERVICES and "." not in entry):
            messages.append(
                Error(
                    f"{entry!r} in SNORKY services is neither a built-in service nor a dotted path.",
                    hint=f"Built-in services: {', '.join(BUILTIN_SERVICES)}; or a path like 'myapp.services.build'.",
                    id="snorky.E006",
                )
            )
    secret = user.get("TOKEN_SECRET")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        messages.append(
            Error(
                'SNORKY["TOKEN_SECRET"] is shorter than 16 characters: the server refuses it.',
                hint="Use a long random secret, or leave it unset to derive it from SECRET_KEY.",
                id="snorky.E008",
            )
        )
    public_url = snorky_settings.PUBLIC_URL
    if public_url is not None and (
        not isinstance(public_url, str) or not public_url.startswith(("ws://", "wss://", "/"))
    ):
        messages.append(
            Error(
                f'SNORKY["PUBLIC_URL"] = {public_url!r} is not a WebSocket URL.',
                hint='Use "wss://example.com/snorky/ws", or a path ("/snorky/ws") completed from the request.',
                id="snorky.E009",
            )
        )
    from snorky_django.services import policy_problems

    for problem in policy_problems(
        snorky_settings.PUBSUB_PUBLISH_CHANNELS, snorky_settings.PUBSUB_PUBLISH_POLICY, snorky_settings.MESSAGING_NAMES
    ):
        messages.append(
            Error(
                problem,
                hint='For example PUBSUB_PUBLISH_CHANNELS = ["chat:*"], MESSAGING_NAMES = "identity"; '
                "see the Django guide, 'What browsers may do'.",
                id="snorky.E013",
            )
        )
    origins = snorky_settings.ALLOWED_ORIGINS
    if not settings.DEBUG and "*" in origins:
        messages.append(
            Warning(
                "Browsers from any origin may open WebSockets to Snorky.",
                hint='Set SNORKY["ALLOWED_ORIGINS"] to your sites\' origins (["https://app.example.com"]); '
                'it is derived as ["*"] from ALLOWED_HOSTS = ["*"].',
                id="snorky.W003",
            )
        )
    if not snorky_settings.is_set("ALLOWED_ORIGINS"):
        for origin in getattr(settings, "CSRF_TRUSTED_ORIGINS", []):
            if "*" in origin:
                messages.append(
                    Warning(
                        f"CSRF_TRUSTED_ORIGINS entry {origin!r} is not usable as a WebSocket origin.",
                        hint='Snorky matches origins exactly: list them in SNORKY["ALLOWED_ORIGINS"].',
                        id="snorky.W004",
                    )
                )
    if snorky_settings.DELIVERY == "outbox":
        for alias, database in settings.DATABASES.items():
            options = database.get("OPTIONS") or {}
            if "sqlite3" in database.get("ENGINE", "") and options.get("transaction_mode") != "IMMEDIATE":
                messages.append(
                    Warning(
                        f"Database {alias!r} is SQLite: the outbox relay writing beside your requests can make "
                        "either fail with 'database is locked'.",
                        hint=f'Set DATABASES["{alias}"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE" (Django 5.1+), '
                        "or use PostgreSQL.",
                        id="snorky.W005",
                    )
                )
    if snorky_settings.DELIVERY == "logical":
        messages.extend(_check_logical())
    messages.extend(_check_token_lifetime())
    return messages


def _check_logical() -> list[CheckMessage]:
    """E015: logical delivery where it cannot work."""
    from django.db import connections

    from snorky_django.logical_setup import NAME_PATTERN, subscribable_models

    messages: list[CheckMessage] = []
    for key in ("LOGICAL_SLOT", "LOGICAL_PUBLICATION"):
        name = getattr(snorky_settings, key)
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            messages.append(
                Error(
                    f'SNORKY["{key}"] = {name!r} is not a usable name.',
                    hint="Use 1 to 63 lower-case letters, digits and underscores (PostgreSQL's rule for slots).",
                    id="snorky.E015",
                )
            )
    for alias in connections:
        if connections[alias].vendor == "postgresql":
            continue
        models = [model.__name__ for model in subscribable_models(alias)]
        if models:
            messages.append(
                Error(
                    f'SNORKY["DELIVERY"] = "logical" reads PostgreSQL\'s logical decoding, but database {alias!r} '
                    f"({connections[alias].vendor}) holds subscribable models ({', '.join(models)}).",
                    hint='Use "outbox" or "direct" with this database.',
                    id="snorky.E015",
                )
            )
    return messages


@register("snorky", Tags.database)
def check_logical_databases(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W009-W011: what the databases logical delivery reads lack, when the checks may query them
    (``manage.py check --database``, and ``migrate``). Warnings, so that ``migrate`` still runs:
    ``manage.py snorky`` refuses to start where they would matter."""
    from django.db import DatabaseError, connections

    from snorky_django.logical_setup import relayed_databases

    databases = kwargs.get("databases") or []
    if snorky_settings.DELIVERY != "logical" or not databases:
        return []
    messages: list[CheckMessage] = []
    for alias in relayed_databases():
        if alias not in databases or connections[alias].vendor != "postgresql":
            continue
        try:
            messages.extend(_check_logical_database(alias))
        except DatabaseError as err:
            messages.append(
                Warning(f"Cannot check database {alias!r} for logical delivery: {err}".strip(), id="snorky.W009")
            )
    return messages


def _check_logical_database(alias: str) -> list[CheckMessage]:
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections

    from snorky_django.logical_setup import check_server, slot_name

    slot = slot_name(alias)
    with connections[alias].cursor() as cursor:
        try:
            if not check_server(cursor, alias):
                return []  # a hot standby: its primary has the slot
        except ImproperlyConfigured as err:
            return [Warning(str(err), hint="manage.py snorky refuses to start until then.", id="snorky.W009")]
        cursor.execute("SELECT rolsuper OR rolreplication, current_user FROM pg_roles WHERE rolname = current_user")
        allowed, user = cursor.fetchone()
        cursor.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND database = current_database()", [slot]
        )
        slot_exists = cursor.fetchone() is not None
    messages: list[CheckMessage] = []
    if not allowed:
        messages.append(
            Warning(
                f"Database user {user!r} of {alias!r} has neither the REPLICATION attribute nor superuser: logical "
                "delivery's relay will be refused, unless your provider grants replication through a role.",
                hint=f"ALTER ROLE {user} REPLICATION (as a superuser), or your provider's replication role.",
                id="snorky.W010",
            )
        )
    if not slot_exists:
        messages.append(
            Warning(
                f"Replication slot {slot!r} does not exist on database {alias!r} yet: changes committed before "
                "the relay creates it are not delivered.",
                hint="Start manage.py snorky (or --relay-only) once before web processes write in logical mode.",
                id="snorky.W011",
            )
        )
    return messages


def _check_token_lifetime() -> list[CheckMessage]:
    """W008: tokens that outlive the server's memory of a revocation."""
    ttl = snorky_settings.CONNECTION_TOKEN_TTL
    options = snorky_settings.SERVER_OPTIONS
    window = options.get("revocation_window", _core.DEFAULT_REVOCATION_WINDOW) if isinstance(options, dict) else None
    numbers = (int, float)
    if not isinstance(ttl, numbers) or not isinstance(window, numbers) or isinstance(ttl, bool) or ttl <= window:
        return []
    return [
        Warning(
            f'SNORKY["CONNECTION_TOKEN_TTL"] ({ttl} s) is longer than the server\'s revocation_window ({window} s): '
            "a connection token issued before a logout would be accepted again once the server forgets the "
            "revocation.",
            hint='Shorten CONNECTION_TOKEN_TTL (pages renew their tokens), or set SNORKY["SERVER_OPTIONS"]'
            '["revocation_window"] to at least the token lifetime.',
            id="snorky.W008",
        )
    ]


@register("snorky", "templates")
def check_templates(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W007: ``{% snorky_client_config %}`` would render without the request it needs."""
    from django.core.exceptions import ImproperlyConfigured
    from django.template import engines
    from django.template.backends.django import DjangoTemplates

    if snorky_settings.public_url_is_absolute():
        return []  # the tag needs no request
    public_url = snorky_settings.PUBLIC_URL
    try:
        django_engines = [engine for engine in engines.all() if isinstance(engine, DjangoTemplates)]
    except (ImproperlyConfigured, ImportError):
        return []  # a broken TEMPLATES setting: Django's own checks and errors report it
    if not django_engines or any(
        REQUEST_CONTEXT_PROCESSOR in engine.engine.context_processors for engine in django_engines
    ):
        return []
    found = "a path" if public_url else "unset"
    return [
        Warning(
            "{% snorky_client_config %} builds the WebSocket URL from the request "
            f'(SNORKY["PUBLIC_URL"] is {found}), but no DjangoTemplates backend has the '
            f"{REQUEST_CONTEXT_PROCESSOR!r} context processor: pages would be told to connect to 'localhost'.",
            hint=f'Add {REQUEST_CONTEXT_PROCESSOR!r} to TEMPLATES[...]["OPTIONS"]["context_processors"], '
            'or set SNORKY["PUBLIC_URL"] to an absolute URL ("wss://example.com/snorky/ws").',
            id="snorky.W007",
        )
    ]


@register("snorky")
def check_dealers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Checks the subscribable models and the declared dealers."""
    from snorky_django.changes import SubscribableQuerySet, registered
    from snorky_django.dealers import declared_dealers, model_names, resolve_model

    messages: list[CheckMessage] = []
    subscribable = registered()
    for name, count in Counter(options.name for options in subscribable).items():
        if count > 1:
            models = ", ".join(o.model._meta.label for o in subscribable if o.name == name)
            messages.append(
                Error(
                    f"Subscribable models {models} publish deltas under the same name {name!r}.",
                    hint='Give one of them another name: @subscribable(name="...").',
                    id="snorky.E007",
                )
            )
    for options in subscribable:
        queryset_class = getattr(options.model._default_manager, "_queryset_class", None)
        if not (isinstance(queryset_class, type) and issubclass(queryset_class, SubscribableQuerySet)):
            messages.append(
                Warning(
                    f"The default manager of subscribable {options.model._meta.label} is not a SubscribableManager: "
                    "its QuerySet.update(), bulk_create() and bulk_update() publish no deltas.",
                    hint="Use objects = SubscribableManager(), or build your manager with "
                    "YourManager.from_queryset(SubscribableQuerySet) (from snorky_django).",
                    obj=options.model,
                    id="snorky.W002",
                )
            )
    messages.extend(_check_delta_data(subscribable))
    try:
        declared = declared_dealers()
    except ImportError as err:
        return [
            *messages,
            Error(
                f"A Snorky dealer module cannot be imported: {err}",
                hint='Fix the app\'s snorky.py module or the SNORKY["DEALERS"] paths.',
                id="snorky.E010",
            ),
        ]
    known = model_names()
    for item in declared:
        if resolve_model(item.model) is None:
            messages.append(
                Error(
                    f"Dealer {item.name!r} ({item.origin}) names model "
                    f"{getattr(item.model, '__name__', item.model)!r}, which is not a @subscribable model.",
                    hint=f"Subscribable models: {', '.join(sorted(known)) or 'none'}. "
                    "Decorate the model with @subscribable, or fix the dealer's model.",
                    obj=item.dealer,
                    id="snorky.E003",
                )
            )
    for name, count in Counter(item.name for item in declared).items():
        if count > 1:
            origins = ", ".join(item.origin for item in declared if item.name == name)
            messages.append(
                Error(
                    f"Several dealers are named {name!r} ({origins}).",
                    hint="Dealer names are what subscriptions refer to: make them unique (set name = ...).",
                    id="snorky.E007",
                )
            )
    return messages


def routed_views() -> list[type[Any]]:
    """The view classes the project's URLconf routes to (Django and DRF views), each once."""
    from django.urls import URLPattern, URLResolver, get_resolver

    found: dict[type[Any], None] = {}

    def walk(patterns: Any) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns)
            elif isinstance(pattern, URLPattern):
                view = getattr(pattern.callback, "cls", None) or getattr(pattern.callback, "view_class", None)
                if isinstance(view, type):
                    found[view] = None

    walk(get_resolver().url_patterns)
    return list(found)


@register("snorky", "urls")
def check_views(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Checks that every routed list view handing out subscriptions says which deltas they get."""
    from django.apps import apps

    if not apps.is_installed("rest_framework"):
        return []
    from snorky_django.rest_framework import ListSubscribeModelMixin, subscription_problem

    messages: list[CheckMessage] = []
    for view in routed_views():
        if not issubclass(view, ListSubscribeModelMixin):
            continue
        problem = subscription_problem(view)
        if problem is not None:
            messages.append(
                Error(
                    problem,
                    hint="A view that filters its queryset must filter its deltas the same way; "
                    "see the Django guide, 'Hand out subscriptions from views'.",
                    obj=view,
                    id="snorky.E011",
                )
            )
    return messages


def _check_delta_data(subscribable: list[Any]) -> list[CheckMessage]:
    """E012 and W006: what each subscribable model's deltas carry."""
    from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured

    from snorky_django.serialization import delta_data

    messages: list[CheckMessage] = []
    for options in subscribable:
        label = options.model._meta.label
        if options.fields is not None:
            for name in options.fields:
                try:
                    options.model._meta.get_field(name)
                except FieldDoesNotExist:
                    messages.append(
                        Error(
                            f"@subscribable(fields=...) of {label} names {name!r}, which is not one of its fields.",
                            hint="List the model's field names.",
                            obj=options.model,
                            id="snorky.E012",
                        )
                    )
            continue
        try:
            data = delta_data(options.model)
        except ImproperlyConfigured as err:
            messages.append(
                Error(str(err), hint="Fix the serializer's dotted path.", obj=options.model, id="snorky.E012")
            )
            continue
        if not data.declared:
            why = f" ({data.detail})" if data.detail else ""
            messages.append(
                Warning(
                    f"Subscribable {label} does not say what its deltas carry{why}: they carry every field "
                    "except those matching SECRET_FIELDS, whatever your API shows.",
                    hint=f'Declare it: @subscribable(serializer="app.serializers.{options.model.__name__}Serializer"), '
                    '@subscribable(fields=["id", ...]), or a jsonify() method.',
                    obj=options.model,
                    id="snorky.W006",
                )
            )
    return messages
