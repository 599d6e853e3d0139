"""The report as text: the summary table ``suite report`` prints, and the method settings a row differs in."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from .compressors import registry
from .compressors.accounting import format_cf
from .errors import ConfigError
from .record import format_metric
from .report import _cell


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


def _mean_std(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{format_metric(mean)} +- {format_metric(std)}" if np.isfinite(std) else format_metric(mean)


def format_table(df: pd.DataFrame) -> str:
    """Readable text: val and test as mean +- std, seeds as ok/asked (failed, pruned), the learning rate, CFs
    to two decimals rounded down, non-default settings; ``*`` marks a mean over fewer seeds than asked."""
    if df.empty:
        return "no finished runs under results/runs yet (run `suite train ...` first)"
    seeds = [
        f"{r.n_ok}/{r.n_asked}"
        + (f" ({r.n_failed} failed)" if r.n_failed else "")
        + (f" ({r.n_pruned} pruned)" if r.n_pruned else "")
        + ("*" if r.partial else "")
        for r in df.itertuples()
    ]
    show = pd.DataFrame(
        {
            "task": df["task"],
            "profile": df["profile"],
            "budget": df["budget"],
            "method": df["method"],
            "settings": [settings_text(row) for _, row in df.iterrows()],
            "lr": df["lr"].map(lambda x: f"{x:g}" if isinstance(x, (int, float)) and np.isfinite(x) else "-"),
            "CF asked": df["factor"].map(lambda x: f"{x:.3g}"),
            "CF": df["cf"].map(format_cf),
            "CF values": df["cf_values"].map(format_cf),
            "model CF": df["model_cf"].map(format_cf),
            "metric": df["metric"] + np.where(df["direction"] == "maximize", " (higher)", " (lower)"),
            "val mean +- std": [_mean_std(m, s) for m, s in zip(df["val_mean"], df["val_std"])],
            "test mean +- std": [_mean_std(m, s) for m, s in zip(df["test_mean"], df["test_std"])],
            "test ci95": df["test_ci95"].map(lambda x: format_metric(x) if np.isfinite(x) else "-"),
            "seeds": seeds,
        }
    )
    if "stale" in df and df["stale"].any():
        why = df["stale_reason"] if "stale_reason" in df else pd.Series(None, index=df.index)
        marks = [
            ("stale" + (f": {w}" if isinstance(w, str) else "")) if st else ""
            for st, w in zip(df["stale"], why)
        ]
        show.insert(0, "stale", marks)
    footer = "\nsettings and lr chosen on the validation metric; test reported for the choice"
    if df["partial"].any():
        footer += "; * = mean over fewer seeds than asked"
    return show.to_string(index=False) + footer
