"""Tables from records: one pandas frame of all runs, aggregated over seeds per configuration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .compressors import registry
from .compressors.accounting import format_cf
from .compressors.registry import LSTM_TARGETS
from .errors import ConfigError
from .track import Record, load_records, write_json


def _config_id(config: dict, keys: tuple[str, ...]) -> str:
    blob = json.dumps({k: config.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _cell(value: Any) -> Any:
    """A setting as one table cell: lists joined by commas (targets)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def runs_frame(records: list[Record]) -> pd.DataFrame:
    """One row per run: identity, every method setting (factor, targets, cmr, ...), metrics, accounting, timings.

    ``config_id`` names a run's configuration without its seed (the seeds of one configuration share it);
    ``setup_id`` names the task data, model and training alone (runs comparable in one figure share it).
    """
    rows = []
    for r in records:
        acc = r.accounting or {}
        compress = r.config.get("compress", {})
        rows.append(
            {
                "task": r.task,
                "method": r.method,
                "factor": float(compress.get("factor", 1.0)),
                **{k: _cell(v) for k, v in compress.items() if k != "factor"},
                "seed": r.seed,
                "run_id": r.run_id,
                "config_id": _config_id(
                    r.config, ("task", "dataset", "model", "train", "method", "compress")
                ),
                "setup_id": _config_id(r.config, ("task", "dataset", "model", "train")),
                "status": r.status,
                "reason": r.reason,
                "metric": r.metric,
                "value": r.value,
                **{k: v for k, v in r.final.items() if k != r.metric},
                "cf": acc.get("cf"),
                "cf_values": acc.get("cf_values"),
                "model_cf": acc.get("model_cf"),
                "stored": acc.get("model_stored"),
                "targeted_stored": acc.get("targeted_stored"),
                "epochs": len(r.epochs),
                "wall_s": r.timings.get("wall_s"),
                "tokens_per_s": r.timings.get("train_tokens_per_s"),
                "study": r.config.get("study"),
                "trial": r.config.get("trial"),
                "profile": r.config.get("profile"),
            }
        )
    return pd.DataFrame(rows)


