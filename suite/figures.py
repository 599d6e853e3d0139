"""Paper figures (PNG and PDF) from the tables of ``suite report --out``; a figure without data is skipped with
a note, never drawn empty.

F1 metric vs CF per method and task. F2 co-matrix adaptation: val metric and sparsity of D per epoch, with and
without CMR. F3 metric vs CMR rate at a fixed CF. F4 batch-1 inference speed-up vs CF. F5 Pareto fronts of the
metric vs stored size (and latency). F6 embedding/softmax compression without fine-tuning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .compressors.registry import LSTM_TARGETS  # noqa: E402

DEFAULT_TARGETS = ",".join(LSTM_TARGETS)
Made = tuple[list[Path], str]  # files written, or none and why


SPARSITY, WITHOUT_D = "d_sparsity", "val_ppl_without_d"  # the CMA columns of doped runs


def _read(tables: Path, name: str) -> pd.DataFrame:
    path = tables / f"{name}.csv"
    if not path.is_file() or path.stat().st_size < 2:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _panels(n: int, width: float = 5.2, height: float = 3.8):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _log(ax, which: str = "x") -> None:
    """Log scale with plain numbers at 1, 2, 5 x 10^k (no crowded minor labels)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def color(method: str):
    """One colour per method in every figure (the registry's order; methods it does not know come after)."""
    from .compressors import registry

    names = registry.available()
    index = names.index(method) if method in names else len(names) + sum(map(ord, method)) % 7
    return plt.get_cmap("tab10")(index % 10)


def _metric_label(metric: str) -> str:
    split, _, name = metric.partition("_")
    name = {"ppl": "perplexity", "bleu": "BLEU", "wer": "word error rate"}.get(name, name)
    better = "lower" if metric.endswith(("ppl", "wer", "loss")) else "higher"
    return f"{split} {name} ({better} is better)"


def _main_setup(df: pd.DataFrame) -> pd.DataFrame:
    """Per task, the runs of its most common data/model/training setup (one figure compares like with like)."""
    if df.empty or "setup_id" not in df:
        return df
    keep = df.groupby("task")["setup_id"].agg(lambda s: s.value_counts().index[0])
    return df[df["setup_id"] == df["task"].map(keep)]


def _targets(df: pd.DataFrame) -> pd.Series:
    return df["targets"].fillna(DEFAULT_TARGETS) if "targets" in df else pd.Series(DEFAULT_TARGETS, df.index)


def _dense_line(ax, summ: pd.DataFrame) -> None:
    dense = summ[summ["method"] == "dense"]
    if len(dense):
        ax.axhline(dense["mean"].iloc[0], color="black", ls="--", lw=1, label="dense (CF 1)")


def f1_metric_vs_cf(summ: pd.DataFrame, out: Path) -> Made:
    summ = _main_setup(summ)
    if summ.empty or not (summ["method"] != "dense").any():
        return [], "no compressed runs"
    summ = summ[_targets(summ) == DEFAULT_TARGETS]
    tasks = sorted(summ["task"].unique())
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks):
        rows = summ[summ["task"] == task]
        _dense_line(ax, rows)
        for method, m in rows[rows["method"] != "dense"].groupby("method"):
            best = m.loc[m.groupby("factor")["mean"].idxmin()].sort_values("cf")  # best setting per asked CF
            err = best["ci95"].where(np.isfinite(best["ci95"]), 0)
            ax.errorbar(
                best["cf"], best["mean"], yerr=err, marker="o", capsize=3, label=method, color=color(method)
            )
        _log(ax)
        _log(ax, "y")  # perplexities of weak and strong runs on one readable axis
        ax.set_title(f"{task}: {rows['metric'].iloc[0]} vs compression")
        ax.set_xlabel("achieved CF of the LSTM matrices (x; log)")
        ax.set_ylabel(_metric_label(rows["metric"].iloc[0]))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("F1  metric vs compression factor (mean and 95% CI over seeds; best setting per CF)", y=1.02)
    return _save(fig, out, "F1_metric_vs_cf"), ""


