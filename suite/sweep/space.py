"""The parts of a sweep spec: searched settings (Param), objectives and the sampler/pruner choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..settings import check, rules

#: Objectives computed from a run's accounting or measured after it, with their direction.
SIZE_OBJECTIVES = {
    "stored": "minimize",  # value-equivalents stored for the targeted matrices (indices counted)
    "model_stored": "minimize",  # the same for the whole model
    "cf": "maximize",  # achieved CF of the targeted matrices
    "model_cf": "maximize",
    "latency_ms": "minimize",  # batch-1 y = W x over the targeted matrices, deployment form
}
SPEC_KEYS = {
    "name",
    "task",
    "methods",
    "space",
    "objectives",
    "n_trials",
    "sampler",
    "pruner",
    "seeds",
    "set",
    "profile",
    "profiles",
}
_SCALAR = (str, int, float, bool)


@dataclass
class Param:
    """One searched setting: ``choices`` (a grid) or a range ``low``..``high`` (optionally ``log``, ``step``,
    integer when both ends are integers and ``step`` is an integer or absent with ``int: true``)."""

    name: str
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def __post_init__(self) -> None:
        where = f"space.{self.name}"
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ConfigError(f"{where}: give either choices or low/high, not both")
            if not isinstance(self.choices, list) or not self.choices:
                raise ConfigError(f"{where}: choices must be a non-empty list")
            if not all(isinstance(c, _SCALAR) or c is None for c in self.choices):
                raise ConfigError(
                    f"{where}: choices must be numbers, strings or booleans, got {self.choices!r}"
                )
            return
        for end in ("low", "high"):
            check(f"{where}: {end}", getattr(self, end), float)
        if not self.low < self.high:
            raise ConfigError(f"{where}: low must be < high, got {self.low} and {self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {self.low}")
        if self.step is not None and (self.log or not self.step > 0):
            raise ConfigError(f"{where}: step must be > 0 and cannot be combined with log")

    @classmethod
    def parse(cls, name: str, value: Any) -> Param:
        """``[2, 4, 8]`` (a grid), ``{low: 2, high: 16, log: true}`` (a range), ``{choices: [...]}`` or a scalar."""
        if isinstance(value, list):
            return cls(name, choices=value)
        if isinstance(value, dict):
            if unknown := set(value) - {"choices", "low", "high", "log", "step", "int"}:
                raise ConfigError(
                    f"space.{name}: unknown key(s) {', '.join(sorted(unknown))}; "
                    "use choices, or low, high, log, step, int"
                )
            return cls(
                name,
                value.get("choices"),
                value.get("low"),
                value.get("high"),
                bool(value.get("log", False)),
                value.get("step"),
                bool(value.get("int", False)),
            )
        if isinstance(value, _SCALAR):
            return cls(name, choices=[value])
        raise ConfigError(f"space.{name}: expected a list of values or a {{low, high}} range, got {value!r}")

    def ends(self) -> list:
        """The values that validation tries: every choice, or both ends of the range."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.integer:
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Objective:
    """A value the study optimizes: a validation metric of the task, or a size/latency (Pareto studies)."""

    name: str
    direction: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"objective names are strings, got {self.name!r}")
        if self.name.startswith("test_"):
            raise ConfigError(
                f"objective {self.name}: search on a validation metric (val_...); test metrics are "
                "reported beside each trial, never searched on"
            )
        if self.name not in SIZE_OBJECTIVES and not self.name.startswith("val_"):
            raise ConfigError(
                f"unknown objective {self.name!r}; use a validation metric (val_<metric>) or one of "
                f"{', '.join(SIZE_OBJECTIVES)}"
            )
        if self.direction is None:
            self.direction = SIZE_OBJECTIVES.get(self.name) or _guess_direction(self.name)
        if self.direction not in ("minimize", "maximize"):
            raise ConfigError(
                f"objective {self.name}: direction must be minimize or maximize, got {self.direction!r}"
            )

    @property
    def is_metric(self) -> bool:
        return self.name.startswith("val_")


def _guess_direction(name: str) -> str | None:
    """The direction of a validation metric of a registered family (a loss is minimized)."""
    from .. import tasks

    bare = name.removeprefix("val_")
    if bare == "loss":
        return "minimize"
    metric = tasks.metric(bare)
    if metric is not None:
        return metric.direction
    raise ConfigError(f"objective {name}: say its direction ({{name: {name}, direction: minimize}})")


@dataclass
class Component:
    """A sampler or pruner by name, with keyword options for its Optuna class."""

    name: str
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, what: str, value: Any, default: str) -> Component:
        if value is None:
            return cls(default)
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return cls(value["name"], {k: v for k, v in value.items() if k != "name"})
        raise ConfigError(f"{what} must be a name or {{name: ..., <options>}}, got {value!r}")


def check_known_ranges(space: dict[str, Param]) -> None:
    """Settings with a meaning across methods (the compression factor, the rates the methods' figures sweep)
    are checked against their range even before the methods are known."""
    from ..compressors.registry import CompressorConfig, swept_settings

    for name, cls in {"factor": CompressorConfig, **swept_settings()}.items():
        if name in space:
            kind, rule = next((kind, rule) for field, kind, rule in rules(cls) if field == name)
            for value in space[name].ends():
                check(f"space.{name}", value, kind, rule)


def parse_objectives(value: Any, path: Path, metric) -> list[Objective]:
    """Objectives of a spec; ``metric`` (the task family's) gives the direction of its validation metric, the
    only metric a trial's runs are sure to have."""
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"{path}: objectives must be a list such as [{metric.val}] or [{metric.val}, stored]"
        )
    out = []
    for item in items:
        if isinstance(item, str):
            name, direction = item, None
        elif isinstance(item, dict) and set(item) <= {"name", "direction"}:
            name, direction = item.get("name"), item.get("direction")
        else:
            raise ConfigError(f"{path}: an objective is a name or {{name, direction}}, got {item!r}")
        if isinstance(name, str) and name.startswith("val_"):
            if name != metric.val:
                raise ConfigError(
                    f"{path}: objective {name}: this task's validation metric is {metric.val} ({metric.direction})"
                )
            if direction is not None and direction != metric.direction:
                raise ConfigError(f"{path}: objective {name} is to {metric.direction}, not {direction}")
            direction = metric.direction
        out.append(Objective(name, direction))
    names = [o.name for o in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: objectives repeat: {names}")
    return out
