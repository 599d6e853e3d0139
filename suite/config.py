"""Run configs: a task preset (YAML) + a profile + overrides -> a validated, hashable RunConfig."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .compressors import registry
from .errors import ConfigError

PROFILES = ("paper", "smoke")
FAMILIES = ("lm",)


@dataclass
class TrainConfig:
    """Optimisation of a language model (Zaremba et al. 2014): SGD, step decay, clipped gradient norm."""

    epochs: int = 13
    batch_size: int = 20
    bptt: int = 20
    lr: float = 1.0
    lr_decay: float = 2.0
    """The learning rate is divided by this every epoch after ``decay_after``."""
    decay_after: int = 4
    """Epochs 1..decay_after run at ``lr``; epoch e > decay_after at lr / lr_decay ** (e - decay_after)."""
    clip: float = 5.0
    """Max global gradient norm of the loss summed over the bptt steps and averaged over the batch."""
    eval_batch_size: int = 10
    train_fraction: float = 1.0
    """Train on this leading fraction of the training stream (smoke profiles)."""
    eval_fraction: float = 1.0
    """Validate and test on this leading fraction of valid/test."""
    max_vocab: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "bptt", "eval_batch_size"):
            value = getattr(self, name)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (0 if name == "epochs" else 1)
            ):
                raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
        for name in ("lr", "lr_decay", "clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"train.{name} must be a number > 0, got {value!r}")
        for name in ("train_fraction", "eval_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ConfigError(f"train.{name} must be in (0, 1], got {value!r}")


@dataclass
class RunConfig:
    """Everything one run needs. ``identity()`` (what the run-id hashes) leaves out where things live."""

    task: str
    dataset: str | dict
    model: dict
    train: TrainConfig
    method: str = "dense"
    compress: dict = field(default_factory=dict)
    seed: int = 0
    profile: str = "paper"
    family: str = "lm"
    data_dir: str | None = None
    results_dir: str = "results"
    wandb: str = "offline"
    """W&B mode: offline (default), online, disabled."""
    study: str | None = None
    """Sweep study this run belongs to (W&B group); None: the task."""
    trial: int | None = None
    checkpoint: bool = False
    """Save the trained weights (model.pt) beside the record; dense runs always do (trained inits need them)."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown task family {self.family!r}; known: {', '.join(FAMILIES)}")
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.wandb not in ("offline", "online", "disabled"):
            raise ConfigError(f"wandb must be offline, online or disabled, got {self.wandb!r}")
        for key in ("hidden", "layers"):
            if not isinstance(self.model.get(key), int) or self.model[key] < 1:
                raise ConfigError(f"model.{key} must be a positive integer, got {self.model.get(key)!r}")
        dropout = self.model.get("dropout", 0.0)
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {dropout!r}")
        # Validate the method and fill in its defaults, so equal configs hash equally.
        self.compress = registry.make_config(self.method, self.compress).to_dict()

    @property
    def method_config(self) -> registry.CompressorConfig:
        return registry.make_config(self.method, self.compress)

    def identity(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "family": self.family,
            "dataset": self.dataset,
            "model": self.model,
            "train": dataclasses.asdict(self.train),
            "method": self.method,
            "compress": self.compress,
            "seed": self.seed,
        }

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run_id"] = self.run_id
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = {k: v for k, v in d.items() if k != "run_id"}
        d["train"] = TrainConfig(**d["train"])
        return cls(**d)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


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


_TOP = {"seed", "profile", "data_dir", "results_dir", "wandb", "study", "trial", "method", "checkpoint"}
_TRAIN = {f.name for f in dataclasses.fields(TrainConfig)}


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
    """
    spec = read_yaml(preset)
    name = spec.get("name") or Path(preset).stem
    sets = dict(sets or {})
    top: dict[str, Any] = {}
    method = sets.pop("method", method)
    if not isinstance(method, str):
        raise ConfigError(f"method must be a name, got {method!r}")
    compress: dict[str, Any] = dict(spec.get("compress") or {})
    if factor is not None:
        compress["factor"] = factor
    model = dict(spec.get("model") or {})
    train = dict(spec.get("train") or {})
    method_keys = set(registry.config_fields(method))
    for key, value in sets.items():
        section, _, sub = key.partition(".")
        if sub:
            target = {"train": train, "model": model, "compress": compress}.get(section)
            if target is None:
                raise ConfigError(
                    f"unknown override {key!r}; dotted keys start with train., model. or compress."
                )
            target[sub] = value
        elif key in _TOP:
            top[key] = value
        elif key in method_keys:
            compress[key] = value
        elif key in _TRAIN:
            train[key] = value
        elif key in model:
            model[key] = value
        else:
            raise ConfigError(
                f"unknown override {key!r}; use one of {', '.join(sorted(_TOP | method_keys | _TRAIN))} "
                "or a dotted key (model.hidden=...)"
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
        overlay = {k: v for k, v in profiles[profile].items() if f"train.{k}" not in sets and k not in sets}
        train = {**train, **overlay}
    unknown = set(train) - _TRAIN
    if unknown:
        raise ConfigError(f"{preset}: unknown train setting(s) {', '.join(sorted(unknown))}")
    if "dataset" not in spec:
        raise ConfigError(f"{preset} must name a dataset (ptb, wikitext2 or {{path: <folder>}})")
    try:
        return RunConfig(
            task=name,
            family=spec.get("family", "lm"),
            dataset=spec["dataset"],
            model=model,
            train=TrainConfig(**train),
            method=method,
            compress=compress,
            **{**top, "profile": profile},
        )
    except TypeError as e:
        raise ConfigError(f"{preset}: {e}") from None
