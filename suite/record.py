"""The record of a run: its schema (what tables, figures and reuse trust), how it is read and written."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import DataError
from .files import write_text

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
    data_fingerprint: dict = field(default_factory=dict)
    """sha256 of each data file the run read, by name (``train``: a split's file; a folder of files hashes as one;
    a hub dataset is named by its id): a finished run is reused only on the same data (``store.find``). Empty in a
    record made before it was kept (judged by results/published/data.json) and for a family that names no files."""
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
    def family(self) -> str:
        """The task family; a config that names none is of the default family (``RunConfig.family``)."""
        from .config import RunConfig

        return self.config.get("family") or RunConfig.family

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
        if problem := _shape_problem(data):
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
    "data_fingerprint": dict,
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
