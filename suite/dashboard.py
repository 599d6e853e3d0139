"""W&B dashboards that compare methods, built from the records with W&B's workspace library.

One workspace (saved view) per task or study and training budget, or (``suite dashboard --report``) one report
per study.
Offline first: the definitions are written as the library serializes them (results/dashboards/); publishing
(``Workspace.save``, ``Report.save``) needs a login and happens only when asked. wandb_workspaces is imported
inside the functions that use it, so training never needs it.
"""

from __future__ import annotations

import hashlib
import netrc
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .dashboard_panels import Panels, sections
from .errors import ConfigError, SuiteError
from .record import Record, format_metric, write_json
from .tracking import DEFAULT_PROJECT, logged_keys


def metric_of(record: Record) -> tuple[str, str]:
    """(bare metric name, direction) of a record: ("ppl", "minimize"), ("bleu", "maximize"). Records of before
    bare names (``metric: "test_ppl"``) are read as ("ppl", "minimize") by ``Record.from_dict``."""
    return record.metric, record.direction


@dataclass
class View:
    """The runs one workspace or report compares: one task or study at one profile and training budget."""

    kind: str
    """``task`` or ``study``."""
    key: str
    profile: str
    epochs: int
    train_fraction: float
    records: list[Record]
    metric: str
    direction: str

    @property
    def name(self) -> str:
        """File stem: task-ptb-small-smoke-e1-f0.5."""
        stem = f"{self.kind}-{self.key}-{self.profile}-e{self.epochs}-f{self.train_fraction:g}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)

    @property
    def budget(self) -> str:
        share = "all" if self.train_fraction == 1 else f"{self.train_fraction:.0%}"
        return f"profile {self.profile}, {self._epochs}, {share} of the training data"

    @property
    def title(self) -> str:
        return f"{self.key}: {self.profile}, {self._epochs}, train fraction {self.train_fraction:g}"

    @property
    def _epochs(self) -> str:
        return f"{self.epochs} epoch" + ("s" if self.epochs != 1 else "")

    def filters(self) -> list[Any]:
        """The runset's filters: the task or study, one profile, one training budget, and the code versions of
        the view's runs (the current code's: tables leave older runs out)."""
        from wandb_workspaces import expr

        keep = {
            self.kind: self.key,
            "profile": self.profile,
            "train.epochs": self.epochs,
            "train.train_fraction": self.train_fraction,
        }
        versions = sorted({r.code_version for r in self.records if r.code_version})
        return [expr.Config(k) == v for k, v in keep.items()] + [expr.Config("code_version").isin(versions)]


def _budget(r: Record) -> tuple[str, int, float]:
    train = r.config.get("train", {})
    return r.config.get("profile"), train.get("epochs"), train.get("train_fraction")


def views(records: list[Record], task: str | None = None, study: str | None = None) -> list[View]:
    """One view per task (unless ``study`` is given) and per study, split by profile and training budget."""
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        if (task and r.task != task) or (study and r.config.get("study") != study):
            continue
        if study is None:
            groups.setdefault(("task", r.task, *_budget(r)), []).append(r)
        if r.config.get("study"):
            groups.setdefault(("study", r.config["study"], *_budget(r)), []).append(r)
    out = []
    for (kind, key, profile, epochs, fraction), recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        metrics = {metric_of(r) for r in recs}
        if len(metrics) > 1:
            raise ConfigError(f"the runs of {kind} {key} disagree on their metric: {sorted(metrics)}")
        ((metric, direction),) = metrics
        out.append(View(kind, key, profile, epochs, fraction, recs, metric, direction))
    return out


def summary_text(view: View) -> str:
    """The report's text: task, budget, seeds, and per method and asked CF (and targets) the setting chosen on
    the mean validation metric over its seeds, learning rate included, with its test metric: the report's own
    choice (``report.selected``)."""
    from .compressors.accounting import format_cf
    from .report import runs_frame, selected, summary
    from .report_text import settings_text

    m, tasks = view.metric, sorted({r.task for r in view.records})
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in view.records}))
    counts = {s: sum(r.status == s for r in view.records) for s in ("ok", "failed", "pruned")}
    lines = [
        f"**Task** {', '.join(tasks)}" + (f" (study {view.key})" if view.kind == "study" else ""),
        "",
        f"**Budget** {view.budget}; **seeds** {seeds}; "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + f" of {len(view.records)} runs.",
        "",
        f"Setting per method and CF (learning rate included), chosen on the validation {m} ({view.direction}d); "
        f"the test {m} is reported for what was chosen, averaged over its seeds (n: finished / asked).",
        "",
        f"| method | setting | CF | val {m} | test {m} | n |",
        "|---|---|---|---|---|---|",
    ]
    chosen = [r for _, r in selected(summary(runs_frame(view.records))).iterrows()]
    for r in sorted(chosen, key=lambda r: (r["method"] != "dense", r["method"], r["factor"])):
        setting = settings_text(r)
        lr = r.get("lr")
        if isinstance(lr, (int, float)) and lr == lr:
            setting = f"{setting} lr={lr:g}" if setting != "-" else f"lr={lr:g}"
        lines.append(
            f"| {r['method']} | {setting} | {format_cf(r['cf'])} | {format_metric(r['val_mean'])} | "
            f"{format_metric(r['test_mean'])} | {int(r['n_ok'])}/{int(r['n_asked'])} |"
        )
    return "\n".join(lines)


