"""Paper figures (PNG and PDF) from the tables of ``suite report --out``; a figure without data is skipped with
a note, never drawn empty.

Every figure shows, per method and CF, the setting chosen on the validation metric and its test metric, one
panel per task and setup (profile and training budget: never mixed in one panel, curve or front).

F1 metric vs CF per method and task. F2 co-matrix adaptation: val metric and sparsity of D per epoch, with and
without CMR. F3 metric vs CMR rate at a fixed CF. F4 batch-1 inference speed-up vs CF. F5 Pareto fronts of the
metric vs stored size (and latency). F6 embedding/softmax compression without fine-tuning.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .compressors import registry  # noqa: E402
from .compressors.registry import Diagnostics  # noqa: E402
from .errors import DataError  # noqa: E402
from .files import make_dir, missing_dirs, remove_new_dirs, write_text  # noqa: E402
from .plots import (  # noqa: E402
    color,
    dense_line,
    errorbar,
    log_axis,
    marker,
    metric_axis,
    metric_label,
    one_setup,
    pareto,
    points_csv,
    save,
    setups,
    subplots_row,
    targets_of,
    write_csv,
)
from .report import DEFAULT_TARGETS, best_by_val  # noqa: E402

Made = tuple[list[Path], str]  # files written, or none and why


#: Columns each table of ``suite report --out`` has (when it has rows), and which of them hold numbers.
TABLE_COLUMNS = {
    "summary": (
        ("task", "profile", "budget", "method", "factor", "metric", "direction", "setup_id", "config_id"),
        ("factor", "val_mean", "test_mean", "test_ci95", "cf"),
    ),
    "epochs": (("task", "method", "factor", "setup_id", "config_id", "epoch"), ("factor", "epoch")),
    "trials": (("study", "state"), ()),
}


def _read(tables: Path, name: str) -> pd.DataFrame:
    """A table of ``suite report --out`` (empty if absent); one that is not such a table is a DataError."""
    path = tables / f"{name}.csv"
    if not path.is_file() or path.stat().st_size < 2:
        return pd.DataFrame()
    redo = f"; rebuild the tables with `suite report --out {tables}`"
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise DataError(f"table {path} cannot be read ({first}){redo}") from None
    if frame.empty:
        return frame
    columns, numeric = TABLE_COLUMNS.get(name, ((), ()))
    missing = [c for c in columns if c not in frame]
    if missing:
        raise DataError(f"table {path} has no column {', '.join(missing)}{redo}")
    for c in numeric:
        if c in frame and not (pd.api.types.is_numeric_dtype(frame[c]) or frame[c].isna().all()):
            raise DataError(f"table {path}: column {c} holds something other than numbers{redo}")
    return frame


def f1_metric_vs_cf(summ: pd.DataFrame, out: Path) -> Made:
    if summ.empty or not (summ["method"] != "dense").any():
        return [], "no compressed runs"
    summ = summ[targets_of(summ) == DEFAULT_TARGETS]  # every asked CF: a search's drawn CFs are points too
    panels = setups(summ)
    fig, axes = subplots_row(len(panels))
    partial, plotted = False, []
    for ax, (title, rows) in zip(axes, panels):
        rows = one_setup(rows, "F1")
        metric, direction = rows["metric"].iloc[0], rows["direction"].iloc[0]
        dense_line(ax, rows)
        chosen = best_by_val(rows[rows["method"] != "dense"], ["method", "factor"])  # setting chosen on val
        plotted.append(chosen.assign(panel=title))
        for method, best in chosen.groupby("method"):
            errorbar(ax, best.sort_values("cf"), "cf", method, method)
        partial |= bool(chosen["partial"].any()) if "partial" in chosen else False
        log_axis(ax)
        metric_axis(ax, metric)  # perplexities of weak and strong runs on one readable axis
        ax.set_title(title)
        ax.set_xlabel("achieved CF of the recurrent matrices (x; log)")
        ax.set_ylabel(metric_label(metric, direction))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2 if len(ax.get_legend_handles_labels()[1]) > 6 else 1)
    note = "; hollow: fewer seeds than asked" if partial else ""
    fig.suptitle(
        "F1  test metric vs compression factor (mean and 95% CI over seeds; per method and CF the setting "
        f"chosen on validation{note})",
        y=1.02,
    )
    paths = save(fig, out, "F1_metric_vs_cf")
    return [*paths, points_csv(plotted, out / "F1_metric_vs_cf.csv")], ""


def _declared(table: pd.DataFrame, key: Callable[[Diagnostics], str]) -> Diagnostics | None:
    """The methods' diagnostics whose column ``key`` the table has values in (else the first declared, for the
    note that says what is missing; None: no method declares any)."""
    declared = registry.diagnostics()
    has = (d for d in declared if key(d) in table and table[key(d)].notna().any())
    return next(has, declared[0] if declared else None)


def _chosen_per_rate(summ: pd.DataFrame, rate: str) -> pd.DataFrame:
    """Per task, setup, method, CF and swept rate, the configuration chosen on val (its learning rate), on the
    recurrent matrices (the default targets)."""
    rows = summ[summ[rate].notna() & (targets_of(summ) == DEFAULT_TARGETS)]
    return best_by_val(rows, ["task", "setup_id", "method", "factor", rate])


def f2_cma(epochs: pd.DataFrame, summ: pd.DataFrame, out: Path, cf: float | None = None) -> Made:
    d = _declared(epochs, lambda d: d.schedule.key)
    if d is None:
        return [], "no method declares per-epoch diagnostics"
    schedule, rate, short = d.schedule.key, d.setting.key, d.setting.unit
    if epochs.empty or schedule not in epochs or epochs[schedule].isna().all() or rate not in summ:
        return [], f"no per-epoch {d.schedule.label} in any run ({d.methods} methods log it {d.during})"
    chosen = _chosen_per_rate(summ, rate)
    finished = epochs["status"].eq("ok") if "status" in epochs else True  # failed or pruned seeds left out
    rows = epochs[epochs[schedule].notna() & epochs["config_id"].isin(chosen["config_id"]) & finished]
    if rows.empty:
        return [], f"no finished {d.methods} runs"
    task, setup = rows[["task", "setup_id"]].value_counts().index[0]  # the setup with the most such epochs
    rows = one_setup(rows[(rows["task"] == task) & (rows["setup_id"] == setup)], "F2")
    metric = rows["metric"].iloc[0]
    val, without = f"val_{metric}", f"val_{metric}{d.without}"
    rows = rows.assign(**{rate: rows[rate].fillna(0.0)})
    methods = sorted(rows["method"].unique())
    fig, grid = plt.subplots(
        2, len(methods), figsize=(5.2 * len(methods), 6), squeeze=False, sharex="col", height_ratios=[2.2, 1]
    )
    for col, method in enumerate(methods):
        top, bottom = grid[0][col], grid[1][col]
        m = rows[rows["method"] == method]
        factor = cf if cf is not None and np.isclose(m["factor"], cf).any() else m["factor"].mode().iloc[0]
        m = m[np.isclose(m["factor"], factor)]
        curves = m.groupby([rate, "epoch"]).mean(numeric_only=True).reset_index()  # mean over seeds
        # The schedule is the same at every rate: one curve then, said so, instead of curves on top of each
        # other; otherwise each rate's own line style.
        schedules = {tuple(c[schedule].round(6)) for _, c in curves.groupby(rate)}
        for i, (value, c) in enumerate(curves.groupby(rate)):
            name = f"{short} {d.symbol}={value:g}" if value > 0 else f"no {short}"
            line = top.plot(c["epoch"], c[val], marker="o", label=f"{name}: with {d.part}")[0]
            if without in c and c[without].notna().any():
                top.plot(
                    c["epoch"],
                    c[without],
                    ls=":",
                    marker=".",
                    color=line.get_color(),
                    label=f"{name}: {d.part} removed",
                )
            if len(schedules) > 1:
                style = dict(ls=("-", "--", "-.", ":")[i % 4], marker="os^v"[i % 4])
                bottom.plot(c["epoch"], c[schedule], color=line.get_color(), label=name, **style)
            elif i == 0:
                label = f"every {short} rate (one schedule)" if curves[rate].nunique() > 1 else name
                bottom.plot(c["epoch"], c[schedule], color="0.3", marker="o", label=label)
        top.set_title(f"{method} at CF {factor:g}: {d.title}")
        top.set_ylabel(metric_label(metric, m["direction"].iloc[0], "validation"))
        top.grid(alpha=0.3)
        top.legend(fontsize=8)
        bottom.set_xlabel("epoch")
        bottom.set_ylabel(f"{d.schedule.label}\n({d.schedule.unit})")
        bottom.xaxis.get_major_locator().set_params(integer=True)
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7)
    first = rows.iloc[0]
    title = (
        f"F2  {d.abbrev} {d.during}, {task} ({first['profile']}, {first['budget']}): validation metric with and "
        f"without {d.part}, {d.schedule.label} (mean over seeds; per {short} rate the learning rate chosen on "
        "validation)"
    )
    fig.suptitle(textwrap.fill(title, width=70 * len(methods)), y=1.0)  # no wider than the panels
    fig.tight_layout()
    return save(fig, out, "F2_cma"), ""


def f3_metric_vs_cmr(summ: pd.DataFrame, out: Path, cf: float | None = None) -> Made:
    d = _declared(summ, lambda d: d.setting.key)
    if d is None:
        return [], "no method declares a rate to sweep"
    rate, short = d.setting.key, d.setting.unit
    if summ.empty or rate not in summ or summ[rate].notna().sum() == 0:
        return [], f"no runs with a {short} rate ({d.methods} methods)"
    rows = _chosen_per_rate(summ, rate)
    if cf is None:
        cf = rows.groupby("factor")[rate].nunique().idxmax()
    rows = rows[np.isclose(rows["factor"], cf)]
    if rows.empty:
        return [], f"no runs with a {short} rate at CF {cf:g}"
    panels = setups(rows)
    fig, axes = subplots_row(len(panels))
    for ax, (title, m_rows) in zip(axes, panels):
        m_rows = one_setup(m_rows, "F3")
        for method, m in m_rows.groupby("method"):
            errorbar(ax, m.sort_values(rate), rate, method, method)
        ax.set_xlabel(d.setting.label)
        ax.set_ylabel(metric_label(m_rows["metric"].iloc[0], m_rows["direction"].iloc[0]))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"F3  test metric vs {short} rate at CF {cf:g} (learning rate chosen on validation)", y=1.02)
    return save(fig, out, "F3_metric_vs_cmr"), ""


def read_bench(bench: Path) -> tuple[dict, pd.DataFrame] | None:
    """The batch-1 inference benchmark (None: not run yet); a file that is not one is a DataError."""
    if not bench.is_file():
        return None
    try:
        data = json.loads(bench.read_text())
        rows = pd.DataFrame(data["rows"] if isinstance(data, dict) else data)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"benchmark {bench} cannot be read ({type(e).__name__}); rerun `suite bench infer`"
        ) from None
    return (data if isinstance(data, dict) else {}), rows


def f4_speedup(bench: Path, out: Path, loaded: tuple[dict, pd.DataFrame] | None) -> Made:
    if loaded is None:
        return [], f"no inference benchmark at {bench} (run the batch-1 inference benchmark first)"
    data, rows = loaded
    speed = [c for c in rows.columns if "speed" in c]
    if rows.empty or not speed or not {"method", "factor"} <= set(rows.columns):
        return [], f"{bench} has no speed-up column"
    rows = rows[rows["method"] != "dense"]
    fig, axes = subplots_row(1)
    ax = axes[0]
    x = "cf" if "cf" in rows else "factor"  # the achieved CF (kp asked 10 reaches 13)
    for method, m in rows.groupby("method"):
        m = m.sort_values(x)
        ax.plot(m[x], m[speed[0]], marker=marker(method), label=method, color=color(method))
    ax.axhline(1.0, color="black", ls="--", lw=1, label="dense")
    lim = [rows[x].min(), rows[x].max()]
    # a step reading CF times fewer bytes
    ax.plot(lim, lim, color="gray", ls=":", lw=1, label="speed-up = CF")
    log_axis(ax)
    ax.set_xlabel("achieved compression factor (x; log)")
    ax.set_ylabel("batch-1 inference speed-up over dense (x)")
    shape = " ".join(f"{k} {v}" for k, v in (data.get("shape") or {}).items())
    threads = f"{data['threads']} thread{'s' if data['threads'] != 1 else ''}" if "threads" in data else ""
    baseline = f"vs dense {data['dense_baseline']}" if "dense_baseline" in data else ""
    where = ", ".join(x for x in (shape, threads, str(data.get("device", "")), baseline) if x)
    ax.set_title("F4  batch-1 inference speed-up vs CF" + (f"\n({where})" if where else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, out, "F4_speedup_vs_cf"), ""


def f5_pareto(summ: pd.DataFrame, trials: pd.DataFrame, out: Path) -> Made:
    """Fronts of the validation metric (what a choice may use) against stored size, one per setup, over
    configurations (means over seeds); the front's test metric is listed in pareto.csv beside the figure."""
    if summ.empty or "targeted_stored" not in summ or summ["targeted_stored"].isna().all():
        return [], "no finished runs"
    summ = summ[(targets_of(summ) == DEFAULT_TARGETS) & summ["val_mean"].notna()]
    panels = [(title, rows, "targeted_stored") for title, rows in setups(summ)]
    if "latency_ms" in trials:
        latency = trials[(trials["state"] == "complete") & trials["latency_ms"].notna()]
        panels += [
            (s, latency[latency["study"] == s], "latency_ms") for s in sorted(latency["study"].unique())
        ]
    fig, axes = subplots_row(len(panels))
    fronts = []
    for ax, (name, pts, x) in zip(axes, panels):
        if x == "targeted_stored":
            pts = one_setup(pts, "F5").rename(columns={"val_mean": "y"})
            direction, metric = pts["direction"].iloc[0], pts["metric"].iloc[0]
            ax.set_xlabel("stored values, recurrent matrices (indices counted; log)")
        else:
            pts = pts.rename(columns={"value": "y"}).assign(
                method=pts["method"] if "method" in pts else "trial"
            )
            direction, metric = pts["direction"].iloc[0], pts["objective"].iloc[0].removeprefix("val_")
            ax.set_xlabel("batch-1 latency, recurrent matrices (ms; log)")
        for method, m in pts.groupby("method"):
            ax.scatter(m[x], m["y"], label=method, alpha=0.8, color=color(method), marker=marker(method))
        front = pareto(pts, x, "y", direction)
        fronts.append(front.assign(panel=name, x=x))
        ax.step(front[x], front["y"], where="post", color="black", lw=1)
        ax.scatter(
            front[x], front["y"], s=90, facecolors="none", edgecolors="black", label="Pareto front (val)"
        )
        log_axis(ax)
        metric_axis(ax, metric)
        ax.set_ylabel(metric_label(metric, direction, "validation"))
        ax.set_title(f"{name}: metric vs {'size' if x == 'targeted_stored' else 'latency'}")
        ax.grid(alpha=0.3, which="both")
        # below: the front shows
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    fig.suptitle("F5  Pareto fronts on the validation metric: vs stored size (and latency)")
    fig.set_layout_engine("constrained")
    paths = save(fig, out, "F5_pareto")
    table = pd.concat(fronts, ignore_index=True).rename(columns={"y": "val"})
    keep = [
        c
        for c in (
            "panel",
            "method",
            "factor",
            *registry.swept_settings(),
            "lr",
            "x",
            "targeted_stored",
            "latency_ms",
            "val",
            "test_mean",
            "test_ci95",
            "n_ok",
        )
        if c in table
    ]
    write_csv(table[keep], out / "F5_pareto.csv")
    return [*paths, out / "F5_pareto.csv"], ""


