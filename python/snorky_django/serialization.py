"""How a model instance becomes the JSON object carried by a delta.

A delta carries what the developer declared, in this order:

1. ``@subscribable(serializer=...)``: a DRF serializer class (or its dotted path);
2. ``@subscribable(fields=[...])``: those fields (through a DRF ``ModelSerializer`` when
   ``rest_framework`` is installed, so values look as the API renders them; else Django's values);
3. the model's own ``jsonify()`` method, as in Snorky 0.1;
4. the view's serializer: the ``serializer_class`` of the routed views that hand out subscriptions
   to the model (``snorky_django.rest_framework``), when they all use the same one;
5. nothing declared: every concrete field (a DRF ``ModelSerializer`` with ``"__all__"``, else
   Django's values: a foreign key as the related object's primary key, under the field's name),
   and the ``snorky.W006`` check says so.

Whatever the source, fields whose name matches ``SNORKY["SECRET_FIELDS"]`` (``password``,
``*token*``, ``*secret*``, ...; case-insensitive shell patterns) are removed, at any depth, unless
the declaration names them: listed in ``fields``, in the serializer's ``Meta.fields`` or declared
on it (nested serializers included), or returned by ``jsonify()`` (code that names each key).

Values are then made JSON-safe the same way: datetimes, dates and times in ISO 8601 (UTC as
``Z``), ``Decimal`` as a string (``"12.50"``: no precision lost to floats), UUIDs as strings,
durations as seconds (a float), file fields as their name, bytes as base64. JSON has no NaN or
infinity: a float that is not finite becomes ``null`` (stored in an outbox row, it would make the
transaction fail at its commit).
"""

from __future__ import annotations

import base64
import copy
import datetime
import decimal
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache, lru_cache
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import models
from django.db.models.fields.files import FieldFile
from django.dispatch import receiver
from django.utils.functional import Promise
from django.utils.module_loading import import_string

from snorky_django import old_data, representation

__all__ = [
    "DeltaData",
    "delta_data",
    "forget_delta_data",
    "is_secret",
    "jsonable",
    "serialize",
    "serialize_update",
    "serializer_names",
    "unstored_fields",
    "without_secrets",
]


def jsonable(value: Any) -> Any:
    """``value`` with every nested value turned into a JSON type (see the module docs)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, FieldFile):
        return value.name or None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Promise):
        return str(value)
    if isinstance(value, models.Model):
        return jsonable(value.pk)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON for a delta")


def field_values(instance: models.Model, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Django's own serialization: every concrete field (or those ``names``), foreign keys as
    primary keys."""
    data: dict[str, Any] = {}
    meta = instance._meta
    for field in meta.concrete_fields if names is None else [meta.get_field(name) for name in names]:
        data[field.name] = field.value_from_object(instance)  # type: ignore[union-attr]
    return data


def _drf_installed() -> bool:
    return apps.is_installed("rest_framework")


def _model_serializer(model: type[models.Model], fields: Sequence[str] | str) -> type[Any]:
    from rest_framework import serializers

    meta = type("Meta", (), {"model": model, "fields": fields})
    return type(f"{model.__name__}SnorkySerializer", (serializers.ModelSerializer,), {"Meta": meta})


@dataclass(frozen=True)
class DeltaData:
    """How the deltas of one model get their data: a function, where it was declared, and the
    field names the declaration names (``None``: every key is named, as with ``jsonify()``)."""

    function: Callable[[models.Model], Any]
    source: str
    """``"serializer"``, ``"fields"``, ``"jsonify"``, ``"view"`` or ``"undeclared"``."""
    named: frozenset[str] | None
    detail: str = ""
    """What was found (the view serializer's path, or why none was usable), for the checks."""

    @property
    def declared(self) -> bool:
        """Whether the developer said what deltas carry."""
        return self.source != "undeclared"


def serializer_names(serializer: type[Any]) -> frozenset[str]:
    """The field names a DRF serializer class names explicitly: its ``Meta.fields`` when a list,
    and its declared fields, nested serializers' included."""
    names: set[str] = set()
    seen: set[type[Any]] = set()

    def visit(cls: type[Any]) -> None:
        if cls in seen:
            return
        seen.add(cls)
        fields = getattr(getattr(cls, "Meta", None), "fields", None)
        if isinstance(fields, (list, tuple)):
            names.update(name for name in fields if isinstance(name, str))
        for name, field in getattr(cls, "_declared_fields", {}).items():
            names.add(name)
            child = getattr(field, "child", field)  # many=True wraps the serializer in a ListSerializer
            if hasattr(type(child), "_declared_fields"):
                visit(type(child))

    visit(serializer)
    return frozenset(names)