def epochs_frame(records: list[Record], base: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per epoch of every run: the run's identity and settings, then whatever the epoch logged
    (lr, losses, perplexities, and diagnostics such as the sparsity of a doped matrix). ``base``: the runs_frame
    of ``records`` when the caller has it."""
    base = runs_frame(records) if base is None else base
    rows = []
    for r, (_, run) in zip(records, base.iterrows()):
        ident = {k: run[k] for k in base.columns if k not in ("value", "epochs", "wall_s", "tokens_per_s")}
        rows.extend({**ident, **row} for row in r.epochs)
    return pd.DataFrame(rows)


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); NaN with one seed."""
    n = values.count()
    if n < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


#: Columns of runs_frame that are not settings of the configuration.
_RESULTS = {
    "seed",
    "run_id",
    "status",
    "reason",
    "metric",
    "value",
    "cf",
    "cf_values",
    "model_cf",
    "stored",
    "targeted_stored",
    "epochs",
    "wall_s",
    "tokens_per_s",
    "study",
    "trial",
}


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, 95% CI and n over seeds of the headline metric, one row per configuration (``config_id``):
    task, profile, method, asked CF and every other method setting, with the achieved CFs and sizes."""
    if frame.empty:
        return frame
    frame = frame[frame["status"] == "ok"] if "status" in frame else frame
    finals = [c for c in frame.columns if c.startswith(("val_", "test_"))]
    settings = [c for c in frame.columns if c not in _RESULTS and c != "config_id" and c not in finals]
    g = frame.groupby("config_id", dropna=False)
    out = g.agg(
        **{c: (c, "first") for c in settings},
        metric=("metric", "first"),
        mean=("value", "mean"),
        std=("value", "std"),
        ci95=("value", ci95),
        n=("value", "count"),
        cf=("cf", "mean"),
        cf_values=("cf_values", "mean"),
        model_cf=("model_cf", "mean"),
        targeted_stored=("targeted_stored", "mean"),
        **{c: (c, "mean") for c in finals},
    ).reset_index()
    dense_first = out["method"].ne("dense")
    order = ["task", "profile", "_o", "method", "factor"]
    return out.assign(_o=dense_first).sort_values(order).drop(columns="_o").reset_index(drop=True)


def table(results_dir: str | Path = "results") -> pd.DataFrame:
    return summary(runs_frame(load_records(results_dir)))


def _defaults(method: str) -> dict[str, Any]:
    try:
        config = registry.get(method).config
    except ConfigError:  # a method of an old record that is no longer registered
        return {}
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _cell(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _cell(f.default_factory())
    return out


def settings_text(row: pd.Series) -> str:
    """The method settings of a row that differ from the method's defaults (``cmr=0.5 init=trained``)."""
    defaults = _defaults(row["method"])
    diffs = []
    for key, default in defaults.items():
        value = row.get(key)
        if key == "factor" or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if value != default:
            diffs.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(diffs) or "-"


def format_table(df: pd.DataFrame) -> str:
    """Readable text: metric as mean +- std, CFs to two decimals rounded down, non-default settings."""
    if df.empty:
        return "no finished runs under results/runs yet (run `suite train ...` first)"
    show = pd.DataFrame(
        {
            "task": df["task"],
            "profile": df["profile"],
            "method": df["method"],
            "settings": [settings_text(row) for _, row in df.iterrows()],
            "CF asked": df["factor"].map(lambda x: f"{x:.3g}"),
            "CF": df["cf"].map(format_cf),
            "CF values": df["cf_values"].map(format_cf),
            "model CF": df["model_cf"].map(format_cf),
            "metric": df["metric"],
            "mean +- std": [
                f"{m:.2f} +- {s:.2f}" if np.isfinite(s) else f"{m:.2f}" for m, s in zip(df["mean"], df["std"])
            ],
            "ci95": df["ci95"].map(lambda x: f"{x:.2f}" if np.isfinite(x) else "-"),
            "n": df["n"],
        }
    )
    return show.to_string(index=False)


def trials_frame(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every sweep trial, from the tables the sweeps export (results/sweeps/<name>/<study>.csv)."""
    frames = [pd.read_csv(p) for p in sorted(Path(results_dir).glob("sweeps/*/*.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def headline(runs: pd.DataFrame, summ: pd.DataFrame, trials: pd.DataFrame) -> dict:
    """Small JSON for DVC metrics: per task, the dense metric and each method's best mean at each whole-number
    asked CF (a grid's; LSTM targets); per study, trial counts, epochs trained and the best first objective."""
    out: dict[str, Any] = {}
    default = ",".join(LSTM_TARGETS)
    if not summ.empty:
        lstm = summ[summ["targets"].fillna(default) == default] if "targets" in summ else summ
        # Searched CFs (2.0006...) would each add a column.
        lstm = lstm[lstm["factor"] == lstm["factor"].round()]
        for (task, method, factor), rows in lstm.groupby(["task", "method", "factor"]):
            key = "metric" if method == "dense" else f"cf{factor:g}"
            out.setdefault(task, {}).setdefault(method, {})[key] = round(float(rows["mean"].min()), 4)
    if not trials.empty:
        for study, rows in trials.groupby("study"):
            done = rows[rows["state"] == "complete"]
            best = done["value"].min() if rows["direction"].iloc[0] == "minimize" else done["value"].max()
            out.setdefault("sweeps", {})[study] = {
                "complete": int(len(done)),
                "pruned": int((rows["state"] == "pruned").sum()),
                "epochs": int(rows["epochs"].fillna(0).sum()) if "epochs" in rows else 0,
                f"best_{rows['objective'].iloc[0]}": round(float(best), 4) if len(done) else None,
            }
    return out


def write_tables(
    results_dir: str | Path = "results", out: str | Path = "results/tables", metrics: str | Path | None = None
) -> tuple[list[Path], pd.DataFrame]:
    """runs.csv, summary.csv (mean, std, 95% CI over seeds), epochs.csv and trials.csv; optionally metrics JSON.
    Returns the files written and the summary (what ``table`` returns)."""
    records = load_records(results_dir, status=None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = runs_frame(records)
    summ = summary(runs)
    trials = trials_frame(results_dir)
    tables = {"runs": runs, "summary": summ, "epochs": epochs_frame(records, runs), "trials": trials}
    written = []
    for name, df in tables.items():
        path = out / f"{name}.csv"
        df.to_csv(path, index=False)
        written.append(path)
    if metrics is not None:
        write_json(Path(metrics), headline(runs, summ, trials))
        written.append(Path(metrics))
    return written, summ