def f6_embedding_softmax(summ: pd.DataFrame, out: Path) -> Made:
    if summ.empty:
        return [], "no runs"
    targets = targets_of(summ)
    no_ft = summ["finetune_epochs"].fillna(-1).eq(0) if "finetune_epochs" in summ else False
    rows = summ[(targets != DEFAULT_TARGETS) & no_ft]
    if rows.empty:
        return [], "no runs compressing embedding or softmax without fine-tuning"
    panels = list(rows.groupby(["task", "setup_id", "targets"], sort=True))
    fig, axes = subplots_row(len(panels))
    for ax, ((task, setup, target), sel) in zip(axes, panels):
        sel = one_setup(sel, "F6")
        dense_line(ax, summ[(summ["setup_id"] == setup) & (summ["method"] == "dense")])
        # One curve per method and l_p exponent (the criterion F6 compares), the best other settings per CF.
        exps = sel["p"] if "p" in sel else pd.Series(np.nan, index=sel.index)
        sel = sel.assign(curve=[m if pd.isna(e) else f"{m} p={e:g}" for m, e in zip(sel["method"], exps)])
        drawn: dict[str, int] = {}
        for curve, m in best_by_val(sel, ["curve", "factor"]).groupby("curve"):
            method = m["method"].iloc[0]
            style = ("-", "--", ":", "-.")[drawn.setdefault(method, 0) % 4]
            drawn[method] += 1
            errorbar(ax, m.sort_values("cf"), "cf", curve, method, linestyle=style)
        log_axis(ax, "x")
        if sel["test_mean"].max() > 3 * sel["test_mean"].min():  # perplexity can explode without fine-tuning
            log_axis(ax, "y")
        first = sel.iloc[0]
        ax.set_xlabel(f"achieved CF of {target} (x; log)")
        ax.set_ylabel(metric_label(first["metric"], first["direction"]))
        ax.set_title(f"{task} ({first['profile']}, {first['budget']})\n{target}, no fine-tuning")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("F6  embedding / softmax compression without fine-tuning", y=1.06)
    return save(fig, out, "F6_embedding_softmax"), ""


