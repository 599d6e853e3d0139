"""Run configs: a task preset (YAML) + a profile + overrides -> a validated, hashable RunConfig."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import tasks
from .compressors import registry
from .errors import ConfigError
from .settings import Settings, build, setting
from .tasks.base import TrainSettings, train_identity
from .version import code_version

PROFILES = ("paper", "smoke")
SEEDS = {"ge": 0, "le": 2**32 - 1}
"""The range of a seed (numpy's)."""


@dataclass
class RunConfig(Settings):
    """Everything one run needs. ``identity()`` (what the run-id hashes) leaves out where things live and adds
    the version of the code that decides the run's result (``suite.version``)."""

    task: str
    dataset: str | dict
    model: dict
    train: TrainSettings
    method: str = "dense"
    compress: dict = field(default_factory=dict)
    seed: int = setting(0, **SEEDS)
    profile: str = setting("paper", choices=PROFILES)
    family: str = "lm"
    data_dir: str | None = None
    results_dir: str | Path = "results"
    store: str | None = None
    """Sub-folder of results/runs this run is written to (each pipeline stage has its own, so that its runs are
    its output); None: results/runs itself. Finished runs are found in any store. Not part of the identity."""
    wandb: str = setting("offline", choices=("offline", "online", "disabled"))
    """W&B mode: offline (default), online, disabled."""
    study: str | None = None
    """Sweep study this run belongs to (W&B group); None: the task."""
    trial: int | None = setting(None, ge=0)
    seeds: list[int] | None = setting(None, **SEEDS)
    """The seeds this run's configuration is asked for (a sweep's or the pipeline's); tables say when fewer
    finished. Not part of the identity."""
    checkpoint: bool = False
    """Save the trained weights (model.pt) beside the record; dense runs always do (trained inits need them)."""

    def __post_init__(self) -> None:
        family = tasks.get(self.family)
        if isinstance(self.train, dict):
            self.train = build(family.train_settings, self.train, "train")
        elif not isinstance(self.train, family.train_settings):
            raise ConfigError(
                f"train settings of family {self.family} must be {family.train_settings.__name__}"
            )
        super().__post_init__()
        self.model = family.check_model(self.model)
        # Validate the method and fill in its defaults, so equal configs hash equally.
        self.compress = registry.make_config(self.method, self.compress).to_dict()

    @property
    def method_config(self) -> registry.CompressorConfig:
        return registry.make_config(self.method, self.compress)

    @property
    def code_version(self) -> str:
        return code_version(self.family, self.method)

    def identity(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "family": self.family,
            "dataset": self.dataset,
            "model": self.model,
            "train": train_identity(dataclasses.asdict(self.train)),
            "method": self.method,
            "compress": self.compress,
            "seed": self.seed,
            "code": self.code_version,
            # a run started from the trained dense baseline depends on the code that trained it too
            **(
                {"baseline_code": code_version(self.family, "dense")}
                if self.compress.get("init") == "trained"
                else {}
            ),
        }

    @property
    def run_key(self) -> str:
        """The run-id without the code version: what a checkpoint of this run is filed under, so that a run cut
        short resumes under changed code as long as that code behaves the same (``suite.checkpoints``)."""
        return _short_hash({k: v for k, v in self.identity().items() if k not in ("code", "baseline_code")})

    @property
    def run_id(self) -> str:
        return _short_hash(self.identity())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run_id"] = self.run_id
        d["code_version"] = self.code_version
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = {k: v for k, v in d.items() if k not in ("run_id", "code_version")}
        return cls(**d)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _short_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where} is not valid YAML ({getattr(e, 'problem', e)}); fix the file"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping (key: value lines)")
    return data


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["train.epochs=1", "cmr=0.5"]`` -> {"train.epochs": 1, "cmr": 0.5} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


_TOP = {f.name for f in fields(RunConfig)} - {"task", "family", "dataset", "model", "train", "compress"}
"""RunConfig fields an override names bare (``seed=1``); the rest come from the preset and its sections."""


def load_run(
    preset: str | Path,
    method: str = "dense",
    factor: float | None = None,
    seed: int | None = None,
    sets: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve a preset file, its profile and overrides into a RunConfig.

    Bare override keys go to the first place that has them: top level (seed, profile, ...), the method's
    settings (factor, cmr, ...), train, model. Dotted keys (``train.epochs``, ``model.hidden``) are explicit.
    A profile (``profiles: smoke: {...}`` in the preset) overlays train settings (bare keys) and model
    settings (``model.<key>``); explicit overrides win over it.
    """
    spec = read_yaml(preset)
    name = spec.get("name") or Path(preset).stem
    family_name = spec.get("family", "lm")
    if not isinstance(family_name, str):
        raise ConfigError(f"{preset}: family must be a name ({', '.join(tasks.available())})")
    family = tasks.get(family_name)
    train_keys = {f.name for f in dataclasses.fields(family.train_settings)}
    model_keys = {f.name for f in dataclasses.fields(family.model_settings)}
    sets = dict(sets or {})
    top: dict[str, Any] = {}
    method = sets.pop("method", method)
    if not isinstance(method, str):
        raise ConfigError(f"method must be a name, got {method!r}")
    compress: dict[str, Any] = dict(spec.get("compress") or {})
    if factor is not None:
        compress["factor"] = factor
    for section in ("model", "train"):
        if not isinstance(spec.get(section) or {}, dict):
            raise ConfigError(f"{preset}: {section} must be a mapping of settings")
    model = dict(spec.get("model") or {})
    train = dict(spec.get("train") or {})
    method_keys = set(registry.config_fields(method))
    explicit: set[str] = set()
    for key, value in sets.items():
        section, _, sub = key.partition(".")
        if sub:
            target = {"train": train, "model": model, "compress": compress}.get(section)
            if target is None:
                raise ConfigError(
                    f"unknown override {key!r}; dotted keys start with train., model. or compress."
                )
            target[sub] = value
            explicit.add(key)
        elif key in _TOP:
            top[key] = value
        elif key in method_keys:
            compress[key] = value
        elif key in train_keys:
            train[key] = value
            explicit.add(f"train.{key}")
        elif key in model_keys:
            model[key] = value
            explicit.add(f"model.{key}")
        else:
            raise ConfigError(
                f"unknown override {key!r}; use one of {', '.join(sorted(_TOP | method_keys | train_keys))}, "
                f"a model setting ({', '.join(sorted(model_keys))}) or a dotted key (model.hidden=...)"
            )
    if seed is not None:
        top["seed"] = seed
    profile = top.get("profile", spec.get("profile", "paper"))
    profiles = spec.get("profiles") or {}
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if profile != "paper":
        if profile not in profiles:
            raise ConfigError(f"{preset} has no {profile!r} profile; add one under profiles:")
        overlay = profiles[profile]
        if not isinstance(overlay, dict):
            raise ConfigError(f"{preset}: profiles.{profile} must be a mapping of settings")
        for key, value in overlay.items():
            section, _, sub = key.partition(".")
            target, full = (model, key) if section == "model" and sub else (train, f"train.{key}")
            if full not in explicit:
                target[sub if target is model else key] = value
    if "dataset" not in spec:
        raise ConfigError(
            f"{preset} must name a dataset ({', '.join(family.datasets)} or {{path: <folder>}})"
        )
    try:
        return RunConfig(
            task=name,
            family=family_name,
            dataset=spec["dataset"],
            model=model,
            train=build(family.train_settings, train, "train"),
            method=method,
            compress=compress,
            **{**top, "profile": profile},
        )
    except TypeError as e:
        raise ConfigError(f"{preset}: {e}") from None