def _import_serializer(serializer: type[Any] | str, model: type[models.Model]) -> type[Any]:
    if not isinstance(serializer, str):
        return serializer
    try:
        return import_string(serializer)  # type: ignore[no-any-return]
    except ImportError as err:
        raise ImproperlyConfigured(f"@subscribable serializer {serializer!r} of {model.__name__}: {err}") from err


def _view_serializer(model: type[models.Model]) -> tuple[type[Any] | None, str]:
    """The serializer the routed subscribing views of ``model`` agree on, and what was found."""
    if not _drf_installed():
        return None, ""
    from snorky_django.checks import routed_views
    from snorky_django.rest_framework import SubscribeModelMixin

    found: dict[type[Any], list[str]] = {}
    for view in routed_views():
        serializer = getattr(view, "serializer_class", None)
        if not issubclass(view, SubscribeModelMixin) or not isinstance(serializer, type):
            continue
        serialized = getattr(getattr(serializer, "Meta", None), "model", None)
        if (
            isinstance(serialized, type)
            and issubclass(serialized, models.Model)
            and serialized._meta.concrete_model is model
        ):
            found.setdefault(serializer, []).append(view.__qualname__)
    if len(found) == 1:
        serializer = next(iter(found))
        return serializer, f"{serializer.__module__}.{serializer.__qualname__}"
    if found:
        uses = "; ".join(f"{', '.join(views)} use {cls.__qualname__}" for cls, views in found.items())
        return None, f"its subscribing views disagree ({uses})"
    return None, ""


def delta_data(model: type[models.Model]) -> DeltaData:
    """How ``model``'s deltas get their data (see the module docs); cached until settings or the
    URLconf change."""
    data = _plans.get(model)
    if data is None:
        data = _plan(model)
        _plans[model] = data
    return data


def _plan(model: type[models.Model]) -> DeltaData:
    from snorky_django.changes import options_for

    options = options_for(model)
    concrete: type[models.Model] = model._meta.concrete_model or model
    if options is not None and options.serializer is not None:
        serializer = _import_serializer(options.serializer, concrete)
        return DeltaData(_Representer(serializer, concrete), "serializer", serializer_names(serializer))
    if options is not None and options.fields is not None:
        names = tuple(options.fields)
        if _drf_installed():
            fields_serializer = _model_serializer(concrete, list(names))
            return DeltaData(_Representer(fields_serializer, concrete), "fields", frozenset(names))
        return DeltaData(lambda instance: field_values(instance, names), "fields", frozenset(names))
    if callable(getattr(model, "jsonify", None)):
        return DeltaData(lambda instance: instance.jsonify(), "jsonify", None)  # type: ignore[attr-defined]
    view_serializer, detail = _view_serializer(concrete)
    if view_serializer is not None:
        return DeltaData(_Representer(view_serializer, concrete), "view", serializer_names(view_serializer), detail)
    if _drf_installed():
        everything = _model_serializer(concrete, "__all__")
        return DeltaData(_Representer(everything, concrete), "undeclared", frozenset(), detail)
    return DeltaData(field_values, "undeclared", frozenset(), detail)


class _Representer:
    """``serializer(instance).data``, with one serializer per thread serving every instance.

    DRF builds a serializer's fields the first time it is used, which costs more than turning a row
    into data; a list view (``many=True``) builds them once for all its rows, and so does this. The
    serializer gets no context (there is no request), the same for every row. Rows are rendered as
    its ``to_representation`` does, with the reads of plain columns done directly (see
    :mod:`snorky_django.representation`).
    """

    def __init__(self, serializer: type[Any], model: type[models.Model]) -> None:
        self._serializer = serializer
        self._model = model
        self._local = threading.local()

    def _built(self) -> tuple[Any, representation.SerializerPlan | None]:
        """This thread's serializer and its plan."""
        local = self._local
        built = getattr(local, "serializer", None)
        if built is None:
            built = self._serializer()
            local.plan = representation.plan(built, self._model)
            local.serializer = built
        return built, local.plan

    def __call__(self, instance: models.Model) -> Any:
        built, plan = self._built()
        return built.to_representation(instance) if plan is None else representation.render(plan, instance)

    def replaced(self, old: old_data.Replaced, saved: models.Model, new_data: Any) -> Any:
        """What this returns for the row ``saved``'s save replaced, given ``new_data``: what it
        returned for ``saved`` (see :mod:`snorky_django.old_data`)."""
        built, plan = self._built()
        if plan is None or not isinstance(new_data, Mapping):
            return built.to_representation(old.instance(saved))
        return old_data.render_old(plan, old, saved, new_data)