def f2_cma(epochs: pd.DataFrame, out: Path, cf: float | None = None) -> Made:
    if epochs.empty or SPARSITY not in epochs or epochs[SPARSITY].isna().all():
        return [], "no per-epoch sparsity of D in any run (doped methods log it while annealing)"
    rows = _main_setup(epochs[epochs[SPARSITY].notna()])
    rows = rows.assign(cmr=rows["cmr"].fillna(0.0) if "cmr" in rows else 0.0)
    without = [c for c in (WITHOUT_D,) if c in rows and rows[c].notna().any()]
    methods = sorted(rows["method"].unique())
    fig, grid = plt.subplots(
        2,
        len(methods),
        figsize=(5.2 * len(methods), 6),
        squeeze=False,
        sharex="col",
        gridspec_kw={"height_ratios": [2.2, 1]},
    )
    for col, method in enumerate(methods):
        top, bottom = grid[0][col], grid[1][col]
        m = rows[rows["method"] == method]
        factor = cf if cf is not None and np.isclose(m["factor"], cf).any() else m["factor"].mode().iloc[0]
        m = m[np.isclose(m["factor"], factor)]
        curves = m.groupby(["cmr", "epoch"]).mean(numeric_only=True).reset_index()  # mean over seeds
        for cmr, c in curves.groupby("cmr"):
            name = f"CMR p={cmr:g}" if cmr > 0 else "no CMR"
            line = top.plot(c["epoch"], c["val_ppl"], marker="o", label=f"{name}: with D")[0]
            for w in without:
                top.plot(
                    c["epoch"], c[w], ls=":", marker=".", color=line.get_color(), label=f"{name}: D removed"
                )
            bottom.plot(c["epoch"], c[SPARSITY], color=line.get_color(), marker="o", label=name)
        top.set_title(f"{method} at CF {factor:g}: co-matrix adaptation")
        top.set_ylabel("validation perplexity")
        top.grid(alpha=0.3)
        top.legend(fontsize=8)
        bottom.set_xlabel("epoch")
        bottom.set_ylabel("sparsity of D\n(fraction of zeros)")
        bottom.xaxis.get_major_locator().set_params(integer=True)
        bottom.grid(alpha=0.3)
    fig.suptitle(
        "F2  CMA while annealing: validation perplexity with and without D, sparsity of D (mean over seeds)",
        y=1.0,
    )
    fig.tight_layout()
    return _save(fig, out, "F2_cma"), ""


