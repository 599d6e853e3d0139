"""Tables from records: one pandas frame of all runs, aggregated over seeds per configuration, and the setting
each method gets at each CF, chosen on the validation metric.

The rules every table and figure follows (DESIGN.md, "Selection and identity"):
- Choices (the best setting per method and CF, Pareto points, headline values) are made on the validation
  metric, in the direction of the task's metric; the test metric is reported for what was chosen.
- A configuration is its task, data, model, training, method settings, profile and code version: different
  budgets or profiles never share a row, and the setting chosen for a method is chosen among runs of one
  ``setup`` (the same data, model, profile and training budget; only the learning rate may differ).
- Records of older code (their ``code_version`` is not the current one; for a published record, code whose
  behaviour fingerprint differs, ``suite.behaviour``) are left out, and the report says how many;
  ``stale=True`` shows them in rows of their own, marked, with what changed.
- A configuration says how many seeds were asked (n_asked), finished (n_ok), failed and were pruned; a mean
  over fewer seeds than asked is marked ``partial``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .compressors.registry import LSTM_TARGETS
from .errors import ConfigError
from .files import atomic
from .record import Record, write_json
from .store import load_records
from .tasks.base import DEFAULT_PRECISION, train_identity

DEFAULT_TARGETS = ",".join(LSTM_TARGETS)


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _cell(value: Any) -> Any:
    """A setting as one table cell: lists joined by commas (targets)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def budget_text(train: dict) -> str:
    """A run's training budget in one cell: epochs, the fractions of the data trained (tr) and evaluated (ev)
    on, and a precision other than fp32, e.g. ``2ep/tr0.05/ev0.1`` or ``13ep/bf16-mixed``."""
    epochs = train.get("epochs")
    frac = train.get("train_fraction", 1.0)
    ev = train.get("eval_fraction", 1.0)
    precision = train.get("precision", DEFAULT_PRECISION)
    return (
        f"{epochs}ep"
        + (f"/tr{frac:g}" if frac != 1 else "")
        + (f"/ev{ev:g}" if ev != 1 else "")
        + (f"/{precision}" if precision != DEFAULT_PRECISION else "")
    )


def is_stale(record: Record) -> bool:
    """Whether the record's code version is not the one a run of its family and method would have now (or its
    method is no longer registered)."""
    from .version import code_version

    try:
        return record.code_version is None or record.code_version != code_version(
            record.family, record.method
        )
    except ConfigError:
        return True


def runs_frame(records: list[Record]) -> pd.DataFrame:
    """One row per run: identity, every method setting (factor, targets, ...), the learning rate, val and
    test metric, accounting, timings.

    ``config_id`` names a configuration without its seed (the seeds of one configuration share it); ``setup_id``
    names the task data, model, profile and training budget without the learning rate (the runs a figure or a
    choice compares: one method's learning rates compete within a setup). The data is the one a run read (its
    ``data_fingerprint``; a record of before: its task's published data), so that runs of one configuration on
    other data never share a row (``data``: 8 hex digits of it).
    """
    from .publish import published_data

    rows, published = [], {}
    for r in records:
        acc = r.accounting or {}
        config = r.config
        compress = config.get("compress", {})
        train = train_identity(config.get("train") or {})  # a record of before precision was a setting: fp32
        without_lr = {k: v for k, v in train.items() if k != "lr"}
        setup = {k: config.get(k) for k in ("task", "dataset", "model", "profile")}
        if r.task not in published:
            published[r.task] = published_data(r.task)
        data = r.data_fingerprint or published[r.task]
        if data:
            setup["data"] = data
        seeds = config.get("seeds") or [r.seed]
        stale = bool(getattr(r, "_stale", False))
        # Current records compare with each other whatever code version made them (a published record is current
        # while its code keeps its behaviour); stale ones stay apart, per code version.
        code = r.code_version if stale else "current"
        rows.append(
            {
                "task": r.task,
                "family": r.family,
                "profile": config.get("profile"),
                "budget": budget_text(train),
                "precision": train.get("precision", DEFAULT_PRECISION),
                "data": _hash(data)[:8] if data else None,
                "method": r.method,
                "factor": float(compress.get("factor", 1.0)),
                **{k: _cell(v) for k, v in compress.items() if k != "factor"},
                "lr": train.get("lr"),
                "seed": r.seed,
                "run_id": r.run_id,
                "config_id": _hash(
                    {**setup, "train": train, "method": r.method, "compress": compress, "code": code}
                ),
                "setup_id": _hash({**setup, "train": without_lr}),
                "code_version": r.code_version,
                "code": code,
                "stale": stale,
                "stale_reason": getattr(r, "_stale_reason", None),
                "commit": (r.provenance.get("git_sha") or "-")[:7],
                "published": bool(r.published),
                "status": r.status,
                "reason": r.reason,
                "metric": r.metric,
                "direction": r.direction,
                "val": r.val,
                "test": r.test,
                "seeds_asked": ",".join(map(str, seeds)),
                "cf": acc.get("cf"),
                "cf_values": acc.get("cf_values"),
                "model_cf": acc.get("model_cf"),
                "stored": acc.get("model_stored"),
                "targeted_stored": acc.get("targeted_stored"),
                "epochs": len(r.epochs),
                "wall_s": r.timings.get("wall_s"),
                "baseline_s": r.timings.get("baseline_s"),
                "throughput": next((v for k, v in r.timings.items() if k.endswith("_per_s")), None),
                "study": config.get("study"),
                "trial": config.get("trial"),
            }
        )
    return pd.DataFrame(rows)


