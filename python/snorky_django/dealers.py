"""The dealers the embedded server gets: defaults per model, ``snorky.py`` modules, ``DEALERS``.

1. Every ``@subscribable`` model gets a BroadcastDealer named after it (``"Task"``) and a
   SimpleDealer keyed by its primary key (``"TaskById"``), unless ``dealers=False``.
2. Every installed app's ``snorky.py`` module is imported (``AUTODISCOVER``); its dealers are the
   list ``DEALERS`` if the module has one, else every dealer class the module defines.
3. ``SNORKY["DEALERS"]`` adds dotted paths to dealer classes.

A dealer declared in 2 or 3 under a default's name replaces the default. A dealer's ``model`` is
the model name deltas carry (``"Task"``); a subscribable model class is accepted too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import Any

from django.apps import apps
from django.db import models
from django.utils.module_loading import import_string, module_has_submodule

from snorky.dealers import BroadcastDealer, Dealer, FilterDealer, SimpleDealer
from snorky_django.changes import options_for, registered
from snorky_django.conf import snorky_settings

__all__ = ["DeclaredDealer", "build_dealers", "declared_dealers", "default_dealers", "model_names"]

_BASES = (Dealer, BroadcastDealer, SimpleDealer, FilterDealer)


@dataclass(frozen=True)
class DeclaredDealer:
    """A dealer class and where it was declared (for checks and error messages)."""

    dealer: type[Dealer]
    origin: str

    @property
    def name(self) -> str:
        """The dealer's name (its class name unless it sets ``name``)."""
        return self.dealer.name

    @property
    def model(self) -> Any:
        """The dealer's ``model`` as declared: a name or a model class."""
        return self.dealer.model


def model_names() -> dict[str, type[models.Model]]:
    """Delta model names of the subscribable models."""
    return {options.name: options.model for options in registered()}


def default_dealers() -> list[Dealer]:
    """The default dealers of every ``@subscribable`` model."""
    dealers: list[Dealer] = []
    for options in registered():
        if options.dealers:
            dealers.append(BroadcastDealer(name=options.name, model=options.name))
            dealers.append(SimpleDealer(name=options.pk_dealer, model=options.name, key=options.pk_field))
    return dealers


def _module_dealers(module: ModuleType) -> list[type[Dealer]]:
    listed = getattr(module, "DEALERS", None)
    if listed is not None:
        return list(listed)
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, Dealer)
        and value not in _BASES
        and value.__module__ == module.__name__
        and value.kind
    ]


def declared_dealers() -> list[DeclaredDealer]:
    """Dealers declared in ``snorky.py`` modules and ``SNORKY["DEALERS"]`` (imports them)."""
    declared: list[DeclaredDealer] = []
    if snorky_settings.AUTODISCOVER:
        for app_config in apps.get_app_configs():
            if app_config.module is None or not module_has_submodule(app_config.module, "snorky"):
                continue
            module = import_module(f"{app_config.name}.snorky")
            declared.extend(DeclaredDealer(dealer, module.__name__) for dealer in _module_dealers(module))
    for path in snorky_settings.DEALERS:
        declared.append(DeclaredDealer(import_string(path), 'SNORKY["DEALERS"]'))
    return declared


def resolve_model(model: Any) -> str | None:
    """The delta model name a dealer's ``model`` means, or ``None`` if it names no known model."""
    if isinstance(model, str):
        return model if model in model_names() else None
    if inspect.isclass(model) and issubclass(model, models.Model):
        options = options_for(model)
        return options.name if options is not None else None
    return None


def build_dealers() -> list[Dealer]:
    """The dealers for the DataSync service: defaults, replaced or extended by the declared ones."""
    dealers: dict[str, Dealer] = {dealer.name: dealer for dealer in default_dealers()}
    for declared in declared_dealers():
        model = declared.model
        if inspect.isclass(model) and issubclass(model, models.Model):
            resolved = resolve_model(model)
            model = resolved if resolved is not None else model.__name__
        dealers[declared.name] = declared.dealer(model=model)
    return list(dealers.values())
