"""Sweep specs: a YAML file -> a validated SweepSpec (task, methods, search space, objectives, budget).

Everything is checked before anything is created: a bad spec raises ConfigError and leaves no storage behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import tasks
from ..compressors import registry
from ..config import PROFILES, SEEDS, RunConfig, load_run, read_yaml
from ..errors import ConfigError
from ..settings import check
from .build import make_pruner, make_sampler
from .space import SPEC_KEYS, Component, Objective, Param, check_known_ranges, parse_objectives


@dataclass
class SweepSpec:
    """A validated sweep: which runs a trial makes (task, methods, fixed settings, seeds), what is searched and
    optimized, and the budget. ``n_trials`` counts trials with an outcome (complete, pruned, or failed with a
    reason); trials of a dead worker are retried and do not count."""

    name: str
    task: str
    methods: list[str]
    space: dict[str, Param]
    objectives: list[Objective]
    n_trials: int
    sampler: Component
    pruner: Component
    seeds: list[int]
    set: dict[str, Any]
    profile: str
    path: str = ""
    family: str = "lm"

    @property
    def study_name(self) -> str:
        return f"{self.name}-{self.profile}"

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def monitor(self) -> str | None:
        """The per-epoch metric the pruner watches (None: no pruning)."""
        return None if self.pruner.name == "none" else self.objectives[0].name

    def params_for(self, method: str) -> list[Param]:
        """The searched settings that apply to ``method`` (a method setting applies only to methods having it;
        the learning rate only to methods that train from scratch)."""
        return [
            p
            for p in self.space.values()
            if _applies(p.name, method, self.set) and not _refused(p, method, self.set)
        ]

    def suggest(self, trial) -> dict[str, Any]:
        """Draw one trial's settings: the method (when there are several), then the settings that apply to it."""
        method = (
            self.methods[0] if len(self.methods) == 1 else trial.suggest_categorical("method", self.methods)
        )
        return {"method": method, **{p.name: p.suggest(trial) for p in self.params_for(method)}}

    def run_config(
        self, params: dict[str, Any], seed: int, study: str | None = None, trial: int | None = None
    ) -> RunConfig:
        """The run of one trial and seed."""
        method = params["method"]
        sets = {k: v for k, v in self.set.items() if _applies(k, method, self.set)}
        sets.update({k: v for k, v in params.items() if k != "method"})
        sets.update(profile=self.profile, study=study, trial=trial, seeds=list(self.seeds))
        return load_run(self.task, method, seed=seed, sets=sets)

    def tried_runs(self) -> dict[str, list[RunConfig]]:
        """Per method, the runs validation tries: each searched setting at each of its ends (the first seed)."""
        out: dict[str, list[RunConfig]] = {}
        for method in self.methods:
            for param in self.params_for(method) or [None]:
                for value in param.ends() if param else [None]:
                    point = {"method": method, **({param.name: value} if param else {})}
                    out.setdefault(method, []).append(self.run_config(point, self.seeds[0]))
        return out

    def grid(self) -> list[dict[str, Any]]:
        """Every point of a grid sweep: per method, the product of the choices that apply to it."""
        points = []
        for method in self.methods:
            params = self.params_for(method)
            for values in itertools.product(*(p.choices for p in params)):
                point = {"method": method} if len(self.methods) > 1 else {}
                points.append({**point, **{p.name: v for p, v in zip(params, values)}})
        if self.pruner.name == "setting_halving":
            # A configuration's values of the raced setting follow each other, in the order listed: its race is
            # decided, and its winner finished, before the next configuration starts.
            param = self.pruner.options.get("param", "lr")
            choices = {p.name: p.choices for m in self.methods for p in self.params_for(m)}.get(param, [])
            groups: list[dict] = []
            for pt in points:
                if (group := {k: v for k, v in pt.items() if k != param}) not in groups:
                    groups.append(group)
            points.sort(
                key=lambda pt: (
                    groups.index({k: v for k, v in pt.items() if k != param}),
                    choices.index(pt[param]) if param in pt else 0,
                )
            )
        return points

    def identity(self) -> dict[str, Any]:
        """What a resumed study must agree on (everything but the budget)."""
        d = dataclasses.asdict(self)
        for key in ("n_trials", "path"):
            d.pop(key)
        where = ("results_dir", "data_dir", "store")  # where things live is not what the study is
        d["set"] = {k: v for k, v in d["set"].items() if k not in where}
        d["code"] = self.code_versions()
        return d

    def code_versions(self) -> dict[str, str]:
        """The code version of each method's runs: trials of older code would be stale in every table."""
        from ..version import code_version

        return {m: code_version(self.family, m) for m in self.methods}

    def fingerprint(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _method_fields() -> dict[str, set[str]]:
    return {m: set(registry.config_fields(m)) for m in registry.available()}


def _known(key: str, family: str) -> bool:
    """Whether a space key is a setting some run understands (a method's, train's, model's or the run's)."""
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    run_keys |= {f.name for f in dataclasses.fields(tasks.get(family).train_settings)}
    return "." in key or key in run_keys or any(key in f for f in _method_fields().values())


def _bare(key: str) -> str:
    return key[len("compress.") :] if key.startswith("compress.") else key


LR_KEYS = ("lr", "train.lr")


def trained_init(method: str, fixed: dict[str, Any]) -> bool:
    """Whether ``method`` starts from the trained dense baseline under the fixed settings ``fixed``: its
    training learning rate is then the baseline's (fine-tuning has ``finetune_lr``)."""
    fields = _method_fields()[method]
    try:
        return registry.make_config(method, {k: v for k, v in fixed.items() if k in fields}).init == "trained"
    except ConfigError:
        return False


def _refused(param: Param, method: str, fixed: dict[str, Any]) -> bool:
    """Whether ``method`` refuses every value ``param`` can take (dense and a compression factor): it is then
    not searched for that method, which runs at its own fixed value."""
    fields = _method_fields()[method]
    if _bare(param.name) not in fields:
        return False
    base = {k: v for k, v in fixed.items() if k in fields}
    for value in param.ends():
        try:
            registry.make_config(method, {**base, _bare(param.name): value})
            return False
        except ConfigError:
            continue
    return True


def _applies(key: str, method: str, fixed: dict[str, Any]) -> bool:
    """A method setting (a field of some registered method) applies to the methods that have it; the learning
    rate to the methods trained from scratch (a trained init's runs share the dense baseline, trained at the
    preset's rate); every other key (train.*, model.*, seed, ...) applies to every run."""
    key = _bare(key)
    if key in LR_KEYS and trained_init(method, fixed):
        return False
    fields = _method_fields()
    return "." in key or key in fields.get(method, set()) or not any(key in f for f in fields.values())


def resolve_task(task: Any, spec_path: Path) -> str:
    """``tasks/ptb-small.yaml``, or a bare name ``ptb-small`` looked up in tasks/ (here, or beside the spec)."""
    if not isinstance(task, str) or not task:
        raise ConfigError(
            f"{spec_path}: task must name a preset (tasks/ptb-small.yaml or ptb-small), got {task!r}"
        )
    for c in (Path(task), Path("tasks") / f"{task}.yaml", spec_path.parent.parent / "tasks" / f"{task}.yaml"):
        if c.is_file():
            return str(c)
    known = sorted(p.stem for p in Path("tasks").glob("*.yaml"))
    raise ConfigError(
        f"{spec_path}: unknown task {task!r}; presets here: {', '.join(known) or 'none (no tasks/)'}"
    )


def _overlay(spec: dict, profile: str, path: Path) -> dict:
    """A profile's overrides on top of the spec (``space`` and ``set`` merged key by key)."""
    overlay = None if profile == "paper" else (spec.get("profiles") or {}).get(profile)
    if overlay is None:
        return spec
    if not isinstance(overlay, dict):
        raise ConfigError(f"{path}: profiles.{profile} must be a mapping")
    out = dict(spec)
    for key, value in overlay.items():
        if key in ("space", "set") and isinstance(value, dict):
            out[key] = {**(spec.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def load_spec(path: str | Path, profile: str | None = None, sets: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep spec. ``profile`` and ``sets`` (fixed overrides) come from the command line
    or params.yaml and win over the spec's own."""
    path = Path(path)
    raw = read_yaml(path)
    if unknown := set(raw) - SPEC_KEYS:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SPEC_KEYS))}"
        )
    profile = profile or raw.get("profile") or "paper"
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    raw = _overlay(raw, profile, path)
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{path}: name must be letters, digits, - and _ (it names the study), got {name!r}")
    task = resolve_task(raw.get("task"), path)
    family = read_yaml(task).get("family", "lm")
    fixed = {**(raw.get("set") or {}), **(sets or {})}
    for key in ("method", "profile", "study", "trial", "seed"):
        if key in fixed:
            raise ConfigError(f"{path}: set.{key} is chosen by the sweep itself; remove it")
    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError(f"{path}: the search space is empty; add space: {{factor: [2, 4, 8]}} or a range")
    space = {_bare(k): Param.parse(_bare(k), v) for k, v in space_raw.items()}
    check_known_ranges(space)
    methods = _resolve_methods(raw.get("methods"), space, fixed, path, family)
    if raw.get("methods") == "all":  # "all" adapts to what is registered: a setting nobody has is left out
        for key in [k for k in space if not _known(k, family)]:
            print(
                f"note: {path}: no registered method has a setting {key!r}; the sweep leaves it out",
                file=sys.stderr,
            )
            del space[key]
        if not space:
            raise ConfigError(f"{path}: no registered method has any setting of the search space")
    metric = tasks.get(family).metric
    objectives = parse_objectives(raw.get("objectives", [metric.val]), path, metric)
    sampler = Component.parse("sampler", raw.get("sampler"), "tpe" if len(objectives) == 1 else "nsgaii")
    pruner = Component.parse("pruner", raw.get("pruner"), "median" if len(objectives) == 1 else "none")
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    check(f"{path}: seeds", seeds, list[int], **SEEDS)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds repeat: {seeds}")
    spec = SweepSpec(
        name, task, methods, space, objectives, 0, sampler, pruner, seeds, fixed, profile, str(path), family
    )
    spec.n_trials = _n_trials(raw.get("n_trials"), spec, path)
    _check_components(spec, path)
    spec.tried_runs()  # every run the sweep can make must resolve: try each value at each end
    return spec


