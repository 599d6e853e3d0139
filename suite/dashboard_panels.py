"""The panels of the comparison dashboards (wandb_workspaces objects), shared by workspaces and reports.

Every key a panel names is one the runs log (``suite.tracking``): history keys for line plots (x =
``epoch``, which Lightning logs beside each of its metrics), summary keys (``final.val_<metric>``, ``status``) and
config keys (``method``, ``factor``, the rates the methods sweep, ``achieved_cf``, ``train.lr``). A panel whose key no run of the view
logs is left out.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from matplotlib.colors import TABLEAU_COLORS

if TYPE_CHECKING:
    from .compressors.registry import Diagnostics
    from .tracking import Keys

#: One colour per method (matplotlib's tab10), the same in every view.
PALETTE = tuple(TABLEAU_COLORS.values())


@dataclass
class Panels:
    """What the panels of one view depend on: its metric and direction, the keys its runs log, its methods."""

    metric: str
    direction: str
    keys: Keys
    diagnosed: dict[Diagnostics, list[str]]
    """The view's methods whose runs log per-epoch diagnostics, per diagnostics their methods declare."""
    swept: list[str]
    """The rates the registered methods' figures sweep (``Diagnostics.setting``)."""
    methods: list[str]

    @property
    def val_key(self) -> str:
        return f"final.val_{self.metric}"

    @property
    def grouping(self) -> list[str]:
        """Runs are grouped by method, CF and learning rate (and the swept rate where runs that log diagnostics
        are compared), seeds averaged."""
        keys = ["method", "factor", "lr"] + list(dict.fromkeys(d.setting.key for d in self.diagnosed))
        return [k for k in keys if k in self.keys.config]

    @property
    def restricted(self) -> dict[str, list[str]]:
        """Title of each diagnostics section -> the methods its runs are of."""
        return {diagnostics_title(d): methods for d, methods in self.diagnosed.items()}

    @property
    def columns(self) -> list[str]:
        """The runs table's pinned columns (``<section>:<key>``; config values sit under ``.value``)."""
        config = [k for k in ("method", "factor", "achieved_cf", "model_cf") if k in self.keys.config]
        finals = [f"final.{s}_{self.metric}" for s in ("val", "test")] + ["status"]
        return (
            ["run:displayName"]
            + [f"config:{k}.value" for k in config]
            + [f"summary:{k}" for k in finals if k in self.keys.summary]
            + ["run:state"]
        )

    @property
    def colors(self) -> dict[str, str]:
        """Method -> colour of its group (the first grouping level)."""
        return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(self.methods)}


@functools.cache
def _flat_config_column():
    import wandb_workspaces.reports.v2 as wr
    from pydantic.dataclasses import dataclass as pydantic_dataclass
    from wandb_workspaces.reports.v2.interface import dataclass_config

    @pydantic_dataclass(config=dataclass_config, repr=False)
    class FlatConfigColumn(wr.ParallelCoordinatesPlotColumn):
        """A column of a flat dotted config key: train.py logs the flattened config, so W&B stores
        ``{"train.lr": {"value": ...}}`` and the accessor is ``config:train.lr.value``, where the library's
        Config column assumes a nested dict (``config:train.value.lr``)."""

        def _to_model(self):
            model = super()._to_model()
            model.accessor = f"config:{self.metric.name}.value"
            return model

    return FlatConfigColumn


def diagnostics_title(d: Diagnostics) -> str:
    """A diagnostics section's title: what they show, and which methods log them."""
    return f"{d.title[:1].upper()}{d.title[1:]} ({d.methods} methods)"


def _line(wr, title: str, y: list[str]):
    return wr.LinePlot(
        title=title, x="epoch", y=y, groupby_aggfunc="mean", groupby_rangefunc="minmax", title_x="epoch"
    )


def sections(p: Panels) -> list[tuple[str, list[Any]]]:
    """(title, panels) of each section with at least one panel whose keys the runs log."""
    import wandb_workspaces.reports.v2 as wr

    m, hist, summ, conf = p.metric, p.keys.history, p.keys.summary, p.keys.config
    val, test = f"val_{m}", f"test_{m}"
    out: list[tuple[str, list[Any]]] = []

    scatter = [
        wr.ScatterPlot(
            title=f"{label} {m} vs achieved CF (log x), one colour per method",
            x=wr.Config("achieved_cf"),
            y=wr.SummaryMetric(f"final.{key}"),
            log_x=True,
        )
        for key, label in ((val, "validation (selection)"), (test, "test"))
        if f"final.{key}" in summ and "achieved_cf" in conf
    ]
    out.append((f"{m} vs compression factor", scatter))

    curves = [
        _line(wr, f"{key} by method and CF", [key]) for key in (val, "val_loss", "train_loss") if key in hist
    ]
    out.append(("Learning curves", curves))

    names = ["method", "factor", *p.swept]
    columns = [wr.ParallelCoordinatesPlotColumn(wr.Config(k), display_name=k) for k in names if k in conf]
    if "train.lr" in conf:
        columns.append(_flat_config_column()(wr.Config("train.lr"), display_name="train.lr"))
    if p.val_key in summ:
        columns.append(
            wr.ParallelCoordinatesPlotColumn(
                wr.SummaryMetric(p.val_key), display_name=f"val {m}", inverted=p.direction == "maximize"
            )
        )
    sweep = (
        [wr.ParallelCoordinatesPlot(title=f"settings -> val {m}", columns=columns)]
        if len(columns) > 1
        else []
    )
    out.append(("Sweep at a glance", sweep))

    for d in p.diagnosed:
        lines = (
            (f"{d.schedule.label} ({d.schedule.key})", [d.schedule.key]),
            (f"{val} with and without {d.part}", [val, f"{val}{d.without}"]),
            *((f"{c.label} ({c.key})", [c.key]) for c in d.extra),
        )
        panels = [
            _line(wr, title, [k for k in keys if k in hist]) for title, keys in lines if keys[-1] in hist
        ]
        out.append((diagnostics_title(d), panels))

    speed = [
        wr.BarPlot(
            title=f"{key.removeprefix('epoch/')} per method",
            metrics=[key],
            groupby=wr.Config("method"),
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        )
        for key in sorted(hist)
        if re.fullmatch(r"epoch/train_\w+_per_s", key) and "method" in conf
    ]
    out.append(("Training throughput", speed))

    out.append(("Runs", [wr.RunComparer(diff_only="split")]))
    return [(title, panels) for title, panels in out if panels]
