"""Records (the source of truth), provenance, and the views of a run: Lightning CSV logs and W&B."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import math
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

from .errors import DataError
from .files import ASIDE, aside_folders, make_dir, restore_aside, write_text

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
    metric: str = "ppl"
    """The task's metric: ``final`` holds ``val_<metric>`` (selection) and ``test_<metric>`` (reported)."""
    direction: str = "minimize"
    """``minimize`` (perplexity, word error rate) or ``maximize`` (BLEU)."""
    code_version: str | None = None
    """Version of the code that decided the result (``suite.version``); part of the run-id."""
    final: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)
    accounting: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    metric_detail: dict = field(default_factory=dict)
    """How the metric was computed, where a family says (a sacrebleu signature)."""
    reason: str | None = None
    published: dict = field(default_factory=dict)
    """For a published record (results/published): the command that made it and the behaviour fingerprint of
    its code (``suite.publish``)."""
    resumed: list[dict] = field(default_factory=list)
    """Where the run was resumed after an interruption: the epoch it went on from, and when."""
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def val(self) -> float | None:
        """The validation metric: what every choice is made on."""
        return self.final.get(f"val_{self.metric}")

    @property
    def test(self) -> float | None:
        """The test metric: what is reported for what was chosen."""
        return self.final.get(f"test_{self.metric}")

    def final_problem(self) -> str | None:
        """Why the final metrics are not those of a finished run (a metric missing, NaN or infinite), or None."""
        for split, value in (("val", self.val), ("test", self.test)):
            if value is None or not math.isfinite(value):
                return f"non-finite {split} metric ({split}_{self.metric} = {value})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if str(d.get("metric", "")).startswith(("test_", "val_")):  # records of before metric names were bare
            d["metric"] = d["metric"].partition("_")[2]
        return cls(**d)

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old record or the new one, never half of one."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Record:
        """Read a record; a file that is not one (truncated, corrupt, of another shape) is a DataError naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise DataError(f"cannot read record {path} ({e.strerror or type(e).__name__})") from None
        except UnicodeDecodeError:
            raise DataError(f"record {path} is not text (corrupt)") from None
        except json.JSONDecodeError as e:
            raise DataError(f"record {path} is not valid JSON (truncated or corrupt: {e.msg})") from None
        problem = _shape_problem(data)
        if problem:
            raise DataError(f"record {path} is not a run record ({problem})")
        try:
            rec = cls.from_dict(data)
        except TypeError as e:
            raise DataError(f"record {path} is not a run record ({e})") from None
        if rec.status == "ok" and (problem := rec.final_problem()):
            rec.status, rec.reason = "failed", problem  # a NaN metric is no finished seed
        return rec


#: What a record must hold, and of which type, for tables and re-use to trust it.
_FIELDS = {
    "run_id": str,
    "task": str,
    "method": str,
    "seed": int,
    "status": str,
    "config": dict,
    "final": dict,
    "epochs": list,
    "accounting": dict,
    "timings": dict,
}


def _shape_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for key, kind in _FIELDS.items():
        if key not in data and key in ("run_id", "task", "method", "seed", "status", "config"):
            return f"no {key}"
        if key in data and not isinstance(data[key], kind):
            return f"{key} is a {type(data[key]).__name__}, not a {kind.__name__}"
    if data["status"] not in STATUSES:
        return f"status {data['status']!r} is none of {', '.join(STATUSES)}"
    for key in ("train", "compress", "model"):
        if not isinstance(data["config"].get(key, {}), dict):
            return f"config.{key} is not a mapping"
    if not all(isinstance(row, dict) for row in data.get("epochs", [])):
        return "epochs holds something other than one mapping per epoch"
    numbers = [*data.get("final", {}).values(), *data.get("accounting", {}).values()]
    numbers = [v for v in numbers if not isinstance(v, (list, dict))]  # per-matrix tables are lists
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in numbers):
        return "a final metric or a count of the accounting is not a number"
    if data["status"] == "ok" and not data.get("final"):
        return "a finished run without its final metrics"
    return None


def format_metric(value: float | None) -> str:
    """A metric for people: two decimals, four below 1 (a word error rate of 0.0041 is not 0.00)."""
    if value is None or not isinstance(value, (int, float)) or value != value:
        return "-"
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def write_json(path: Path, data: Any, what: str = "output file") -> None:
    """Write atomically (a temporary file renamed over ``path``)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n"
    write_text(path, text, what)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def run_dir(results_dir: str | Path, task: str, method: str, run_id: str, store: str | None = None) -> Path:
    """results/runs/[<store>/]<task>/<method>/<run-id>: a store is the folder of one pipeline stage's runs."""
    root = Path(results_dir) / "runs"
    return (root / store if store else root) / task / method / run_id