def epochs_frame(records: list[Record], base: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch of every run: the run's identity and settings, then whatever the epoch logged
    (lr, losses, metrics, and the diagnostics a method logs, ``Method.diagnostics``). ``base``: the runs_frame
    of ``records``."""
    rows = []
    drop = ("val", "test", "epochs", "wall_s", "baseline_s", "throughput", "lr")
    for r, (_, run) in zip(records, base.iterrows()):
        ident = {k: run[k] for k in base.columns if k not in drop}
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
    "val",
    "test",
    "seeds_asked",
    "cf",
    "cf_values",
    "model_cf",
    "stored",
    "targeted_stored",
    "epochs",
    "wall_s",
    "baseline_s",
    "throughput",
    "study",
    "trial",
    "commit",
    "published",
}


def _asked(seeds: pd.Series) -> int:
    return len({s for cell in seeds.dropna() for s in str(cell).split(",") if s != ""})


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (``config_id``): its settings, val and test metric over the finished seeds
    (mean, std, 95% CI), n_ok, n_failed, n_pruned, n_asked and ``partial`` (fewer finished than asked), the
    achieved CFs and sizes."""
    if frame.empty:
        return frame
    settings = [c for c in frame.columns if c not in _RESULTS and c != "config_id"]
    g = frame.groupby("config_id", dropna=False, sort=False)
    counts = g.agg(
        n_ok=("status", lambda s: int((s == "ok").sum())),
        n_failed=("status", lambda s: int((s == "failed").sum())),
        n_pruned=("status", lambda s: int((s == "pruned").sum())),
        n_asked=("seeds_asked", _asked),
    )
    first = g[settings].first()
    done = frame[frame["status"] == "ok"].groupby("config_id", dropna=False)
    stats_ = done.agg(
        val_mean=("val", "mean"),
        val_std=("val", "std"),
        val_ci95=("val", ci95),
        test_mean=("test", "mean"),
        test_std=("test", "std"),
        test_ci95=("test", ci95),
        cf=("cf", "mean"),
        cf_values=("cf_values", "mean"),
        model_cf=("model_cf", "mean"),
        targeted_stored=("targeted_stored", "mean"),
        stored=("stored", "mean"),
        commit=("commit", lambda c: ",".join(sorted(set(c)))),
        run_ids=("run_id", lambda i: ",".join(sorted(i))),
        published=("published", "all"),
    )
    out = first.join(counts).join(stats_).reset_index()
    out["n_asked"] = out[["n_asked", "n_ok"]].max(axis=1)
    out["partial"] = (out["n_ok"] > 0) & (out["n_ok"] < out["n_asked"])  # a mean over fewer seeds than asked
    order = ["task", "profile", "budget", "_o", "method", "factor"]
    out = out.assign(_o=out["method"].ne("dense"))
    return out.sort_values(order, kind="stable").drop(columns="_o").reset_index(drop=True)


#: What a chosen setting is chosen among: one method at one asked CF and targets, in one setup.
SELECT_KEYS = ["task", "setup_id", "code", "method", "factor", "targets"]


def best_by_val(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of ``keys``, the configuration with the best mean validation metric (the task's direction);
    configurations without a finished run are never chosen."""
    rows = rows[rows["val_mean"].notna()]
    if rows.empty:
        return rows
    keys = [k for k in keys if k in rows]
    sign = np.where(rows["direction"].fillna("minimize") == "maximize", -1.0, 1.0)
    ranked = rows.assign(_key=sign * rows["val_mean"]).sort_values("_key", kind="stable")
    filled = ranked.assign(**{k: ranked[k].fillna("-") for k in keys})
    best = filled.groupby(keys, sort=False, dropna=False).head(1)
    return ranked.loc[best.index].drop(columns="_key").sort_index()


def selected(summ: pd.DataFrame) -> pd.DataFrame:
    """The setting each method gets at each asked CF (and targets) within a setup, chosen on validation."""
    if summ.empty:
        return summ
    summ = summ.assign(targets=summ["targets"].fillna(DEFAULT_TARGETS)) if "targets" in summ else summ
    return best_by_val(summ, SELECT_KEYS).reset_index(drop=True)


def load(results_dir: str | Path = "results", stale: bool = False) -> tuple[list[Record], int]:
    """Every record under results/runs (each run once, whichever stage's store holds it) and how many records
    of older code were left out (with ``stale``: kept and marked)."""
    if not Path(results_dir).is_dir():
        what = "is a file, not a folder" if Path(results_dir).exists() else "does not exist"
        raise ConfigError(
            f"no runs under {results_dir}: it {what}; run `suite train` or a sweep first, or pass --results"
        )
    from .publish import stale_reasons

    records, left_out, found = [], 0, {}
    for rec in load_records(results_dir, status=None):  # published records first: they win a shared run-id
        found.setdefault(rec.run_id, rec)
    # A published record is current while its code keeps its behaviour (suite.behaviour); one of the user's own
    # while its code version is the current one.
    reasons = stale_reasons([r for r in found.values() if r.published])
    for rec in found.values():
        if rec.published:
            rec._stale_reason = reasons[rec.run_id]
        if rec._stale_reason is not None if rec.published else is_stale(rec):
            if not stale:
                left_out += 1
                continue
            rec._stale = True  # marked in runs_frame
        records.append(rec)
    return records, left_out


def trials_frame(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every sweep trial, from the tables the sweeps export (results/sweeps/<name>/<study>.csv); a table that
    cannot be read is left out with a note naming it."""
    frames = []
    for path in sorted(Path(results_dir).glob("sweeps/*/*.csv")):
        try:
            frame = pd.read_csv(path)
            missing = [c for c in ("study", "number", "state") if c not in frame]
            problem = f"no column {', '.join(missing)}" if missing else None
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            problem = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        if problem:
            print(
                f"note: trials table {path} is not one a sweep wrote ({problem}); left out", file=sys.stderr
            )
            continue
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def headline(summ: pd.DataFrame, trials: pd.DataFrame) -> dict:
    """Small JSON for DVC metrics: per task, profile and training budget, the dense metric and each method's
    chosen setting at each whole-number asked CF (a grid's; default targets), chosen on val, its test metric
    reported with the achieved CF and the seeds; per study, trial counts, epochs trained and the best trial by its
    (validation) objective. Runs of older code are not in ``summ`` (see ``load``)."""
    out: dict[str, Any] = {}
    if not summ.empty:
        chosen = selected(summ)
        chosen = chosen[(chosen["targets"] == DEFAULT_TARGETS) & ~chosen["stale"].astype(bool)]
        chosen = chosen[chosen["factor"] == chosen["factor"].round()]  # searched CFs would each add a key
        for row in chosen.itertuples():
            key = "metric" if row.method == "dense" else f"cf{row.factor:g}"
            where = out.setdefault(f"{row.task}/{row.profile}/{row.budget}", {}).setdefault(row.method, {})
            where[key] = {
                f"val_{row.metric}": round(float(row.val_mean), 4),
                f"test_{row.metric}": round(float(row.test_mean), 4),
                "cf": math.floor(float(row.cf) * 1e4) / 1e4,  # never rounded up
                "n": int(row.n_ok),
                "n_asked": int(row.n_asked),
            }
    if not trials.empty:
        for study, rows in trials.groupby("study"):
            done = rows[rows["state"] == "complete"]
            objective = rows["objective"].iloc[0]
            entry: dict[str, Any] = {
                "complete": int(len(done)),
                "pruned": int((rows["state"] == "pruned").sum()),
                # failed for good: not a failure that was retried, nor a rate-race leader that waited
                "failed": int(
                    (rows["standing"] == "failed").sum()
                    if "standing" in rows
                    else (rows["state"] == "fail").sum()
                ),
                "epochs": int(rows["epochs"].fillna(0).sum()) if "epochs" in rows else 0,
            }
            if len(done):
                sign = 1.0 if rows["direction"].iloc[0] == "minimize" else -1.0
                best = done.loc[(sign * done["value"]).idxmin()]
                entry[f"best_{objective}"] = round(float(best["value"]), 4)
                test = objective.replace("val_", "test_", 1)
                if test in best and pd.notna(best[test]):
                    entry[f"its_{test}"] = round(float(best[test]), 4)
            out.setdefault("sweeps", {})[study] = entry
    return out


def write_tables(
    results_dir: str | Path = "results",
    out: str | Path = "results/tables",
    metrics: str | Path | None = None,
    stale: bool = False,
) -> tuple[list[Path], pd.DataFrame, int]:
    """runs.csv, summary.csv (every configuration), selected.csv (the setting chosen per method and CF),
    leaderboard.csv (full scale), epochs.csv and trials.csv; optionally the metrics JSON. Returns the files
    written, the summary and how many records of older code were left out."""
    from .leaderboard import leaderboard

    records, left_out = load(results_dir, stale)
    out = Path(out)
    runs = runs_frame(records)
    summ = summary(runs)
    chosen = selected(summ)
    trials = trials_frame(results_dir)
    tables = {
        "runs": runs,
        "summary": summ,
        "selected": chosen,
        "leaderboard": leaderboard(summ),
        "epochs": epochs_frame(records, runs),
        "trials": trials,
    }
    written = []
    for name, df in tables.items():
        path = out / f"{name}.csv"
        with atomic(path, "table") as tmp:
            df.to_csv(tmp, index=False)
        written.append(path)
    if metrics is not None:
        write_json(Path(metrics), {**headline(summ, trials), "left_out_stale": left_out}, "metrics file")
        written.append(Path(metrics))
    return written, summ, left_out
