"""Dealers: the named rules that decide which DataSync subscriptions a delta concerns.

Declare a dealer as a class and give the class (or an instance) to
:class:`snorky.services.DataSyncService`::

    class AllTasks(BroadcastDealer):
        model = "Task"                     # name defaults to the class name

    class TasksByOwner(SimpleDealer):
        model = "Task"
        key = "owner.id"                   # a field path, evaluated in Rust

    class TasksByTeam(SimpleDealer):
        model = "Task"

        def get_key_for_model(self, data):  # or a Python method, when a path is not enough
            return data["team"]["slug"].lower()

    class FilteredTasks(FilterDealer):
        model = "Task"

A subscription item ``{"dealer": "TasksByOwner", "query": 42}`` then receives the ``Task``
deltas whose object has ``owner.id == 42``. Routing runs in Rust; only a
``get_key_for_model`` method calls back into Python (on a worker thread, holding the GIL only
for the call). If it raises, the error is logged with the dealer's name and that delta reaches
none of this dealer's subscription items; other dealers are unaffected.
"""

from __future__ import annotations

from typing import Any, ClassVar

from snorky._core import ConfigurationError

__all__ = ["BroadcastDealer", "Dealer", "FilterDealer", "SimpleDealer"]


class Dealer:
    """Base class of the dealers. Subclass :class:`BroadcastDealer`, :class:`SimpleDealer` or
    :class:`FilterDealer`, not this.

    - ``name``: what subscription items refer to (``items[].dealer``); defaults to the class
      name. Names must be unique within a service.
    - ``model``: the model whose deltas the dealer receives (``delta["model"]``); required.
    """

    kind: ClassVar[str] = ""
    name: str = ""
    model: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def __init__(self, *, name: str | None = None, model: str | None = None) -> None:
        if not type(self).kind:
            raise ConfigurationError(
                f"{type(self).__name__} is not a dealer kind: subclass BroadcastDealer, SimpleDealer or FilterDealer"
            )
        if name is not None:
            self.name = name
        if model is not None:
            self.model = model
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"dealer {type(self).__name__}: name must be a non-empty string")
        if self.model is None:
            raise ConfigurationError(
                f'dealer {self.name!r} has no model: set model = "Task" (the model its deltas carry) on the class'
            )
        if not isinstance(self.model, str):
            raise ConfigurationError(f"dealer {self.name!r}: model must be a string, not {self.model!r}")

    def spec(self) -> dict[str, Any]:
        """The dealer as the Rust core takes it."""
        return {"name": self.name, "model": self.model, "kind": self.kind}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} for model {self.model!r}>"


class BroadcastDealer(Dealer):
    """Every subscription item of this dealer receives every delta of its model (the item's
    ``query`` is ignored, but must be present; ``None`` will do)."""

    kind = "broadcast"


class SimpleDealer(Dealer):
    """An item receives a delta when its ``query`` equals a key computed from the object.

    Set ``key`` to a dotted field path (``"owner.id"``), evaluated in Rust; or, when a path is
    not enough, override :meth:`get_key_for_model`. Keys compare as JSON values, numbers by
    value (``1 == 1.0``), everything else strictly (``"1" != 1``, ``True != 1``). An object
    whose keyed field is missing matches no item.
    """

    kind = "simple"
    key: str | None = None

    def __init__(self, *, name: str | None = None, model: str | None = None, key: str | None = None) -> None:
        if key is not None:
            self.key = key
        super().__init__(name=name, model=model)
        if not self._has_key_method() and (not isinstance(self.key, str) or not self.key):
            raise ConfigurationError(
                f'dealer {self.name!r} has no key: set key = "owner.id" (a field path) '
                "or override get_key_for_model(self, data)"
            )

    def get_key_for_model(self, data: Any) -> Any:
        """The key of ``data`` (the object of a delta, as a dict).

        Override it in a subclass to compute keys in Python. The default follows ``key``, as
        the Rust core does; it raises ``KeyError`` when the field is missing.
        """
        value = data
        for part in (self.key or "").split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(self.key)
            value = value[part]
        return value

    def _has_key_method(self) -> bool:
        return type(self).get_key_for_model is not SimpleDealer.get_key_for_model

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        if self._has_key_method():
            spec["key_function"] = self.get_key_for_model
        else:
            spec["key"] = self.key
        return spec


class FilterDealer(Dealer):
    """An item's ``query`` is a filter expression evaluated against the object:
    ``["==", field, value]``, ``["<", ...]``, ``["<=", ...]``, ``[">", ...]``, ``[">=", ...]``,
    ``["and", expr, ...]``, ``["or", expr, ...]``, ``["not", expr]``, with dotted field paths.
    A query that is not a valid expression is refused when the subscription is authorized."""

    kind = "filter"