_plans: dict[type[models.Model], DeltaData] = {}


def forget_delta_data() -> None:
    """Drops what :func:`delta_data` cached (a model was declared, settings or URLs changed)."""
    _plans.clear()
    _secret_patterns.cache_clear()
    is_secret.cache_clear()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("SNORKY", "ROOT_URLCONF", "INSTALLED_APPS"):
        forget_delta_data()


@cache
def _secret_patterns() -> tuple[str, ...]:
    from snorky_django.conf import snorky_settings

    return tuple(str(pattern).lower() for pattern in snorky_settings.SECRET_FIELDS)


@lru_cache(maxsize=4096)  # every delta asks for the same few names; bounded, as keys may be data
def is_secret(name: str) -> bool:
    """Whether a field called ``name`` matches ``SNORKY["SECRET_FIELDS"]``."""
    lowered = name.lower()
    return any(fnmatchcase(lowered, pattern) for pattern in _secret_patterns())


def without_secrets(value: Any, named: frozenset[str]) -> Any:
    """``value`` without the keys that are secret and not ``named``, at any depth."""
    if isinstance(value, dict):
        return {
            key: without_secrets(item, named) for key, item in value.items() if key in named or not is_secret(str(key))
        }
    if isinstance(value, list):
        return [without_secrets(item, named) for item in value]
    return value


def unstored_fields(instance: models.Model) -> list[str]:
    """The attnames of ``instance``'s fields that hold an expression (``F("n") + 1``, a database
    default) rather than the value the database stored."""
    state = instance.__dict__
    return [
        field.attname
        for field in instance._meta.concrete_fields
        if hasattr(state.get(field.attname), "resolve_expression")
    ]


def _as_stored(instance: models.Model) -> models.Model:
    """``instance``, or a copy of it with the values the database stored where a field still holds
    an expression (``F("n") + 1``, ``Now()``) after a save.

    Django 6.0 reads such fields back when it saves (``RETURNING``), but not a field left out of
    ``update_fields``, and Django 4.2 and 5.2 leave every expression on the instance (their docs
    say to call ``refresh_from_db()``): a delta carries what the row holds, so those fields are
    read, in one query, into a copy. The caller's instance stays as Django left it.
    """
    names = unstored_fields(instance)
    if not names or instance.pk is None or instance._state.db is None:
        return instance
    stored = type(instance)._base_manager.using(instance._state.db).filter(pk=instance.pk).values(*names).first()
    if stored is None:
        return instance
    row = copy.copy(instance)
    row.__dict__.update(stored)
    return row


def serialize(instance: models.Model) -> dict[str, Any]:
    """The JSON object a delta carries for ``instance`` (see the module docs)."""
    plan = delta_data(type(instance))
    return _finished(plan, instance, plan.function(_as_stored(instance)))


def serialize_update(instance: models.Model, old: old_data.Replaced) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``newData`` and ``oldData`` of a save of ``instance`` that replaced the row ``old``.

    With a DRF serializer, the old row's fields whose column the save did not change are copied
    from the new row's (see :mod:`snorky_django.old_data`): the same result, rendered once.
    """
    plan = delta_data(type(instance))
    saved = _as_stored(instance)
    after = plan.function(saved)
    if isinstance(plan.function, _Representer):
        before = plan.function.replaced(old, saved, after)
    else:
        before = plan.function(_as_stored(old.instance(saved)))
    return _finished(plan, instance, after), _finished(plan, instance, before)


# Values that are JSON as they are (exact types: a subclass goes the long way, through jsonable; a
# float only when finite).
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def _finished(plan: DeltaData, instance: models.Model, data: Any) -> dict[str, Any]:
    named = plan.named
    if type(data) is dict and all(
        type(key) is str and type(value) in _JSON_SCALARS and (type(value) is not float or math.isfinite(value))
        for key, value in data.items()
    ):
        # The usual row: flat and nothing to convert, so secrets can only be at the top.
        if named is None:
            return dict(data)
        return {key: value for key, value in data.items() if key in named or not is_secret(key)}
    data = jsonable(data)
    if not isinstance(data, dict):
        raise TypeError(f"{type(instance).__name__} serialized to {type(data).__name__}, not an object")
    return data if named is None else without_secrets(data, named)
