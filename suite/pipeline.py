"""The pipeline's parameters (params.yaml) and its first two stages: prepare data, train dense baselines.

params.yaml chooses a profile (``smoke``, the CPU default, or ``paper``); each profile says how many seeds a
baseline gets and which fixed settings every run of the pipeline shares (``set``, e.g. a shorter smoke run).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PROFILES, SEEDS, load_run, read_yaml
from .errors import ConfigError, SuiteError
from .files import check_file
from .record import write_json
from .settings import Settings, check, setting

PARAMS = "params.yaml"


@dataclass
class Params(Settings):
    """The resolved parameters of one profile."""

    profile: str = setting("smoke", choices=PROFILES)
    workers: int = setting(1, ge=1)
    """Sweep workers per sweep stage (processes on this machine)."""
    threads: int | None = setting(None, ge=1)
    """Torch threads per process (each sweep worker); None: torch's default, one per core. Small recurrent models
    gain little from a second thread, and on a machine shared with other jobs threads that wait on each other at
    every time step can be many times slower than one."""
    seeds: list[int] = setting(factory=lambda: [0], **SEEDS)
    """Seeds of each dense baseline."""
    set: dict[str, Any] = field(default_factory=dict)
    """Fixed settings of every run in the pipeline (on top of each preset's profile)."""
    figures: dict[str, Any] = field(default_factory=dict)

    def where(self, name: str) -> str:
        return f"profiles.{self.profile}.{name}" if name in ("seeds", "set") else name


def load_params(path: str | Path | None = None, profile: str | None = None) -> Params:
    """Read params.yaml (``path``, default ./params.yaml; missing file: the defaults) for ``profile`` (default:
    the file's ``profile``)."""
    path = Path(path or PARAMS)
    raw = read_yaml(path) if path.is_file() else {}
    profile = profile or raw.get("profile", "smoke")
    chosen = (raw.get("profiles") or {}).get(profile) or {}
    if not isinstance(chosen, dict):
        raise ConfigError(f"{path}: profiles.{profile} must be a mapping")
    if unknown := set(chosen) - {"seeds", "set"}:
        raise ConfigError(
            f"{path}: profiles.{profile} has unknown key(s) {', '.join(sorted(unknown))} (seeds, set)"
        )
    try:
        return Params(
            profile=profile,
            workers=raw.get("workers", 1),
            threads=raw.get("threads"),
            seeds=chosen.get("seeds", [0]),
            set=chosen.get("set") or {},
            figures=raw.get("figures") or {},
        )
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def use_threads(threads: int | None) -> None:
    """Torch threads of this process and of the worker processes it starts."""
    if threads is None:
        return
    check("threads", threads, int, ge=1)
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def prepare(dataset: str, out: str | Path, data_dir: str | None = None) -> tuple[Path, dict]:
    """Load (and cache) a dataset with its task family's defaults and write what it is (origin, sizes) to
    ``out``/<dataset>.json; that file and what it holds."""
    from . import tasks
    from .data.sources import fingerprint

    owners = [tasks.get(name) for name in tasks.available() if dataset in tasks.get(name).datasets]
    if not owners:
        known = sorted(d for name in tasks.available() for d in tasks.get(name).datasets)
        raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(known)}")
    family = owners[0]
    path = check_file(Path(out) / f"{dataset}.json", "description file")
    t0 = time.perf_counter()
    data = family.load_data(dataset, data_dir, family.train_settings())
    info = {"dataset": dataset, "family": family.name, **data.describe(), "seconds": time.perf_counter() - t0}
    # The sha256 of its files: a change of the data changes this file, and DVC reruns the stages after it.
    info["fingerprint"] = fingerprint(family.data_files(dataset, data_dir))
    write_json(path, info)
    return path, info


def baselines(
    preset: str | Path, params: Params, out: str | Path, store: str | None = None
) -> tuple[Path, dict]:
    """Train (or find) the dense runs of a task, one per seed, into ``store`` (a folder of results/runs), and
    list them in ``out``/<task>.json; that file and what it holds."""
    from .train import train

    sets = {**params.set, "profile": params.profile, "seeds": list(params.seeds), "store": store}
    configs = [load_run(preset, "dense", seed=seed, sets=sets) for seed in params.seeds]
    path = check_file(Path(out) / f"{configs[0].task}.json", "list of baselines")
    runs = []
    for seed, cfg in zip(params.seeds, configs):
        rec = train(cfg, progress_bar=False)
        if rec.status != "ok":
            raise SuiteError(
                f"dense baseline {rec.run_id} of {cfg.task} (seed {seed}) {rec.status}: {rec.reason}"
            )
        runs.append(
            {
                "run_id": rec.run_id,
                "seed": seed,
                **rec.final,
                "wall_s": rec.timings.get("wall_s"),
                "metric": rec.metric,
            }
        )
    info = {"task": configs[0].task, "profile": params.profile, "runs": runs}
    write_json(path, info)
    return path, info
