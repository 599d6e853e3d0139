"""Tables from records: one pandas frame of all runs, aggregated over seeds per (task, method, CF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .track import Record, load_records


def runs_frame(records: list[Record]) -> pd.DataFrame:
    """One row per run."""
    rows = []
    for r in records:
        acc = r.accounting or {}
        rows.append(
            {
                "task": r.task,
                "method": r.method,
                "factor": float(r.config.get("compress", {}).get("factor", 1.0)),
                "seed": r.seed,
                "run_id": r.run_id,
                "status": r.status,
                "metric": r.metric,
                "value": r.value,
                "val_ppl": r.final.get("val_ppl"),
                "cf": acc.get("cf"),
                "cf_values": acc.get("cf_values"),
                "model_cf": acc.get("model_cf"),
                "stored": acc.get("model_stored"),
                "epochs": len(r.epochs),
                "wall_s": r.timings.get("wall_s"),
                "tokens_per_s": r.timings.get("train_tokens_per_s"),
                "study": r.config.get("study"),
                "profile": r.config.get("profile"),
            }
        )
    return pd.DataFrame(rows)


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); NaN with one seed."""
    n = values.count()
    if n < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, 95% CI and n over seeds of the headline metric, per (task, profile, method, asked CF)."""
    if frame.empty:
        return frame
    keys = ["task", "profile", "method", "factor"]
    g = frame.groupby(keys, dropna=False)
    out = g.agg(
        metric=("metric", "first"),
        mean=("value", "mean"),
        std=("value", "std"),
        ci95=("value", ci95),
        n=("value", "count"),
        cf=("cf", "mean"),
        cf_values=("cf_values", "mean"),
        model_cf=("model_cf", "mean"),
        val_ppl=("val_ppl", "mean"),
    ).reset_index()
    dense_first = out["method"].ne("dense")
    return (
        out.assign(_o=dense_first)
        .sort_values(["task", "profile", "_o", "method", "factor"])
        .drop(columns="_o")
    )


def table(results_dir: str | Path = "results") -> pd.DataFrame:
    return summary(runs_frame(load_records(results_dir)))


def format_table(df: pd.DataFrame) -> str:
    """Readable text: metric as mean +- std, CFs to two decimals."""
    if df.empty:
        return "no finished runs under results/runs yet (run `suite train ...` first)"
    show = pd.DataFrame(
        {
            "task": df["task"],
            "profile": df["profile"],
            "method": df["method"],
            "CF asked": df["factor"].map(lambda x: f"{x:g}"),
            "CF": df["cf"].map(lambda x: f"{x:.2f}"),
            "CF values": df["cf_values"].map(lambda x: f"{x:.2f}"),
            "model CF": df["model_cf"].map(lambda x: f"{x:.2f}"),
            "metric": df["metric"],
            "mean +- std": [
                f"{m:.2f} +- {s:.2f}" if np.isfinite(s) else f"{m:.2f}" for m, s in zip(df["mean"], df["std"])
            ],
            "ci95": df["ci95"].map(lambda x: f"{x:.2f}" if np.isfinite(x) else "-"),
            "n": df["n"],
        }
    )
    return show.to_string(index=False)
