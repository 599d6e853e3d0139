"""Plugins by entry point: an installed package adds methods (group ``suite.methods``) and task families
(``suite.families``) without touching the suite.

An entry point names a module (importing it registers, as the suite's own modules do) or an object: a
``Method`` or a ``Family`` is registered, a function is called. What an entry point added is filed under its
distribution's name and version (``origin``), which ``suite methods`` shows and a run's record keeps. A plugin
that fails to load is one ``note:`` line on stderr; every other command goes on without it.

    [project.entry-points."suite.methods"]
    int8 = "my_package.int8"
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

GROUPS = {"methods": "suite.methods", "families": "suite.families"}
ORIGINS: dict[str, dict[str, dict[str, str]]] = {"methods": {}, "families": {}}
"""kind -> registered name -> {"plugin": distribution, "version": its version, "entry_point": name = value}."""


def load(kind: str, registry: dict[str, Any], register: Callable[[Any], Any], cls: type) -> None:
    """Load every entry point of ``kind``'s group into ``registry`` (through ``register``)."""
    for ep in entry_points(group=GROUPS[kind]):
        before = set(registry)
        try:
            obj = ep.load()
            if isinstance(obj, cls):
                if registry.get(obj.name) is not obj:
                    register(obj)
            elif callable(obj) and not isinstance(obj, type):
                obj()
        except Exception as e:  # a broken plugin must not break every command
            print(
                f"note: plugin {ep.name} ({ep.value}) of {GROUPS[kind]} failed to load and is left out: "
                f"{type(e).__name__}: {e}",
                file=sys.stderr,
            )
            for name in set(registry) - before:
                registry.pop(name)
            continue
        dist = ep.dist
        for name in set(registry) - before:
            ORIGINS[kind][name] = {
                "plugin": dist.name if dist else ep.value.split(".")[0],
                "version": dist.version if dist else "unknown",
                "entry_point": f"{ep.name} = {ep.value}",
            }


def origin(kind: str, name: str) -> dict[str, str] | None:
    """Where a registered method or family comes from: None for the suite's own."""
    return ORIGINS[kind].get(name)
