"""Runs that survive interruptions: a checkpoint after every epoch, and the same command resumes from it.

A run's checkpoint lives in results/checkpoints/<run-id>/ (outside the run folder, which is built in staging and
moved into place only when the run ends; outside git): Lightning's ``last.ckpt`` (model with its masks, optimizer,
lr scheduler, loop counters, callbacks' states) and the run's CSV log. Lightning does not save the random number
generators, which co-matrix dropout, dropout and the data loaders draw from, so ``RunState`` does: a run killed
after epoch k (kill -9, Ctrl-C, the machine gone) and resumed gives the same numbers as one never interrupted.
``RunState`` also carries the wall time spent before each interruption and where each resume started, which the
record keeps. The folder is removed once the run has its record.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

LAST = "last.ckpt"
OWNER = "run.json"


def checkpoint_dir(results_dir: str | Path, run_key: str) -> Path:
    """Where the run of ``run_key`` (``RunConfig.run_key``: config and seed, not code) keeps its checkpoint and
    CSV log until it has its record."""
    return Path(results_dir) / "checkpoints" / run_key


def last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint to resume from, if an earlier process of this run left one."""
    path = folder / LAST
    return path if path.is_file() else None


def claim(folder: Path, cfg, provenance: dict, data: dict | None = None) -> None:
    """Say which code, on which data (its fingerprint), makes the checkpoints of ``folder`` (read by
    ``resumable`` when the run resumes)."""
    folder.mkdir(parents=True, exist_ok=True)
    owner = {
        "run_id": cfg.run_id,
        "code_version": cfg.code_version,
        "git_sha": provenance.get("git_sha"),
        "git_dirty": provenance.get("git_dirty"),
        "data": data,
    }
    (folder / OWNER).write_text(json.dumps(owner, indent=1) + "\n")


def resumable(folder: Path, cfg, echo=print, data: dict | None = None) -> Path | None:
    """The checkpoint this run resumes from: one made on the same data (fingerprint ``data``; a checkpoint of
    before that kept none is taken to be) by the same code version, or by a clean commit whose code behaves as the
    current code does for this run (``suite.behaviour``: a refactor between two sessions loses no training). A
    checkpoint of other data, or of code that behaves otherwise, is removed, and the run starts over."""
    last = last_checkpoint(folder)
    if last is None:
        return None
    try:
        owner = json.loads((folder / OWNER).read_text())
    except (OSError, ValueError):
        owner = {}
    if owner.get("data") and data is not None and owner["data"] != data:
        echo(f"note: the checkpoint in {folder} was made on other data; starting over")
        remove(folder)
        return None
    if owner.get("code_version") == cfg.code_version:
        return last
    sha = owner.get("git_sha")
    why = "it was made by code of unknown or uncommitted state"
    if sha and owner.get("git_dirty") is False:
        from .behaviour import current, difference, fingerprint_at, variant

        key = (cfg.family, cfg.method, variant(cfg.to_dict()))
        try:
            why = difference(fingerprint_at(sha, [key])[key], current([key])[key])
        except Exception as e:  # noqa: BLE001 - a commit that cannot be read or run: start over
            why = f"its code (commit {sha[:7]}) cannot be checked ({type(e).__name__}: {e})"
        if why is None:
            echo(
                f"note: resuming from a checkpoint of commit {sha[:7]}, whose code behaves as this code does"
            )
            return last
    echo(f"note: the checkpoint in {folder} is not resumed ({why}); starting over")
    remove(folder)
    return None


def epoch_checkpoints(folder: Path) -> ModelCheckpoint:
    """Lightning's checkpointing: after every epoch (validation included), ``last.ckpt`` in ``folder``."""
    return ModelCheckpoint(
        dirpath=folder,
        filename="epoch",
        save_top_k=1,
        save_last=True,
        every_n_epochs=1,
        enable_version_counter=False,
    )


def rng_states() -> dict[str, Any]:
    """The global random generators, in types a ``weights_only`` checkpoint load accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def csv_logger(folder: Path) -> pl.loggers.CSVLogger:
    """The run's CSV log: one part per process of the run (a resumed run appends a part), joined at the end."""
    parts = sorted((folder / "csv").glob("part*")) if (folder / "csv").is_dir() else []
    return pl.loggers.CSVLogger(str(folder), name="csv", version=f"part{len(parts)}")


def join_csv(folder: Path, out: Path) -> None:
    """The run's CSV parts as one ``out/metrics.csv`` (rows of every process, in order)."""
    parts = sorted((folder / "csv").glob("part*/metrics.csv"), key=lambda p: int(p.parent.name[4:]))
    if parts:
        out.mkdir(parents=True, exist_ok=True)
        pd.concat([pd.read_csv(p) for p in parts], ignore_index=True).to_csv(out / "metrics.csv", index=False)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class RunState(pl.Callback):
    """Saved with every checkpoint, restored on resume: the random generators (torch, numpy, Python), the wall
    time the run's earlier processes spent, and the epochs at which it was resumed."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        """When this process started the run (``time.perf_counter``)."""
        self.earlier_s = 0.0
        self.resumes: list[dict[str, Any]] = []
        self._rng: dict[str, Any] | None = None

    @property
    def wall_s(self) -> float:
        """Wall time of the whole run, every process of it."""
        return self.earlier_s + time.perf_counter() - self.t0

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states(), "wall_s": self.wall_s, "resumes": self.resumes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng = state["rng"]  # set at train start: Lightning draws from the generators while it restores
        self.earlier_s = float(state["wall_s"])
        self.resumes = list(state["resumes"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng is not None:  # restored from a checkpoint
            set_rng_states(self._rng)
            self._rng = None
            self.resumes.append(
                {
                    "epoch": trainer.current_epoch,
                    "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                }
            )
