"""Plotting pieces the paper figures share: panels, log axes, one colour per method, metric labels, the rule that
one panel shows one setup (never mixed profiles or budgets), error bars of chosen settings, Pareto fronts, and
the CSV of plotted points written beside each figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import tasks  # noqa: E402
from .compressors import registry  # noqa: E402
from .errors import SuiteError  # noqa: E402
from .files import atomic  # noqa: E402
from .report import DEFAULT_TARGETS, best_by_val  # noqa: E402


def save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path, dpi in zip(paths, (150, None)):
        with atomic(path, "figure") as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=dpi or "figure", bbox_inches="tight")
    plt.close(fig)
    return paths


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    with atomic(path, "table") as tmp:
        table.to_csv(tmp, index=False)
    return path


def subplots_row(n: int, width: float = 5.2, height: float = 3.8):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def log_axis(ax, which: str = "x") -> None:
    """Log scale with plain numbers at 1, 2, 5 x 10^k (no crowded minor labels)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    narrow = lo > 0 and hi / lo < 4  # under a factor 4 the 1-2-5 ticks leave an axis with one label or none
    axis.set_major_locator(ticker.MaxNLocator(6) if narrow else ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _index(method: str) -> int:
    names = registry.available()
    return names.index(method) if method in names else len(names) + sum(map(ord, method)) % 7


def color(method: str):
    """One colour per method in every figure, distinct for up to 20 methods (the registry's order: tab20's dark
    shades first, then its light ones; methods it does not know come after)."""
    i = _index(method) % 20
    return plt.get_cmap("tab20")(2 * i if i < 10 else 2 * (i - 10) + 1)


def marker(method: str) -> str:
    """One marker per method as well, so that methods stay apart in print and for colour-blind readers."""
    return "osD^vP*Xhp<>d8H"[_index(method) % 15]


def metric_label(metric: str, direction: str | None = None, split: str = "test") -> str:
    """``test perplexity (lower is better)``: the label and direction its family gives the metric."""
    known = tasks.metric(metric)
    name = (known.label or metric) if known else metric
    if direction is None:
        direction = known.direction if known else "minimize"
    better = "lower" if direction == "minimize" else "higher"
    return f"{split} {name} ({better} is better)"


class MixedBudgets(SuiteError):
    """Rows of different profiles or training budgets were about to share a curve, a front or a panel."""


def one_setup(rows: pd.DataFrame, what: str) -> pd.DataFrame:
    """``rows`` if they share one setup (task, data, model, profile, training budget), else MixedBudgets."""
    if "setup_id" in rows and rows["setup_id"].nunique() > 1:
        kinds = rows.drop_duplicates("setup_id")
        desc = "; ".join(f"{r.task} {r.profile} {r.budget}" for r in kinds.itertuples())
        raise MixedBudgets(f"{what} would mix profiles or training budgets ({desc}); draw one per setup")
    return rows


def setups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per task and setup: one panel each, so budgets and profiles never share one."""
    out = []
    for (task, _), rows in df.groupby(["task", "setup_id"], sort=True):
        first = rows.iloc[0]
        out.append((f"{task} ({first['profile']}, {first['budget']})", rows))
    return out


def targets_of(df: pd.DataFrame) -> pd.Series:
    return df["targets"].fillna(DEFAULT_TARGETS) if "targets" in df else pd.Series(DEFAULT_TARGETS, df.index)


def metric_axis(ax, metric: str) -> None:
    """The metric's axis (y) on the scale its family gives it (log for perplexity)."""
    known = tasks.metric(metric)
    if known is not None and known.scale == "log":
        log_axis(ax, "y")


def dense_line(ax, rows: pd.DataFrame) -> None:
    dense = rows[rows["method"] == "dense"]
    if len(dense):
        best = best_by_val(dense, ["setup_id"])
        ax.axhline(best["test_mean"].iloc[0], color="black", ls="--", lw=1, label="dense (CF 1)")


def errorbar(ax, pts: pd.DataFrame, x: str, label: str, method: str, linestyle: str = "-") -> None:
    """Test metric of chosen settings with its 95% CI; a mean over fewer seeds than asked is drawn hollow."""
    err = pts["test_ci95"].where(np.isfinite(pts["test_ci95"]), 0)
    line = ax.errorbar(
        pts[x],
        pts["test_mean"],
        yerr=err,
        marker=marker(method),
        capsize=3,
        label=label,
        color=color(method),
        linestyle=linestyle,
    )
    partial = pts[pts["partial"].astype(bool)] if "partial" in pts else pts.iloc[:0]
    if len(partial):
        ax.scatter(
            partial[x],
            partial["test_mean"],
            s=90,
            facecolors="white",
            edgecolors=line[0].get_color(),
            zorder=3,
        )


#: The columns of the plotted points: which configuration a point is, then (after the settings the methods
#: sweep, as the registry declares them) its learning rate and results.
POINT_KEYS = ("panel", "task", "profile", "budget", "method", "factor", "targets")
POINT_RESULTS = ("lr", "cf", "val_mean", "test_mean", "test_ci95", "n_ok", "n_asked", "partial", "config_id")


def points_csv(frames: list[pd.DataFrame], path: Path) -> Path:
    """The plotted points beside the figure: which configuration each is, its val and test metric."""
    table = pd.concat(frames, ignore_index=True)
    columns = [*POINT_KEYS, *registry.swept_settings(), *POINT_RESULTS]
    return write_csv(table[[c for c in columns if c in table]], path)


def pareto(points: pd.DataFrame, x: str, y: str, direction: str = "minimize") -> pd.DataFrame:
    """The points not dominated in (x minimized, y in ``direction``), sorted by x."""
    pts = points.dropna(subset=[x, y])
    key = pts[y] if direction == "minimize" else -pts[y]
    pts = pts.assign(_k=key).sort_values([x, "_k"])
    return pts[pts["_k"] < pts["_k"].cummin().shift(fill_value=np.inf)].drop(columns="_k")
