"""Task families: one module per family in this package (``lm``, ...), each registering a ``Family``.

Every module here is imported on first use, so adding a family is adding its module; a test (or a user's
plugin) may also register a family of its own with ``register``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .. import plugins as _plugins
from ..errors import ConfigError
from .base import DataContext, Family, Metric, Task, TrainSettings

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family under its ``name`` (lowercase, once)."""
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"task family {family.name!r} is registered twice")
    if family.name != family.name.lower():
        raise ValueError(f"task family names are lowercase: {family.name!r}")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


def available() -> list[str]:
    return sorted(FAMILIES)


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown task family {name!r}; known: {', '.join(available())}") from None


def metric(name: str) -> Metric | None:
    """The metric of that name of a registered family (its label, direction and scale), or None."""
    return next((f.metric for f in FAMILIES.values() if f.metric.name == name), None)


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

_plugins.load("families", FAMILIES, register, Family)  # installed packages' families (suite.plugins)

__all__ = [
    "FAMILIES",
    "DataContext",
    "Family",
    "Metric",
    "Task",
    "TrainSettings",
    "available",
    "get",
    "metric",
    "register",
]
