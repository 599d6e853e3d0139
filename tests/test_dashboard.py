"""suite dashboard: W&B workspaces and reports built from hand-written records, offline, with no network."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from suite import dashboard
from suite.cli import main
from suite.compressors.registry import LSTM_TARGETS
from suite.record import Record
from suite.store import load_records
from suite.tracking import flatten
from suite.version import code_version

STUDY = "ptb-small-cf-smoke"


def _rows(metric: str, doped: bool, speed_key: str = "train_tokens_per_s") -> list[dict]:
    """Per-epoch rows as tracking.History writes them (Lightning's metrics plus lr, seconds, speed)."""
    rows = []
    for epoch in (1, 2):
        row = {"epoch": epoch, "lr": 1.0 / epoch, "train_loss": 5.0 / epoch, "val_loss": 5.2 / epoch}
        row[f"val_{metric}"] = 200.0 / epoch
        if doped:
            row.update(d_sparsity=0.5 * epoch, **{f"val_{metric}_without_d": 400.0 / epoch}, d_to_s_ratio=0.8)
        if metric == "ppl":
            row["train_ppl"] = 180.0 / epoch
        row.update(seconds=3.0, **{speed_key: 1000.0})
        rows.append(row)
    return rows


def _record(
    root: Path,
    task: str,
    method: str,
    run_id: str,
    final: dict,
    compress: dict,
    *,
    metric: dict,
    study: str | None = None,
    speed_key: str = "train_tokens_per_s",
) -> None:
    bare = next(iter(final)).partition("_")[2]
    config = {
        "task": task,
        "dataset": "ptb",
        "model": {"hidden": 16, "layers": 2, "dropout": 0.0, "init": 0.1},
        "train": {"epochs": 2, "batch_size": 4, "bptt": 8, "lr": 1.0, "train_fraction": 0.5},
        "method": method,
        "compress": {
            "factor": 1.0,
            "targets": list(LSTM_TARGETS),
            "init": "scratch",
            **compress,
        },
        "seed": 0,
        "profile": "smoke",
        "family": "lm",
        "wandb": "offline",
        "study": study,
        "trial": None,
        "run_id": run_id,
        "code_version": code_version("lm", method),
        "model_resolved": {"hidden": 16, "layers": 2, "vocab": 60},
        "epochs_run": 2,
        "data": {"vocab": 60},
    }
    factor = config["compress"]["factor"]
    record = {
        "run_id": run_id,
        "task": task,
        "method": method,
        "seed": 0,
        "status": "ok",
        "config": config,
        "code_version": code_version("lm", method),  # a run of the current code (tables leave out older ones)
        **metric,
        "final": final,
        "epochs": _rows(bare, doped=method.startswith("doped"), speed_key=speed_key),
        "accounting": {"cf": factor * 1.01, "cf_values": factor * 1.2, "model_cf": 1 + factor / 10},
        "timings": {"wall_s": 10.0, "train_s": 6.0, speed_key: 1000.0},
        "provenance": {},
    }
    path = root / "runs" / task / method / run_id / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))


@pytest.fixture()
def results(tmp_path) -> Path:
    """ptb-small (records of the current code: metric test_ppl, no direction): dense, kp at CF 4 and doped_kp at
    CF 4 with and without CMR, the compressed ones in a study; multi30k (new form: bleu, maximize): lmf at CF 2
    and 4, where the better test score belongs to the worse validation score."""
    root = tmp_path / "results"
    old = {"metric": "test_ppl"}
    _record(root, "ptb-small", "dense", "d0", {"val_ppl": 120.0, "test_ppl": 115.0}, {}, metric=old)
    _record(
        root,
        "ptb-small",
        "kp",
        "k4",
        {"val_ppl": 160.0, "test_ppl": 150.0},
        {"factor": 4.0},
        metric=old,
        study=STUDY,
    )
    for run_id, cmr, val, test in (("c0", 0.0, 150.0, 140.0), ("c5", 0.5, 145.0, 148.0)):
        final = {"val_ppl": val, "test_ppl": test}
        _record(
            root, "ptb-small", "doped_kp", run_id, final, {"factor": 4.0, "cmr": cmr}, metric=old, study=STUDY
        )
    new = {"metric": "bleu", "direction": "maximize"}
    for run_id, factor, val, test in (("l2", 2.0, 30.0, 29.0), ("l4", 4.0, 25.0, 40.0)):
        final = {"val_bleu": val, "test_bleu": test}
        _record(
            root,
            "multi30k",
            "lmf",
            run_id,
            final,
            {"factor": factor},
            metric=new,
            speed_key="train_sentences_per_s",
        )
    return root


