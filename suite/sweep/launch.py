"""What ``suite sweep`` does around the study: the command line of one worker process, the status shown by
``--status`` (with the one study that exists when the asked profile has none), and the command's exit code."""

from __future__ import annotations

import argparse
import sys

import optuna

from ..config import read_yaml
from ..errors import ConfigError
from . import storage as st
from .runner import status
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


def status_text(spec_path: str, spec: SweepSpec, storage: str | None, sets: dict, chosen: bool) -> str:
    """The study's status; when the profile was not ``chosen`` (no --profile) and the default's study does not
    exist, the one study of the spec that does (a user who ran the smoke profile asks for its status as they ran
    it), with a note saying so."""
    try:
        return status(spec, storage)
    except ConfigError:
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