def f3_metric_vs_cmr(summ: pd.DataFrame, out: Path, cf: float | None = None) -> Made:
    if summ.empty or "cmr" not in summ or summ["cmr"].notna().sum() == 0:
        return [], "no runs with a CMR rate (doped methods)"
    rows = _main_setup(summ[summ["cmr"].notna()])
    if cf is None:
        cf = rows.groupby("factor")["cmr"].nunique().idxmax()
    rows = rows[np.isclose(rows["factor"], cf)]
    if rows.empty:
        return [], f"no runs with a CMR rate at CF {cf:g}"
    fig, axes = _panels(1)
    ax = axes[0]
    for (task, method), m in rows.groupby(["task", "method"]):
        m = m.sort_values("cmr")
        err = m["ci95"].where(np.isfinite(m["ci95"]), 0)
        ax.errorbar(
            m["cmr"],
            m["mean"],
            yerr=err,
            marker="o",
            capsize=3,
            label=f"{method} ({task})",
            color=color(method),
        )
    ax.set_xlabel("co-matrix dropout rate p (CMR)")
    ax.set_ylabel(_metric_label(rows["metric"].iloc[0]))
    ax.set_title(f"F3  metric vs CMR rate at CF {cf:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "F3_metric_vs_cmr"), ""


def f4_speedup(bench: Path, out: Path) -> Made:
    if not bench.is_file():
        return [], f"no inference benchmark at {bench} (run the batch-1 inference benchmark first)"
    data = json.loads(bench.read_text())
    rows = pd.DataFrame(data["rows"] if isinstance(data, dict) else data)
    speed = [c for c in rows.columns if "speed" in c]
    if rows.empty or not speed:
        return [], f"{bench} has no speed-up column"
    rows = rows[rows["method"] != "dense"]
    fig, axes = _panels(1)
    ax = axes[0]
    for method, m in rows.groupby("method"):
        m = m.sort_values("factor")
        ax.plot(m["factor"], m[speed[0]], marker="o", label=method, color=color(method))
    ax.axhline(1.0, color="black", ls="--", lw=1, label="dense")
    _log(ax)
    ax.set_xlabel("compression factor (x; log)")
    ax.set_ylabel("batch-1 inference speed-up over dense (x)")
    device = data.get("device", "") if isinstance(data, dict) else ""
    ax.set_title("F4  batch-1 inference speed-up vs CF" + (f" ({device})" if device else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out, "F4_speedup_vs_cf"), ""


def pareto(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points not dominated in (x, y), both minimized, sorted by x."""
    pts = points.dropna(subset=[x, y]).sort_values([x, y])
    return pts[pts[y] < pts[y].cummin().shift(fill_value=np.inf)]


def f5_pareto(runs: pd.DataFrame, trials: pd.DataFrame, out: Path) -> Made:
    runs = _main_setup(runs[(runs["status"] == "ok")] if not runs.empty else runs)
    if runs.empty or runs["targeted_stored"].isna().all():
        return [], "no finished runs"
    runs = runs[_targets(runs) == DEFAULT_TARGETS]
    latency = pd.DataFrame()
    if "latency_ms" in trials:
        latency = trials[(trials["state"] == "complete") & trials["latency_ms"].notna()]
    panels = [(task, "targeted_stored") for task in sorted(runs["task"].unique())]
    panels += [(study, "latency_ms") for study in sorted(latency["study"].unique())] if len(latency) else []
    fig, axes = _panels(len(panels))
    for ax, (name, x) in zip(axes, panels):
        if x == "targeted_stored":
            pts = runs[runs["task"] == name].rename(columns={"value": "y"})
            ax.set_xlabel("stored values, LSTM matrices (indices counted; log)")
            ylabel = _metric_label(pts["metric"].iloc[0])
        else:
            pts = latency[latency["study"] == name].rename(columns={"value": "y"})
            pts = pts.assign(method=pts["method"] if "method" in pts else "trial")
            ax.set_xlabel("batch-1 latency, LSTM matrices (ms; log)")
            ylabel = _metric_label(pts["objective"].iloc[0])
        for method, m in pts.groupby("method"):
            ax.scatter(m[x], m["y"], label=method, alpha=0.8, color=color(method))
        front = pareto(pts, x, "y")
        ax.step(front[x], front["y"], where="post", color="black", lw=1)
        ax.scatter(front[x], front["y"], s=90, facecolors="none", edgecolors="black", label="Pareto front")
        _log(ax)
        _log(ax, "y")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name}: metric vs {'size' if x == 'targeted_stored' else 'latency'}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("F5  Pareto fronts: metric vs stored size (and latency)", y=1.02)
    return _save(fig, out, "F5_pareto"), ""


def f6_embedding_softmax(summ: pd.DataFrame, out: Path) -> Made:
    if summ.empty:
        return [], "no runs"
    targets = _targets(summ)
    no_ft = summ["finetune_epochs"].fillna(-1).eq(0) if "finetune_epochs" in summ else False
    rows = _main_setup(summ[(targets != DEFAULT_TARGETS) & no_ft])
    if rows.empty:
        return [], "no runs compressing embedding or softmax without fine-tuning"
    dense = _main_setup(summ[summ["method"] == "dense"])
    names = sorted(rows["targets"].unique())
    fig, axes = _panels(len(names))
    for ax, target in zip(axes, names):
        sel = rows[rows["targets"] == target]
        _dense_line(ax, dense[dense["task"].isin(sel["task"])])
        for method, m in sel.groupby("method"):
            m = m.sort_values("cf")
            ax.plot(m["cf"], m["mean"], marker="o", label=method, color=color(method))
        _log(ax, "x")
        if sel["mean"].max() > 3 * sel["mean"].min():  # perplexity can explode without fine-tuning
            _log(ax, "y")
        ax.set_xlabel(f"achieved CF of {target} (x; log)")
        ax.set_ylabel(_metric_label(sel["metric"].iloc[0]))
        ax.set_title(f"{', '.join(sorted(sel['task'].unique()))}: {target}, no fine-tuning")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("F6  embedding / softmax compression without fine-tuning", y=1.02)
    return _save(fig, out, "F6_embedding_softmax"), ""


def make_figures(
    tables: str | Path, out: str | Path, options: dict[str, Any] | None = None
) -> dict[str, Made]:
    """Draw every figure that has data; ``options``: ``cmr_cf`` (F3's CF), ``bench`` (F4's benchmark JSON)."""
    tables, out, options = Path(tables), Path(out), options or {}
    runs, summ, epochs, trials = (_read(tables, n) for n in ("runs", "summary", "epochs", "trials"))
    makers: dict[str, Callable[[], Made]] = {
        "F1": lambda: f1_metric_vs_cf(summ, out),
        "F2": lambda: f2_cma(epochs, out, options.get("cmr_cf")),
        "F3": lambda: f3_metric_vs_cmr(summ, out, options.get("cmr_cf")),
        "F4": lambda: f4_speedup(Path(options.get("bench", "results/bench/infer.json")), out),
        "F5": lambda: f5_pareto(runs, trials, out),
        "F6": lambda: f6_embedding_softmax(summ, out),
    }
    made = {name: make() for name, make in makers.items()}
    out.mkdir(parents=True, exist_ok=True)
    notes = {name: note or [str(p) for p in paths] for name, (paths, note) in made.items()}
    (out / "index.json").write_text(json.dumps(notes, indent=2) + "\n")
    return made