def _digest(*parts: Any) -> str:
    """A stable id, so that the same records give the same definitions byte for byte."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:11]


def _panels(view: View) -> Panels:
    from .compressors import registry

    logging = {
        r.method
        for r in view.records
        for d in registry.diagnosed([r.method])
        if any(d.schedule.key in row for row in r.epochs)
    }
    return Panels(
        metric=view.metric,
        direction=view.direction,
        keys=logged_keys(view.records),
        diagnosed=registry.diagnosed(logging),
        swept=list(registry.swept_settings()),
        methods=sorted({r.method for r in view.records}),
    )


def workspace(view: View, entity: str, project: str):
    """The view's W&B workspace: sections of panels over one runset filtered to the view's runs."""
    import wandb_workspaces.workspaces as ws

    spec = _panels(view)
    built = []
    for title, panels in sections(spec):
        for i, panel in enumerate(panels):
            panel._id = _digest(view.name, title, i)
        built.append(ws.Section(name=title, panels=panels, is_open=True))
    w = ws.Workspace(
        entity=entity,
        project=project,
        name=view.title,
        sections=built,
        settings=ws.WorkspaceSettings(max_runs=max(10, len(view.records))),
        runset_settings=ws.RunsetSettings(
            filters=ws.And(*view.filters()),
            groupby=[ws.Config(k) for k in spec.grouping],
            order=[ws.Ordering(ws.Summary(spec.val_key), ascending=view.direction == "minimize")],
            pinned_columns=spec.columns,
            group_colors=spec.colors,
        ),
    )
    object.__setattr__(w, "_internal_runset_id", _digest(view.name, "runset"))
    return w


def report(view: View, entity: str, project: str, resolve_runsets: bool = False):
    """The view's W&B report: the generated text, then each section as a panel grid over its own runset.

    ``resolve_runsets``: name the project in each runset (the library looks its id up online, so only when
    publishing; an offline definition's runsets use the report's project)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    spec = _panels(view)
    where = {"entity": entity, "project": project} if resolve_runsets else {}
    blocks = [wr.MarkdownBlock(text=summary_text(view))]
    for title, panels in sections(spec):
        filters = view.filters()
        if title in spec.restricted:
            filters.append(expr.Config("method").isin(spec.restricted[title]))
        for i, panel in enumerate(panels):
            panel._id = _digest(view.name, "report", title, i)
        runset = wr.Runset(
            **where,
            name=view.key,
            filters=expr.And(*filters),
            groupby=[f"config.{k}" for k in spec.grouping],
            order=[wr.OrderBy(wr.SummaryMetric(spec.val_key), ascending=view.direction == "minimize")],
            pinned_columns=spec.columns,
        )
        runset._id = _digest(view.name, "report", title, "runset")
        blocks += [wr.H2(text=title), wr.PanelGrid(runsets=[runset], panels=panels)]
    return wr.Report(
        entity=entity,
        project=project,
        title=view.title,
        description=f"{view.key}: methods compared at {view.budget}",
        blocks=blocks,
        width="fluid",
    )


def spec_of(obj) -> dict[str, Any]:
    """A workspace's or report's definition as the library serializes it (what ``save`` uploads)."""
    return obj._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def logged_in() -> bool:
    """Whether W&B credentials are at hand (WANDB_API_KEY or a netrc entry for the W&B host); no network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


@dataclass
class Made:
    """What ``dashboards`` did: the definitions written and, when published, their URLs."""

    files: list[Path]
    urls: list[str]
    views: list[View]


def dashboards(
    results: str | Path = "results",
    *,
    task: str | None = None,
    study: str | None = None,
    entity: str | None = None,
    project: str | None = None,
    report_only: bool = False,
    publish: bool = False,
    out: str | Path | None = None,
) -> Made:
    """Build the workspaces (or, with ``report_only``, a report per study; per task where there is no study),
    write their definitions under ``out`` (default results/dashboards) and, with ``publish``, save them."""
    if publish and not logged_in():
        raise SuiteError("no W&B login (no WANDB_API_KEY, no netrc entry); run `wandb login` first")
    from .report import load

    records, _ = load(results)  # each run once, runs of older code left out as in the tables
    if not records:
        raise ConfigError(
            f"no runs under {Path(results) / 'runs'}; train some first (`suite train`, `dvc repro`)"
        )
    chosen = views(records, task, study)
    if not chosen:
        known = sorted(
            {r.config.get("study") for r in records if r.config.get("study")}
            if study
            else {r.task for r in records}
        )
        what = f"study {study}" if study else f"task {task}"
        raise ConfigError(f"no runs of {what} under {results}; known: {', '.join(known) or 'none'}")
    if report_only:
        chosen = [v for v in chosen if v.kind == "study"] or chosen
    project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    entity = entity or os.environ.get("WANDB_ENTITY") or ""
    if publish and not entity:
        entity = _default_entity()

    def build(view: View, online: bool = False):
        if report_only:
            return report(view, entity, project, resolve_runsets=online)
        return workspace(view, entity, project)

    folder = Path(out or Path(results) / "dashboards") / ("reports" if report_only else "workspaces")
    files = []
    for view in chosen:
        path = folder / f"{view.name}.json"
        write_json(path, spec_of(build(view)))  # atomically: temp file and os.replace
        files.append(path)
    urls = [_save(view.title, lambda v=view: build(v, online=True)) for view in chosen] if publish else []
    return Made(files, urls, chosen)


def _default_entity() -> str:
    try:
        import wandb

        return wandb.Api().default_entity or ""
    except Exception as e:  # no network, a revoked key: one line, not a traceback
        raise SuiteError(
            f"could not ask W&B for your entity ({type(e).__name__}: {e}); pass --entity"
        ) from None


def _save(title: str, make) -> str:
    """Build (a report's runsets look their project up online) and save one definition; its URL."""
    try:
        obj = make()
        obj.save()
        return obj.url
    except Exception as e:  # no network, a revoked key, a missing project: one line, not a traceback
        raise SuiteError(
            f"could not save {title!r} to W&B ({type(e).__name__}: {e}); check the network and `wandb login`"
        ) from None