def locate(
    results_dir: str | Path, task: str, method: str, run_id: str, store: str | None = None
) -> Path | None:
    """The folder holding this run's record: its own store first, then any store under results/runs."""
    own = record_path(run_dir(results_dir, task, method, run_id, store))
    if own.is_file():
        return own.parent
    for path in sorted((Path(results_dir) / "runs").glob(f"**/{task}/{method}/{run_id}/record.json")):
        if not any(part.startswith(".") for part in path.parent.relative_to(results_dir).parts):
            return path.parent
    return None


def record_path(folder: Path) -> Path:
    """The record of run folder ``folder``; where a replacement of the folder was killed half-way, the record of
    the run it was replacing, which waits aside until the next run of that id puts it back."""
    path = folder / "record.json"
    if not folder.exists():
        for aside in aside_folders(folder):
            if (aside / "record.json").is_file():
                return aside / "record.json"
    return path


@contextlib.contextmanager
def run_lock(
    results_dir: str | Path, task: str, method: str, run_id: str, store: str | None = None
) -> Iterator[None]:
    """Exclusive, per run-id, between processes on this machine; the system drops it when its holder dies.
    Taking it repairs what a killed replacement of the run's folder left (``files.restore_aside``)."""
    final = run_dir(results_dir, task, method, run_id, store)
    path = final.with_name(f".{run_id}.lock")
    for attempt in range(3):
        make_dir(path.parent, "results folder")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            break
        except FileNotFoundError:  # a failing run removed the (then empty) folder just now
            if attempt == 2:
                raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        restore_aside(final)
        yield
    finally:
        # Unlinked while held: a process already waiting gets the lock and then finds the record.
        path.unlink(missing_ok=True)
        os.close(fd)


def load_records(results_dir: str | Path, status: str | None = "ok", echo: bool = True) -> list[Record]:
    """Every record under results/runs, in any store, and under results/published (optionally only those with ``status``); a file that is not
    a record is left out with a note on stderr naming it (``echo``)."""
    root = Path(results_dir)
    folders = set()
    for path in [*root.glob("runs/**/record.json"), *root.glob("published/**/record.json")]:
        parts = path.parent.relative_to(root).parts
        if not any(part.startswith(".") for part in parts):
            folders.add(path.parent)
        elif ASIDE in parts[-1] and not any(part.startswith(".") for part in parts[:-1]):
            # A run whose replacement was killed half-way waits aside (a staging folder is left out).
            folders.add(path.parent.with_name(parts[-1][1:].rpartition(ASIDE)[0]))
    out = []
    for folder in sorted(folders):
        path = record_path(folder)
        try:
            rec = Record.load(path)
        except DataError as e:
            if echo:
                print(f"note: {e}; left out", file=sys.stderr)
            continue
        if status is None or rec.status == status:
            out.append(rec)
    return out


PACKAGE = Path(__file__).resolve().parent
"""The package's folder; the checkout that holds it is its parent."""


def _git(*args: str) -> str | None:
    """git in the checkout that holds this package (wherever the command was started from)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=PACKAGE.parent)
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
    # Uncommitted changes, or a file of the package git does not know yet (a new method module decides results).
    dirty = None
    if sha is not None:
        dirty = bool(
            _git("status", "--porcelain", "--untracked-files=no")
            or _git("ls-files", "--others", "--exclude-standard", "--", PACKAGE.name)
        )
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        **device_info(device),
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
    }


def device_info(device: torch.device) -> dict[str, str]:
    """The device a run computes on, in this machine's numbering: ``cuda:1`` or ``cpu`` (``device``), and its
    name (``device_name``). A process that sees some GPUs only (a sweep worker, a SLURM job) numbers them from
    0; CUDA_VISIBLE_DEVICES says which of the machine's they are."""
    if device.type != "cuda":
        return {"device": device.type, "device_name": platform.processor() or platform.machine()}
    index = device.index or 0
    visible = [t.strip() for t in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if t.strip()]
    which = visible[index] if index < len(visible) else str(index)
    return {"device": f"cuda:{which}", "device_name": torch.cuda.get_device_name(index)}


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
        if self.metric.endswith("_ppl"):
            row["train_ppl"] = float(torch.tensor(row.get("train_loss", float("nan"))).clamp(max=700).exp())
        row["seconds"] = now - self._t0
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