def _current(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the current code only: runs of older code (``suite report --stale``) are never drawn."""
    return table[~table["stale"].astype(bool)] if "stale" in table else table


def make_figures(
    tables: str | Path, out: str | Path, options: dict[str, Any] | None = None
) -> dict[str, Made]:
    """Draw every figure that has data; ``options``: ``cmr_cf`` (F3's CF), ``bench`` (F4's benchmark JSON).

    The figures are drawn into a staging folder beside ``out`` and moved into ``out`` (each file by a rename)
    once all of them are drawn: an error half-way leaves ``out`` as it was."""
    tables, out, options = Path(tables), Path(out), options or {}
    summ, epochs, trials = (_read(tables, n) for n in ("summary", "epochs", "trials"))
    summ, epochs = (_current(t) for t in (summ, epochs))
    bench = Path(options.get("bench") or "results/bench/infer.json")
    loaded = read_bench(bench)  # every input read (and refused if corrupt) before any figure is drawn
    created = missing_dirs(out)
    stage = make_dir(out.with_name(f".{out.name}.tmp{os.getpid()}"), "figures folder")
    makers: dict[str, Callable[[], Made]] = {
        "F1": lambda: f1_metric_vs_cf(summ, stage),
        "F2": lambda: f2_cma(epochs, summ, stage, options.get("cmr_cf")),
        "F3": lambda: f3_metric_vs_cmr(summ, stage, options.get("cmr_cf")),
        "F4": lambda: f4_speedup(bench, stage, loaded),
        "F5": lambda: f5_pareto(summ, trials, stage),
        "F6": lambda: f6_embedding_softmax(summ, stage),
    }
    try:
        drawn = {name: make() for name, make in makers.items()}
        make_dir(out, "figures folder")
        made = {}
        for name, (paths, note) in drawn.items():
            for path in paths:
                os.replace(path, out / path.name)
            made[name] = ([out / path.name for path in paths], note)
        notes = {name: note or [str(p) for p in paths] for name, (paths, note) in made.items()}
        write_text(out / "index.json", json.dumps(notes, indent=2) + "\n", "figure index")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        remove_new_dirs([*created, stage])
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return made