@pytest.fixture(autouse=True)
def _no_network_no_login(monkeypatch, tmp_path):
    """Any connection attempt fails the test; no W&B credentials are visible."""

    def refuse(*args, **kwargs):
        raise AssertionError("the dashboard tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def _logged(records: list[Record]) -> dict[str, set[str]]:
    """The keys the W&B runs of these records log, written out here from what tracking says and History adds."""
    history, summary, config = set(), {"cf", "status"}, set()
    for r in records:
        for row in r.epochs:
            for k in row:
                own = k in ("lr", "train_ppl", "seconds") or k.endswith("_per_s")  # History logs them itself
                history.add(f"epoch/{k}" if own else k)
        summary |= {f"final.{k}" for k in r.final}
        config |= (
            set(flatten(r.config))
            | set(r.config["compress"])
            | {"achieved_cf", "model_cf", "metric", "direction", "lr"}
        )
    return {
        "history": history,
        "summary": summary | history,
        "config": config,
        "run": {"displayName", "state"},
    }


def _accessor(text: str) -> tuple[str, str]:
    """``config:factor.value`` -> (config, factor); ``summary:final.val_ppl`` -> (summary, final.val_ppl)."""
    section, _, name = text.partition(":")
    return section, name.removesuffix(".value") if section == "config" else name


def _panels(spec: dict) -> list[dict]:
    return [p for s in spec["spec"]["section"]["panelBankConfig"]["sections"] for p in s["panels"]]


def _referenced(spec: dict) -> set[tuple[str, str]]:
    """Every (section, key) a workspace definition names: panel axes and columns, filters, grouping, table."""
    out = set()
    for p in _panels(spec):
        c = p["config"]
        if p["viewType"] in ("Run History Line Plot", "Bar Chart"):
            out |= {("history", k) for k in c["metrics"] + ([c["xAxis"]] if "xAxis" in c else [])}
        if "groupBy" in c:
            out.add(("config", c["groupBy"].removesuffix(".value")))
        if p["viewType"] == "Scatter Plot":
            out |= {_accessor(c["xAxis"]), _accessor(c["yAxis"])}
        if p["viewType"] == "Parallel Coordinates Plot":
            out |= {_accessor(col["accessor"]) for col in c["columns"]}
    runset = spec["spec"]["section"]["runSets"][0]
    out |= {(f["key"]["section"], f["key"]["name"]) for f in runset["filters"]["filters"]}
    out |= {(g["section"], g["name"].removesuffix(".value")) for g in runset["grouping"]}
    out |= {_accessor(c) for c in runset["runFeed"]["columnPinned"]}
    out |= {(k["key"]["section"], k["key"]["name"]) for k in runset["sort"]["keys"]}
    return out


def _by_title(spec: dict) -> dict[str, dict]:
    return {p["config"].get("chartTitle", p["viewType"]): p for p in _panels(spec)}


def test_metric_of_reads_both_record_forms(results):
    recs = {r.run_id: r for r in load_records(results)}
    assert dashboard.metric_of(recs["d0"]) == ("ppl", "minimize")
    assert dashboard.metric_of(recs["l2"]) == ("bleu", "maximize")


def test_views_split_by_task_study_and_budget(results):
    records = load_records(results)
    names = [v.name for v in dashboard.views(records)]
    assert names == [
        f"study-{STUDY}-smoke-e2-f0.5",
        "task-multi30k-smoke-e2-f0.5",
        "task-ptb-small-smoke-e2-f0.5",
    ]
    assert [v.kind for v in dashboard.views(records, study=STUDY)] == ["study"]
    dense = next(r for r in records if r.method == "dense")
    dense.config["train"] = {**dense.config["train"], "epochs": 13}  # another training budget: its own view
    assert [v.name for v in dashboard.views(records, task="ptb-small")] == [
        f"study-{STUDY}-smoke-e2-f0.5",
        "task-ptb-small-smoke-e13-f0.5",
        "task-ptb-small-smoke-e2-f0.5",
    ]


def test_workspace_panels_name_logged_keys(results):
    records = load_records(results)
    for view in dashboard.views(records):
        spec = dashboard.spec_of(dashboard.workspace(view, "", "proj"))
        logged = _logged(view.records)
        missing = {(s, k) for s, k in _referenced(spec) if k not in logged[s]}
        assert not missing, f"{view.name}: keys no run logs: {missing}"


def test_ptb_workspace_sections_grouping_and_filters(results):
    view = next(v for v in dashboard.views(load_records(results)) if v.key == "ptb-small")
    spec = dashboard.spec_of(dashboard.workspace(view, "team", "proj"))
    sections = [s["name"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]]
    assert sections == [
        "ppl vs compression factor",
        "Learning curves",
        "Sweep at a glance",
        "Co-matrix adaptation (doped methods)",
        "Training throughput",
        "Runs",
    ]
    panels = _by_title(spec)
    for split, key in (("validation (selection)", "final.val_ppl"), ("test", "final.test_ppl")):
        scatter = panels[f"{split} ppl vs achieved CF (log x), one colour per method"]["config"]
        assert (scatter["xAxis"], scatter["yAxis"], scatter["xAxisLogScale"]) == (
            "config:achieved_cf.value",
            f"summary:{key}",
            True,
        )
    curve = panels["val_ppl by method and CF"]["config"]
    assert (curve["xAxis"], curve["metrics"]) == ("epoch", ["val_ppl"])
    columns = [c["accessor"] for c in panels["settings -> val ppl"]["config"]["columns"]]
    assert columns == [
        "config:method.value",
        "config:factor.value",
        "config:cmr.value",
        "config:train.lr.value",  # a flat dotted key, as train.py logs the config
        "summary:final.val_ppl",
    ]
    assert panels["val_ppl with and without D"]["config"]["metrics"] == ["val_ppl", "val_ppl_without_d"]
    assert panels["sparsity of D (d_sparsity)"]["config"]["metrics"] == ["d_sparsity"]
    assert panels["||(M * D) x|| / ||S x|| (d_to_s_ratio)"]["config"]["metrics"] == ["d_to_s_ratio"]
    speed = panels["train_tokens_per_s per method"]["config"]
    assert (speed["metrics"], speed["groupBy"]) == (["epoch/train_tokens_per_s"], "method.value")

    runset = spec["spec"]["section"]["runSets"][0]
    assert [g["name"] for g in runset["grouping"]] == [
        "method.value",
        "factor.value",
        "lr.value",
        "cmr.value",
    ]
    filters = {f["key"]["name"]: f["value"] for f in runset["filters"]["filters"]}
    assert filters == {
        "task": "ptb-small",
        "profile": "smoke",
        "train.epochs": 2,
        "train.train_fraction": 0.5,
        "code_version": sorted(
            {code_version("lm", m) for m in ("dense", "kp", "doped_kp")}
        ),  # current code only
    }
    assert list(runset["runFeed"]["columnPinned"]) == [
        "run:displayName",
        "config:method.value",
        "config:factor.value",
        "config:achieved_cf.value",
        "config:model_cf.value",
        "summary:final.val_ppl",
        "summary:final.test_ppl",
        "summary:status",
        "run:state",
    ]
    assert runset["sort"]["keys"][0] == {
        "key": {"section": "summary", "name": "final.val_ppl"},
        "ascending": True,
    }
    assert (spec["entity"], spec["project"]) == ("team", "proj")


def test_bleu_workspace_follows_the_record_metric(results):
    view = next(v for v in dashboard.views(load_records(results)) if v.key == "multi30k")
    spec = dashboard.spec_of(dashboard.workspace(view, "", "proj"))
    panels = _by_title(spec)
    assert "Co-matrix adaptation (doped methods)" not in {
        s["name"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]
    }
    assert panels["val_bleu by method and CF"]["config"]["metrics"] == ["val_bleu"]
    assert panels["train_sentences_per_s per method"]["config"]["metrics"] == ["epoch/train_sentences_per_s"]
    columns = panels["settings -> val bleu"]["config"]["columns"]
    assert columns[-1] == {"accessor": "summary:final.val_bleu", "displayName": "val bleu", "inverted": True}
    runset = spec["spec"]["section"]["runSets"][0]
    assert runset["sort"]["keys"][0]["ascending"] is False  # higher BLEU first


def test_report_text_selects_on_validation(results):
    views = {v.key: v for v in dashboard.views(load_records(results))}
    for key, expected in (
        ("multi30k", "| lmf | lr=1 | 2.02 | 30.00 | 29.00 | 1/1 |"),
        (
            STUDY,
            "| doped_kp | cmr=0.5 lr=1 | 4.04 | 145.00 | 148.00 | 1/1 |",
        ),  # not cmr 0: worse val, better test
    ):
        rep = dashboard.report(views[key], "", "proj")
        spec = dashboard.spec_of(rep)
        blocks = spec["spec"]["blocks"]
        text = next(b["content"] for b in blocks if b["type"] == "markdown-block")
        assert expected in text, text
        assert "150.00 | 140.00" not in text  # doped_kp without CMR: worse val, better test, never chosen
        assert "**Budget** profile smoke, 2 epochs, 50% of the training data; **seeds** 0" in text
        grids = [b for b in blocks if b["type"] == "panel-grid"]
        assert grids and all(
            "project" not in g["metadata"]["runSets"][0] for g in grids
        )  # offline: no lookup
    cma = next(
        b
        for b in dashboard.spec_of(dashboard.report(views[STUDY], "", "proj"))["spec"]["blocks"]
        if b["type"] == "panel-grid" and "d_sparsity" in json.dumps(b)
    )
    methods = [f for f in cma["metadata"]["runSets"][0]["filters"]["filters"] if f["key"]["name"] == "method"]
    assert methods == [
        {
            "key": {"section": "config", "name": "method"},
            "op": "IN",
            "value": ["doped_kp"],
            "disabled": False,
            "connector": "AND",
        }
    ]


def test_cli_writes_offline_definitions(results, capsys):
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.workspaces import internal

    assert main(["dashboard", "--results", str(results)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("offline definitions only; to publish: `wandb login`, then `suite dashboard")
    assert out[-1].endswith("--publish`")
    files = sorted((results / "dashboards" / "workspaces").glob("*.json"))
    assert [f.stem for f in files] == [
        f"study-{STUDY}-smoke-e2-f0.5",
        "task-multi30k-smoke-e2-f0.5",
        "task-ptb-small-smoke-e2-f0.5",
    ]
    first = [f.read_text() for f in files]
    loaded = ws.Workspace._from_model(
        internal.View.model_validate(json.loads(first[-1]))
    )  # the library reads it
    assert loaded.name == "ptb-small: smoke, 2 epochs, train fraction 0.5"
    assert main(["dashboard", "--results", str(results), "--study", STUDY, "--report"]) == 0
    reports = list((results / "dashboards" / "reports").glob("*.json"))
    assert [p.stem for p in reports] == [f"study-{STUDY}-smoke-e2-f0.5"]
    json.loads(reports[0].read_text())
    assert main(["dashboard", "--results", str(results)]) == 0
    assert [f.read_text() for f in files] == first  # the same records give the same definitions
    assert not list(results.glob("dashboards/**/.*tmp*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--publish"], "no W&B login"),
        (["--task", "nope"], "no runs of task nope"),
    ],
)
def test_cli_errors_are_one_line(results, capsys, args, message):
    assert main(["dashboard", "--results", str(results), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (results / "dashboards").exists()


def test_cli_without_results(tmp_path, capsys):
    assert main(["dashboard", "--results", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: no runs under")


def test_history_keys_of_a_real_doped_run(tiny_preset, tmp_path, monkeypatch):
    """The per-epoch keys the panels name are columns of a trained run's Lightning log, which gets what W&B gets."""
    import csv

    from suite.config import load_run
    from suite.train import train

    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = tmp_path / "real"
    cfg = load_run(
        tiny_preset, "doped_kp", 4, None, {"results_dir": str(results), "profile": "smoke", "cmr": 0.5}
    )
    rec = train(cfg, progress_bar=False)
    with open(results / "runs" / rec.task / rec.method / rec.run_id / "csv" / "metrics.csv") as f:
        logged = set(next(csv.reader(f)))
    (view,) = dashboard.views([rec])
    spec = dashboard.spec_of(dashboard.workspace(view, "", "proj"))
    history = {k for s, k in _referenced(spec) if s == "history"}
    assert {"epoch", "val_ppl", "d_sparsity", "val_ppl_without_d", "epoch/train_tokens_per_s"} <= history
    assert history <= logged, history - logged


def test_an_epochs_cpu_seconds_leave_out_the_time_the_run_was_not_running(tiny_preset, tmp_path, monkeypatch):
    """A run paused (SIGSTOP) or waiting for a core shows it in ``seconds`` but not in ``cpu_seconds``."""
    import time

    import lightning.pytorch as pl

    from suite.config import load_run
    from suite.train import train

    class Nap(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                time.sleep(0.5)  # no CPU used, as when paused

    monkeypatch.setenv("WANDB_MODE", "disabled")
    sets = {"results_dir": str(tmp_path / "r"), "profile": "smoke", "epochs": 1}
    rec = train(load_run(tiny_preset, "dense", sets=sets), callbacks=[Nap()], progress_bar=False)
    (row,) = rec.epochs
    assert 0 < row["cpu_seconds"] and row["seconds"] - row["cpu_seconds"] > 0.4


def test_publish_failure_is_one_line(results, capsys, monkeypatch):
    import wandb_workspaces.workspaces as ws

    def offline(self):
        raise ConnectionError("no route to host")

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(ws.Workspace, "save", offline)
    assert main(["dashboard", "--results", str(results), "--entity", "team", "--publish"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not save") and "no route to host" in err and err.count("\n") == 1


def test_login_is_read_from_the_environment_or_netrc(tmp_path, monkeypatch):
    assert not dashboard.logged_in()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert dashboard.logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not dashboard.logged_in()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert dashboard.logged_in()
