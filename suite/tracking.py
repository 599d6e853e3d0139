"""What a run shows while and after it runs: its W&B run and its progress lines.

This module is the one definition of what a run logs to W&B (name, group, job type, tags, config, summary and
the per-epoch keys ``History`` adds); ``train`` logs it, and the dashboards (``suite.dashboard``) read the same
definition to know which keys the runs of some records have.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from .record import Record, format_metric

DEFAULT_PROJECT = "compression-suite"
"""The W&B project when WANDB_PROJECT names none."""
HISTORY_OWN = re.compile(r"lr|train_ppl|(cpu_)?seconds|train_\w+_per_s")
"""Per-epoch keys that ``History`` adds itself and logs under ``epoch/``; every other key of an epoch row is
logged by Lightning under its own name, with ``epoch`` (counted from 0) beside it."""


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (W&B config and CSV columns)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def wandb_config(record: Record) -> dict[str, Any]:
    """A run's flattened W&B config: its resolved configuration, the method's settings again at the top level
    (factor, cmr, ...: charts group and plot by them), the metric, the undotted learning rate and the CFs."""
    compress, acc = record.config.get("compress", {}), record.accounting or {}
    top = {k: v for k, v in compress.items() if k not in record.config}
    extra = {
        "metric": record.metric,
        "direction": record.direction,
        "lr": record.config.get("train", {}).get("lr"),  # undotted, so that W&B can group by it
        "achieved_cf": acc.get("cf"),
        "model_cf": acc.get("model_cf"),
    }
    return flatten({**top, **record.config, **extra})


def wandb_summary(record: Record) -> dict[str, Any]:
    """What a finished run writes to its W&B summary (flattened by ``close``)."""
    return {"final": record.final, "cf": record.accounting.get("cf"), "status": record.status}


def history_key(key: str) -> str:
    """The W&B history key of a per-epoch row's ``key``."""
    return f"epoch/{key}" if HISTORY_OWN.fullmatch(key) else key


@dataclass(frozen=True)
class Keys:
    """What the W&B runs of some records log: per-epoch history keys, summary keys and config keys."""

    history: frozenset[str]
    summary: frozenset[str]
    config: frozenset[str]


def logged_keys(records: list[Record]) -> Keys:
    """The keys the W&B runs of ``records`` log, from what the records hold."""
    history = {history_key(k) for r in records for row in r.epochs for k in row}
    summary = {k for r in records for k in flatten(wandb_summary(r))}
    config = {k for r in records for k in wandb_config(r)}
    # W&B keeps the last value of each history key in the summary.
    return Keys(frozenset(history), frozenset(summary | history), frozenset(config))


def start(record: Record, save_dir: Path):
    """The W&B run of ``record`` (its config's ``wandb``: offline unless ``online``) as a Lightning WandbLogger,
    or None when disabled or not installed. Name ``<method>-<run-id>``, group the study (else the task), job type
    the method, tags task, method, profile and study."""
    mode = record.config.get("wandb", "offline")
    if mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")  # read when wandb is imported
    os.environ.setdefault("WANDB_CONSOLE", "off")
    try:
        import wandb
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        print(
            "note: wandb is not installed; this run is tracked by its record and CSV log only",
            file=sys.stderr,
        )
        return None
    study, profile = record.config.get("study"), record.config.get("profile")
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        dir=str(save_dir),
        name=f"{record.method}-{record.run_id}",
        group=study or record.task,
        job_type=record.method,
        tags=[record.task, record.method, profile, *([study] if study else [])],
        config=wandb_config(record),
        mode="online" if mode == "online" else "offline",
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True),
    )
    return WandbLogger(experiment=run)


def close(logger, record: Record | None = None, exit_code: int = 0) -> None:
    """Finish the W&B run; with ``record``, first write its summary and the config values known only at the end
    (the final accounting: a doped D is annealed only then). Safe with none."""
    if logger is None:
        return
    try:
        run = logger.experiment
        if record is not None:
            acc = record.accounting
            run.config.update({"achieved_cf": acc["cf"], "model_cf": acc["model_cf"]}, allow_val_change=True)
            run.summary.update(flatten(wandb_summary(record)))
        run.finish(exit_code=exit_code)
    except Exception as e:  # a tracking view must never take the run down
        print(f"warning: could not close the W&B run ({type(e).__name__}: {e})", file=sys.stderr)


class History(pl.Callback):
    """Collects one row per epoch (lr, losses, perplexities, timings, whatever callbacks logged) and prints a
    progress line, so a long run shows where it is even when it is not attached to a terminal."""

    def __init__(
        self,
        label: str,
        epochs: int,
        train_units: int,
        echo: bool = True,
        metric: str = "val_ppl",
        unit: str = "tokens",
    ) -> None:
        self.label, self.epochs, self.train_units, self.echo = label, epochs, train_units, echo
        self.metric, self.unit = metric, unit
        self.rows: list[dict] = []
        self.train_seconds = 0.0
        self._train_end: float | None = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # a resumed run keeps its earlier epochs
        self.rows, self.train_seconds = list(state["rows"]), float(state["train_seconds"])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        self._train_end: float | None = None
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the epoch's rate, before the scheduler steps

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        # Validation runs inside the training epoch: training time stops when it starts.
        if self._train_end is None:
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        train_s = (self._train_end or now) - self._t0
        self.train_seconds += train_s
        row = {"epoch": trainer.current_epoch + 1, "lr": self._lr}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if self.metric.endswith("_ppl"):
            row["train_ppl"] = float(torch.tensor(row.get("train_loss", float("nan"))).clamp(max=700).exp())
        row["seconds"] = now - self._t0
        # This process's CPU time (all its threads): unlike the wall clock, it does not count time the run was
        # paused (SIGSTOP) or waiting for a core another process held.
        row["cpu_seconds"] = time.process_time() - self._cpu0
        rate = f"train_{self.unit}_per_s"
        row[rate] = self.train_units / train_s if train_s > 0 else None
        self.rows.append(row)
        # The loggers (W&B, CSV) get what Lightning does not log itself: lr, train ppl, epoch time, speed.
        extra = {
            k: v
            for k, v in row.items()
            if k not in trainer.callback_metrics and k != "epoch" and v is not None
        }
        for logger in trainer.loggers:
            logger.log_metrics({f"epoch/{k}": float(v) for k, v in extra.items()}, step=trainer.global_step)
        if self.echo:
            train = (
                f"train ppl {row['train_ppl']:.2f}"
                if "train_ppl" in row
                else f"train loss {row.get('train_loss', float('nan')):.4g}"
            )
            extra = (
                f" {self.metric.replace('_', ' ')} {format_metric(row[self.metric])}"
                if self.metric in row
                else ""
            )
            print(
                f"[{self.label}] epoch {row['epoch']}/{self.epochs} lr {row['lr']:.4g} {train}{extra} "
                f"({row['seconds']:.0f} s, {row[rate] or 0:,.0f} {self.unit}/s)",
                file=sys.stderr,
                flush=True,
            )
