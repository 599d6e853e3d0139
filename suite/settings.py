"""Settings: the config dataclasses (a method's, training's, a model's, a run's, the pipeline's), checked one way.

A field's type says what it holds (``int``, ``float``, ``bool``, ``str``, ``list[int]``, ``dict``, ``X | None``)
and ``setting(default, ge=, gt=, le=, lt=, choices=, hint=)`` in what range; ``Settings.__post_init__`` checks
every field of a dataclass derived from it, so that every refusal is one ConfigError worded the same way:
``<section.>name must be <what>, got <value>[; <hint>]``. A bool is never a number, an ``int`` setting takes
whole numbers only, a ``float`` setting takes an int as well (kept as given, so that a config's dict and its
run-id stay what they were) and never NaN or an infinity, strings and lists are never empty. A subclass that
only changes a default keeps the range of the base. Rules between settings (``anneal_end`` after
``anneal_start``) stay in the class's own ``__post_init__``, after ``super().__post_init__()``.

A setting's doc is the docstring under its field; ``describe`` reads it beside the type, default and range
(``suite methods -v``). ``build`` makes a settings class from a dict and refuses unknown keys, for every kind of
settings alike.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import operator
import textwrap
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar

from .errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """The range of a setting: bounds of a number, or the values it may take; ``hint`` ends its error."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    hint: str = ""

    def __post_init__(self) -> None:
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))

    @property
    def bounds(self) -> list[tuple[str, float]]:
        """(comparison, bound) of each bound given: ``[(">=", 0), ("<", 1)]``."""
        pairs = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return [(op, bound) for op, bound in pairs if bound is not None]

    def admits(self, v: Any) -> bool:
        if self.choices is not None:
            return v in self.choices
        return all(_COMPARE[op](v, bound) for op, bound in self.bounds)

    def text(self) -> str:
        """``in [0, 1)``, ``>= 1``, ``one of a, b``, ``'trained'``; empty without a range."""
        if self.choices is not None:
            return (
                repr(self.choices[0])
                if len(self.choices) == 1
                else "one of " + ", ".join(map(str, self.choices))
            )
        num = [f"{b:g}" if isinstance(b, float) else str(b) for _, b in self.bounds]
        if len(num) == 2:  # a lower and an upper bound
            (low, _), (high, _) = self.bounds
            return f"in {'[' if low == '>=' else '('}{num[0]}, {num[1]}{']' if high == '<=' else ')'}"
        return " ".join(f"{op} {n}" for (op, _), n in zip(self.bounds, num))


_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def setting(default: Any = MISSING, *, factory: Any = MISSING, **rule: Any) -> Any:
    """A dataclass field with a range: the keywords of ``Rule`` (``ge``, ``gt``, ``le``, ``lt``, ``choices``,
    ``hint``); ``factory``: a default made per instance, as ``default_factory``."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"rule": Rule(**rule)})


_NOUNS = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "booleans"),
    str: ("a non-empty string", "non-empty strings"),
    dict: ("a mapping", "mappings"),
}


def _arms(kind: Any) -> tuple:
    """The types of a union (``int | None``), or the type itself."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


def _fits(kind: Any, v: Any, rule: Rule) -> bool:
    if len(_arms(kind)) > 1:
        return any(_fits(arm, v, rule) for arm in _arms(kind))
    origin, args = typing.get_origin(kind) or kind, typing.get_args(kind)
    if kind is Any:
        return True
    if kind is type(None):
        return v is None
    if kind is bool:
        return isinstance(v, bool)
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool) and rule.admits(v)
    if kind is float:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return number and math.isfinite(v) and rule.admits(v)
    if kind is str:
        return isinstance(v, str) and v != "" and rule.admits(v)
    if origin is list:
        return isinstance(v, list) and bool(v) and all(_fits(args[0] if args else Any, x, rule) for x in v)
    if isinstance(origin, type):
        return isinstance(v, origin)
    return True


def _wants(kind: Any, rule: Rule, plural: bool = False) -> str:
    """What a value of ``kind`` within ``rule`` is, in words: ``a number in [0, 1)``, ``an integer >= 1 or null``."""
    arms = [arm for arm in _arms(kind) if arm is not type(None)]
    optional = len(arms) < len(_arms(kind))
    words = []
    for arm in arms:
        origin, args = typing.get_origin(arm) or arm, typing.get_args(arm)
        if origin is list:
            words.append("a non-empty list of " + _wants(args[0] if args else Any, rule, plural=True))
            continue
        if rule.choices is not None and arm in (int, float, str):
            words.append(rule.text())
            continue
        noun = _NOUNS.get(origin, (f"a {getattr(origin, '__name__', origin)}",) * 2)[plural]
        if arm in (int, float) and rule.text():
            noun += " " + rule.text()
        if arm is float and rule.choices is None and not any(op[0] == "<" for op, _ in rule.bounds):
            noun = noun.replace("number", "finite number", 1)
        words.append(noun)
    return " or ".join(words + (["null"] if optional else []))


def check(label: str, value: Any, kind: Any, rule: Rule | None = None, **bounds: Any) -> None:
    """Refuse ``value`` unless it is a ``kind`` (a type annotation) within ``rule`` (or ``bounds``, the keywords
    of ``setting``): a ConfigError ``<label> must be <what>, got <value>[; <hint>]``."""
    rule = rule or Rule(**bounds)
    if not _fits(kind, value, rule):
        hint = f"; {rule.hint}" if rule.hint else ""
        raise ConfigError(f"{label} must be {_wants(kind, rule)}, got {value!r}{hint}")


@functools.cache
def rules(cls: type) -> tuple[tuple[str, Any, Rule], ...]:
    """(name, type, rule) of each field of a settings dataclass; a field redeclared without a rule (a subclass
    changing a default) keeps the rule of the nearest base that gives one."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        declared = (getattr(k, "__dataclass_fields__", {}).get(f.name) for k in cls.__mro__)
        rule = next((d.metadata["rule"] for d in declared if d is not None and "rule" in d.metadata), Rule())
        out.append((f.name, hints[f.name], rule))
    return tuple(out)


class Settings:
    """Base of the config dataclasses: every field is checked by its type and its rule on construction."""

    section: ClassVar[str] = ""
    """Prefix of the setting names in errors (``train``: ``train.epochs must be ...``)."""

    def __post_init__(self) -> None:
        for name, kind, rule in rules(type(self)):
            check(self.where(name), getattr(self, name), kind, rule)

    def where(self, name: str) -> str:
        """A setting as errors name it: where it is written."""
        return f"{self.section}.{name}" if self.section else name


def build(cls: type, values: Any, what: str) -> Any:
    """``cls(**values)`` for a settings dataclass; a key it has no field for is a ConfigError naming its fields."""
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must be a mapping of settings, got {values!r}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = [f.name for f in fields]
    unknown = sorted(set(map(str, values)) - set(known))
    if unknown:
        raise ConfigError(f"{what} has no setting {', '.join(unknown)}; use one of: {', '.join(known)}")
    needed = [
        f.name
        for f in fields
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING
    ]
    if needed:
        raise ConfigError(f"{what} must have {', '.join(needed)}")
    return cls(**values)


def _docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass and of its bases, on one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, IndexError):
            continue
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                    docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def describe(cls: type) -> list[tuple[str, str, Any, str, str]]:
    """(setting, type, default, range, doc) of each field of a settings dataclass."""
    docs, ranges = _docs(cls), {name: rule.text() for name, _, rule in rules(cls)}
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out.append((f.name, str(f.type), default, ranges[f.name], docs.get(f.name, "")))
    return out
