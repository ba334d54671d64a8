"""How a model instance becomes the JSON object carried by a delta.

In order of preference:

1. the serializer given to ``@subscribable(serializer=...)`` (a DRF serializer class);
2. the model's own ``jsonify()`` method, as in Snorky 0.1;
3. a DRF ``ModelSerializer`` with every field, when ``rest_framework`` is in ``INSTALLED_APPS``;
4. Django's field values: each concrete field under its name (a foreign key as the related
   object's primary key, under the field's name: ``"owner": 3``).

Whatever the source, values are then made JSON-safe the same way: datetimes, dates and times in
ISO 8601 (UTC as ``Z``), ``Decimal`` as a string (``"12.50"``: no precision lost to floats), UUIDs
as strings, durations as seconds (a float), file fields as their name, bytes as base64.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models.fields.files import FieldFile
from django.utils.functional import Promise

__all__ = ["jsonable", "serialize"]


def jsonable(value: Any) -> Any:
    """``value`` with every nested value turned into a JSON type (see the module docs)."""
    if value is None or isinstance(value, (bool, int, float, str)):
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


def field_values(instance: models.Model) -> dict[str, Any]:
    """Django's own serialization: every concrete field, foreign keys as primary keys."""
    data: dict[str, Any] = {}
    for field in instance._meta.concrete_fields:
        data[field.name] = field.value_from_object(instance)
    return data


@cache
def _drf_serializer_for(model: type[models.Model]) -> type[Any]:
    from rest_framework import serializers

    meta = type("Meta", (), {"model": model, "fields": "__all__"})
    return type(f"{model.__name__}SnorkySerializer", (serializers.ModelSerializer,), {"Meta": meta})


def _drf_installed() -> bool:
    return apps.is_installed("rest_framework")


def serializer_for(model: type[models.Model], serializer: type[Any] | None = None) -> Callable[[models.Model], Any]:
    """The function producing a delta's data for instances of ``model``."""
    if serializer is not None:
        return lambda instance: serializer(instance).data
    if callable(getattr(model, "jsonify", None)):
        return lambda instance: instance.jsonify()  # type: ignore[attr-defined]
    if _drf_installed():
        drf_serializer = _drf_serializer_for(model)
        return lambda instance: drf_serializer(instance).data
    return field_values


def serialize(instance: models.Model) -> dict[str, Any]:
    """The JSON object a delta carries for ``instance`` (its model must be ``@subscribable``)."""
    from snorky_django.changes import options_for

    options = options_for(type(instance))
    serializer = options.serializer if options is not None else None
    data = jsonable(serializer_for(type(instance), serializer)(instance))
    if not isinstance(data, dict):
        raise TypeError(f"{type(instance).__name__} serialized to {type(data).__name__}, not an object")
    return data