def applies(family: str, method: str, settings: dict[str, Any], space: dict[str, Param]) -> str | None:
    """None if ``method`` can compress the task family's models with ``settings`` (tried on the family's tiny
    example model at CF 2, with each searched ``targets`` choice), else why not."""
    from ..train import build_model

    fam = tasks.get(family)
    example = fam.example()
    choices = space["targets"].choices if "targets" in space and space["targets"].choices else [None]
    why = None
    for targets in choices:
        cfg = {**settings, "factor": 2.0 if method != "dense" else 1.0}
        if targets is not None:
            cfg["targets"] = targets
        try:
            build_model(
                fam, dict(example.model), method, registry.make_config(method, cfg), ctx=example.context
            )
            return None
        except ConfigError as e:
            why = str(e)
    return why


def _resolve_methods(
    value: Any, space: dict[str, Param], fixed: dict, path: Path, family: str = "lm"
) -> list[str]:
    """A list of registered methods, or ``all``: every registered compressor that accepts the fixed settings and
    applies to the task's models (a method for vocabulary matrices does not apply to recurrent targets), and the
    dense model when the space searches the learning rate (so that the reference gets its own best rate too). Explicit lists are strict: each method must accept the settings and each method setting in the
    space must belong to at least one listed method."""
    fields = _method_fields()
    if value == "all":
        methods = []
        for m in registry.available():
            if m == "dense" and not any(_bare(k) in LR_KEYS for k in space):
                continue  # the dense reference joins only to get its own best learning rate
            settings = {_bare(k): v for k, v in fixed.items() if _bare(k) in fields[m]}
            try:
                registry.make_config(m, settings)
            except ConfigError as e:
                print(f"note: {path}: methods: all leaves out {m} ({e})", file=sys.stderr)
                continue
            why = applies(family, m, settings, space)
            if why is not None:
                print(
                    f"note: {path}: methods: all leaves out {m} (it does not apply here: {why})",
                    file=sys.stderr,
                )
                continue
            methods.append(m)
        if not methods:
            raise ConfigError(f"{path}: no registered method accepts the fixed settings {fixed}")
    else:
        methods = [value] if isinstance(value, str) else value
        if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
            raise ConfigError(f"{path}: methods must be a list of method names or 'all', got {value!r}")
        for m in methods:
            registry.get(m)  # unknown method -> ConfigError listing the known
        if len(set(methods)) != len(methods):
            raise ConfigError(f"{path}: methods repeat: {methods}")
        for key in space:  # a method setting of the space must be one of theirs
            if any(key in f for f in fields.values()) and not any(key in fields[m] for m in methods):
                raise ConfigError(f"space.{key}: none of {', '.join(methods)} has a setting {key!r}")
    if "method" in space:
        raise ConfigError("space.method: list the methods under methods:, not in the space")
    return methods


def _n_trials(value: Any, spec: SweepSpec, path: Path) -> int:
    if spec.sampler.name == "grid":
        if bad := [p.name for p in spec.space.values() if p.choices is None]:
            raise ConfigError(f"{path}: a grid sweep needs lists of values; {', '.join(bad)} are ranges")
        size = len(spec.grid())
        if value is None:
            return size
        if isinstance(value, int) and not isinstance(value, bool) and value > size:
            raise ConfigError(f"{path}: n_trials {value} is more than the {size} points of the grid")
    check(f"{path}: n_trials", value, int, ge=1)
    return value


def _check_components(spec: SweepSpec, path: Path) -> None:
    if spec.pruner.name != "none":
        if len(spec.objectives) > 1:
            raise ConfigError(
                f"{path}: Optuna cannot prune a study with several objectives; set pruner: none"
            )
        if not spec.objectives[0].is_metric:
            raise ConfigError(
                f"{path}: pruning watches a per-epoch validation metric; objective "
                f"{spec.objectives[0].name} is not one (set pruner: none)"
            )
    make_sampler(spec)  # the Optuna classes check their own options
    make_pruner(spec)
