"""Records (the source of truth), provenance, and the views of a run: Lightning CSV logs and W&B."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

STATUSES = ("ok", "failed", "pruned")


@dataclass
class Record:
    """One run: resolved config, per-epoch and final metrics, accounting, timings, provenance, status."""

    run_id: str
    task: str
    method: str
    seed: int
    status: str
    config: dict
    metric: str = "test_ppl"
    """Name of the headline metric in ``final`` (lower is better for perplexity)."""
    direction: str | None = None
    """``minimize`` or ``maximize``; None in records of before directions were recorded (perplexity)."""
    final: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)
    accounting: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    reason: str | None = None
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def value(self) -> float | None:
        return self.final.get(self.metric)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old record or the new one, never half of one."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Record:
        return cls.from_dict(json.loads(Path(path).read_text()))


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def run_dir(results_dir: str | Path, task: str, method: str, run_id: str) -> Path:
    return Path(results_dir) / "runs" / task / method / run_id


@contextlib.contextmanager
def run_lock(results_dir: str | Path, task: str, method: str, run_id: str) -> Iterator[None]:
    """Exclusive, per run-id, between processes on this machine; the system drops it when its holder dies."""
    path = run_dir(results_dir, task, method, run_id).with_name(f".{run_id}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Unlinked while held: a process already waiting gets the lock and then finds the record.
        path.unlink(missing_ok=True)
        os.close(fd)


def load_records(results_dir: str | Path, status: str | None = "ok") -> list[Record]:
    """Every record under results/runs (optionally only those with ``status``)."""
    out = []
    for path in sorted(Path(results_dir).glob("runs/*/*/*/record.json")):
        if path.parent.name.startswith("."):  # a staging folder left by a killed run
            continue
        try:
            rec = Record.load(path)
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
        if status is None or rec.status == status:
            out.append(rec)
    return out


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=Path.cwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Where and with what a run was made: git sha and dirty flag, package versions, device."""
    versions = {}
    for pkg in ("suite", "torch", "lightning", "numpy", "datasets", "optuna", "wandb"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    sha = _git("rev-parse", "HEAD")
    dirty = None if sha is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    cuda = torch.cuda.is_available()
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
    }


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


def wandb_logger(
    mode: str, save_dir: Path, group: str, job_type: str, name: str, config: dict, tags: list[str]
):
    """A Lightning WandbLogger (offline unless ``mode == 'online'``), or None when disabled or not installed."""
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
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "compression-suite"),
        dir=str(save_dir),
        name=name,
        group=group,
        job_type=job_type,
        tags=tags,
        config=flatten(config),
        mode="online" if mode == "online" else "offline",
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True),
    )
    return WandbLogger(experiment=run)


def close_wandb(logger, summary: dict | None = None, exit_code: int = 0, config: dict | None = None) -> None:
    """Write the summary (and config values known only at the end), finish the W&B run; safe with none."""
    if logger is None:
        return
    try:
        run = logger.experiment
        if config:
            run.config.update(config, allow_val_change=True)
        if summary:
            run.summary.update(flatten(summary))
        run.finish(exit_code=exit_code)
    except Exception as e:  # a tracking view must never take the run down
        print(f"warning: could not close the W&B run ({type(e).__name__}: {e})", file=sys.stderr)


class History(pl.Callback):
    """Collects one row per epoch (lr, losses, perplexities, timings, whatever callbacks logged) and prints a
    progress line, so a long run shows where it is even when it is not attached to a terminal."""

    def __init__(self, label: str, epochs: int, train_tokens: int, echo: bool = True) -> None:
        self.label, self.epochs, self.train_tokens, self.echo = label, epochs, train_tokens, echo
        self.rows: list[dict] = []
        self.train_seconds = 0.0
        self._train_end: float | None = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
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
        for k, v in trainer.callback_metrics.items():
            row[k] = float(v)
        row["train_ppl"] = float(torch.tensor(row.get("train_loss", float("nan"))).clamp(max=700).exp())
        row["seconds"] = now - self._t0
        row["train_tokens_per_s"] = self.train_tokens / train_s if train_s > 0 else None
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
            extra = f" val ppl {row['val_ppl']:.2f}" if "val_ppl" in row else ""
            print(
                f"[{self.label}] epoch {row['epoch']}/{self.epochs} lr {row['lr']:.4g} train ppl "
                f"{row['train_ppl']:.2f}{extra} ({row['seconds']:.0f} s, {row['train_tokens_per_s'] or 0:,.0f} tok/s)",
                file=sys.stderr,
                flush=True,
            )
