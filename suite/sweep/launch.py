"""What ``suite sweep`` does around the study: the command line of one worker process, the status shown by
``--status`` (with the one study that exists when the asked profile has none), and the command's exit code."""

from __future__ import annotations

import argparse
import json
import sys

import optuna

from ..config import read_yaml
from ..errors import ConfigError, DataError
from ..publish import find_published, published_data
from ..store import data_fingerprint
from . import storage as st
from .build import make_pruner
from .runner import race_epochs, status
from .spec import SweepSpec, load_spec


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The arguments of ``suite`` that run one worker of the sweep of ``suite sweep``'s parsed ``args``: the
    options the command was given, so that every worker resolves the same spec, storage and settings
    (``runner._spawn`` adds ``--as-worker``)."""
    argv = ["sweep", args.spec]
    for name in ("storage", "profile", "params", "results", "threads", "store"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    for item in args.set or []:
        argv += ["--set", item]
    return argv


def published_text(spec: SweepSpec) -> str | None:
    """For a full-scale grid: which of its runs (points and seeds) have a current published record, finished or
    stopped by its rate race, and which do not yet: what the published list is missing, with or without a study
    here. A rate that lost its race on the first seed runs no other seed: those are not counted. None for a
    smoke profile or a sampled search (no list of runs to publish)."""
    if spec.profile != "paper" or spec.sampler.name != "grid":
        return None
    race = (
        make_pruner(spec) if race_epochs(spec) is not None else None
    )  # its raced setting and configurations
    param = race.param if race else None
    found, lost, missing, groups, datas = 0, 0, [], {}, {}
    for point in spec.grid()[: spec.n_trials]:
        params = {"method": spec.methods[0], **point}
        key = json.dumps(race.group(params) if race else params, sort_keys=True)
        group = groups.setdefault(key, set())
        for seed in spec.seeds:
            cfg = spec.run_config(params, seed)
            if cfg.task not in datas:
                datas[cfg.task] = _data(cfg)
            data = datas[cfg.task]
            if data is not None and find_published(cfg, data) is not None:
                found += 1
                group.add("ok")
            elif param and data is not None and find_published(cfg, data, status="pruned") is not None:
                lost += 1
                break  # its other seeds are not run
            else:
                missing.append(point if len(spec.seeds) == 1 else {**point, "seed": seed})
                group.add("missing")
    done = sum(1 for kinds in groups.values() if kinds == {"ok"})
    stopped = f", stopped by their rate race {lost}" if param else ""
    raced = f" (each {param} finished or stopped by its race)" if param else ""
    lines = [
        f"published ({spec.name}, current records): runs finished {found}{stopped}, missing {len(missing)}; "
        f"configurations complete {done} of {len(groups)}{raced}"
    ]
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        lines.append(f"  missing: {', '.join(map(str, missing[:8]))}{more}")
    return "\n".join(lines)


def _data(cfg) -> dict[str, str] | None:
    """The data a task's published records were made with, else the data as it is here; None: neither known."""
    if (data := published_data(cfg.task, cfg.results_dir)) is not None:
        return data
    try:
        return data_fingerprint(cfg)
    except DataError:
        return None


def status_text(spec_path: str, spec: SweepSpec, storage: str | None, sets: dict, chosen: bool) -> str:
    """What is published of a full-scale grid (``published_text``), then the study's status; when the profile was
    not ``chosen`` (no --profile) and the default's study does not exist, the one study of the spec that does (a
    user who ran the smoke profile asks for its status as they ran it), with a note saying so. With no study at
    all, the published part alone and a note, for a spec whose runs are published."""
    published = published_text(spec)
    try:
        text = _study_text(spec_path, spec, storage, sets, chosen)
    except st.NoStudy as e:
        if published is None:
            raise
        return f"{published}\n{e}; `suite sweep {spec_path}` runs what is missing"
    return text if published is None else f"{published}\n{text}"


def _study_text(spec_path: str, spec: SweepSpec, storage: str | None, sets: dict, chosen: bool) -> str:
    try:
        return status(spec, storage)
    except st.NoStudy:
        if chosen or storage is not None:
            raise
        for other in ["paper", *(read_yaml(spec_path).get("profiles") or {})]:
            if other == spec.profile:
                continue
            try:
                text = status(load_spec(spec_path, other, sets), None)
            except ConfigError:
                continue
            print(
                f"note: no {spec.profile} study yet; this is the {other} one (--profile to choose)",
                file=sys.stderr,
            )
            return text
        raise


def exit_code(study: optuna.Study) -> int:
    """0 when every trial has its outcome (a retried trial counts by its retry); 1, saying so, while failed
    trials wait for the next run of the sweep to retry them."""
    if left := st.progress(study).to_retry:
        print(
            f"{left} trial(s) failed for a reason their settings do not decide (listed above as to retry); "
            "rerun the command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0
