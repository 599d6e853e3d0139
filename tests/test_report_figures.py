"""Tables and paper figures from records, and the pipeline's parameters, stages and sweep specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sweep_fixtures import ROOT, one_thread, write_corpus

from suite.cli import main
from suite.compressors.registry import LSTM_TARGETS
from suite.figures import make_figures
from suite.pipeline import load_params
from suite.plots import pareto
from suite.record import Record
from suite.report import load, runs_frame, selected, summary
from suite.store import run_dir
from suite.sweep import load_spec
from suite.version import code_version


def fake_record(
    results: Path,
    method: str,
    factor: float,
    seed: int,
    ppl: float,
    val: float | None = None,
    lr: float = 1.0,
    status: str = "ok",
    train: dict | None = None,
    seeds: list[int] | None = None,
    **compress,
) -> Record:
    """A finished run as train() records it, with made-up numbers (figures need shapes, not training)."""
    compress = {
        "factor": factor,
        "targets": list(LSTM_TARGETS),
        "init": "scratch",
        "finetune_epochs": None,
        **compress,
    }
    config = {
        "task": "tiny",
        "family": "lm",
        "dataset": "ptb",
        "model": {"hidden": 8},
        "train": {"epochs": 3, "lr": lr, **(train or {})},
        "method": method,
        "compress": compress,
        "seed": seed,
        "seeds": seeds,
        "profile": "smoke",
        "study": None,
    }
    epochs = []
    for e in range(1, 4):
        row = {"epoch": e, "lr": 1.0, "val_ppl": ppl + 30 / e}
        if "cmr" in compress:  # what a doped method logs while annealing
            row.update(d_sparsity=0.3 * e, val_ppl_without_d=ppl + 60 / e + 20 * (compress["cmr"] == 0))
        epochs.append(row)
    stored = 1000 / factor
    rec = Record(
        run_id=f"{method}{factor:g}{seed}{abs(hash(str(config))) % 10**8}",
        task="tiny",
        method=method,
        seed=seed,
        status=status,
        config=config,
        code_version=code_version("lm", method),
        final={"val_ppl": ppl + 1 if val is None else val, "test_ppl": ppl} if status == "ok" else {},
        epochs=epochs,
        accounting={
            "cf": factor * 0.98,
            "cf_values": factor,
            "model_cf": 1 + factor / 10,
            "targeted_stored": stored,
            "model_stored": stored + 500,
        },
    )
    rec.save(run_dir(results, "tiny", method, rec.run_id) / "record.json")
    return rec


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    for seed, noise in ((0, 0.0), (1, 2.0)):
        fake_record(out, "dense", 1, seed, 100 + noise)
        for f in (2, 4, 8):
            fake_record(out, "small_dense", f, seed, 110 + 5 * f + noise)
            fake_record(out, "svd", f, seed, 105 + 4 * f + noise, init="trained", finetune_epochs=0)
            for cmr in (0.0, 0.5):
                fake_record(out, "doped_kp", f, seed, 104 + 2 * f - 4 * cmr + noise, cmr=cmr)
        for f in (4, 16):
            fake_record(
                out,
                "svd",
                f,
                seed,
                150 + 10 * f,
                targets=["decoder.weight"],
                init="trained",
                finetune_epochs=0,
            )
    sweeps = out / "sweeps" / "tiny-pareto"
    sweeps.mkdir(parents=True)
    pd.DataFrame(
        {
            "study": "tiny-pareto-smoke",
            "number": [0, 1, 2],
            "state": "complete",
            "objective": "val_ppl",
            "direction": "minimize",
            "value": [120.0, 130.0, 125.0],
            "val_ppl": [120.0, 130.0, 125.0],
            "latency_ms": [0.3, 0.1, 0.5],
            "factor": [2, 8, 4],
            "epochs": 3,
        }
    ).to_csv(sweeps / "tiny-pareto-smoke.csv", index=False)
    return out


def test_summary_is_per_configuration_with_ci_over_seeds(results):
    summ = summary(runs_frame(load(results)[0]))
    assert (summ["n_ok"] == 2).all() and not summ["partial"].any()  # two seeds each; configurations not mixed
    assert len(summ) == 1 + 3 + 3 + 6 + 2
    row = summ[(summ["method"] == "small_dense") & (summ["factor"] == 4)].iloc[0]
    assert row["test_mean"] == pytest.approx(131) and row["test_std"] == pytest.approx(np.sqrt(2))
    assert row["val_mean"] == pytest.approx(132)
    assert row["test_ci95"] == pytest.approx(
        12.706 * np.sqrt(2) / np.sqrt(2), rel=1e-3
    )  # t(0.975, 1) * s / sqrt(n)
    assert set(summ[summ["method"] == "doped_kp"]["cmr"]) == {0.0, 0.5}


def test_report_writes_tables_and_metrics_and_figures_are_drawn(results, tmp_path, capsys):
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    metrics = tmp_path / "metrics.json"
    assert main(["report", "--results", str(results), "--out", str(tables), "--metrics", str(metrics)]) == 0
    for name in ("runs", "summary", "selected", "epochs", "trials"):
        assert len(pd.read_csv(tables / f"{name}.csv")) > 0
    head = json.loads(metrics.read_text())
    assert head["tiny/smoke/3ep"]["dense"]["metric"]["test_ppl"] == pytest.approx(101)
    assert head["tiny/smoke/3ep"]["svd"]["cf4"]["test_ppl"] == pytest.approx(
        122
    )  # LSTM targets only: the decoder run is not mixed in
    assert head["sweeps"]["tiny-pareto-smoke"]["best_val_ppl"] == 120.0

    bench = tmp_path / "infer.json"
    bench.write_text(
        json.dumps(
            {
                "device": "cpu",
                "rows": [
                    {"method": m, "factor": f, "speedup": f**0.5 / (2 if m == "svd" else 1)}
                    for m in ("svd", "kp")
                    for f in (2, 4, 8)
                ],
            }
        )
    )
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"figures": {"cmr_cf": 4, "bench": str(bench)}}))
    capsys.readouterr()
    assert main(["figures", "--tables", str(tables), "--out", str(figures), "--params", str(params)]) == 0
    printed = capsys.readouterr().out
    for name in (
        "F1_metric_vs_cf",
        "F2_cma",
        "F3_metric_vs_cmr",
        "F4_speedup_vs_cf",
        "F5_pareto",
        "F6_embedding_softmax",
    ):
        for ext in ("png", "pdf"):
            assert (figures / f"{name}.{ext}").stat().st_size > 1000, (name, printed)
    made = make_figures(tables, tmp_path / "no-bench", {"bench": str(tmp_path / "missing.json")})
    assert made["F4"][0] == [] and "no inference benchmark" in made["F4"][1]


def test_every_choice_is_made_on_validation_and_reports_test(tmp_path, capsys):
    """Two learning rates of one method at one CF: lr 1 has the better test and the worse validation metric.
    The table, F1, F5's front and the headline must all choose lr 0.5 and report its test metric; the sweep's
    best trial is its best validation trial."""
    results = tmp_path / "results"
    for seed in (0, 1):
        fake_record(results, "dense", 1, seed, 100, val=100)
        fake_record(results, "lmf", 4, seed, 90, val=130, lr=1.0)  # better test, worse val
        fake_record(results, "lmf", 4, seed, 110, val=120, lr=0.5)  # the one to choose
    sweeps = results / "sweeps" / "tiny-cf"
    sweeps.mkdir(parents=True)
    pd.DataFrame(
        {
            "study": "tiny-cf-smoke",
            "number": [0, 1],
            "state": "complete",
            "objective": "val_ppl",
            "direction": "minimize",
            "value": [130.0, 120.0],
            "test_ppl": [90.0, 110.0],
        }
    ).to_csv(sweeps / "tiny-cf-smoke.csv", index=False)
    tables, figures, metrics = tmp_path / "tables", tmp_path / "figures", tmp_path / "m.json"
    assert main(["report", "--results", str(results), "--out", str(tables), "--metrics", str(metrics)]) == 0
    printed = capsys.readouterr().out
    row = [ln.split() for ln in printed.splitlines() if " lmf " in ln]
    assert len(row) == 1 and "0.5" in row[0] and "110.00" in row[0] and "90.00" not in row[0]
    chosen = pd.read_csv(tables / "selected.csv").query("method == 'lmf'")
    assert chosen["lr"].tolist() == [0.5] and chosen["test_mean"].tolist() == [110]
    head = json.loads(metrics.read_text())
    assert head["tiny/smoke/3ep"]["lmf"]["cf4"] == {
        "val_ppl": 120,
        "test_ppl": 110,
        "cf": 3.92,
        "n": 2,
        "n_asked": 2,
    }
    assert head["sweeps"]["tiny-cf-smoke"] == {
        "complete": 2,
        "pruned": 0,
        "failed": 0,
        "epochs": 0,
        "best_val_ppl": 120.0,
        "its_test_ppl": 110.0,
    }
    make_figures(tables, figures)
    f1 = pd.read_csv(figures / "F1_metric_vs_cf.csv")
    assert f1[["lr", "test_mean"]].values.tolist() == [[0.5, 110]]
    front = pd.read_csv(figures / "F5_pareto.csv").query("method == 'lmf'")
    assert front[["lr", "test_mean"]].values.tolist() == [[0.5, 110]]


def test_partial_failed_and_pruned_seeds_are_counted_and_marked(tmp_path):
    results = tmp_path / "results"
    fake_record(results, "kp", 4, 0, 100, seeds=[0, 1, 2])
    fake_record(results, "kp", 4, 1, 0, status="failed", seeds=[0, 1, 2])
    fake_record(results, "lmf", 4, 0, 100, seeds=[0, 1])
    fake_record(results, "lmf", 4, 1, 101, seeds=[0, 1])
    summ = summary(runs_frame(load(results)[0])).set_index("method")
    assert summ.loc["kp", ["n_ok", "n_failed", "n_pruned", "n_asked"]].tolist() == [1, 1, 0, 3]
    assert summ.loc["kp", "partial"] and not summ.loc["lmf", "partial"]
    from suite.report_text import format_table

    text = format_table(selected(summary(runs_frame(load(results)[0]))))
    assert "1/3 (1 failed)*" in text and "fewer seeds than asked" in text


def test_a_record_with_a_non_finite_metric_counts_as_a_failed_seed(tmp_path, capsys):
    results = tmp_path / "results"
    fake_record(results, "kp", 4, 0, 100, seeds=[0, 1])
    fake_record(results, "kp", 4, 1, float("nan"), val=101, seeds=[0, 1])  # a damaged record: test metric NaN
    fake_record(results, "lmf", 4, 0, 100, val=float("inf"), seeds=[0])
    runs = runs_frame(load(results)[0]).set_index(["method", "seed"])
    assert runs.loc[("kp", 1), "status"] == "failed" and runs.loc[("lmf", 0), "status"] == "failed"
    assert "non-finite test metric" in runs.loc[("kp", 1), "reason"]
    assert "non-finite val metric" in runs.loc[("lmf", 0), "reason"]
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "tables")]) == 0
    assert "1/2 (1 failed)*" in capsys.readouterr().out
    summ = pd.read_csv(tmp_path / "tables" / "summary.csv").set_index("method")
    assert summ.loc["kp", ["n_ok", "n_failed", "test_mean"]].tolist() == [1, 1, 100]
    assert summ.loc["lmf", ["n_ok", "n_failed"]].tolist() == [0, 1]


def test_report_on_an_empty_folder_names_that_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--results", str(empty)]) == 0
    out = capsys.readouterr().out
    assert f"no runs under {empty} yet" in out and "results/" not in out.replace(str(empty), ""), out


def test_budgets_and_profiles_never_share_a_row_or_a_panel(tmp_path):
    from suite.plots import MixedBudgets, one_setup

    results = tmp_path / "results"
    for epochs in (3, 6):
        fake_record(results, "kp", 4, 0, 100 + epochs, train={"epochs": epochs})
    summ = summary(runs_frame(load(results)[0]))
    assert len(summ) == 2 and summ["budget"].nunique() == 2 and summ["setup_id"].nunique() == 2
    assert len(selected(summ)) == 2  # one choice per budget, never one across them
    with pytest.raises(MixedBudgets, match="mix profiles or training budgets"):
        one_setup(summ, "F1")
    made = make_figures_from(results, tmp_path)
    assert pd.read_csv(tmp_path / "figures" / "F1_metric_vs_cf.csv")["panel"].nunique() == 2, made


def make_figures_from(results: Path, tmp_path: Path):
    from suite.report import write_tables

    write_tables(results, tmp_path / "tables")
    return make_figures(tmp_path / "tables", tmp_path / "figures")


def test_records_of_older_code_are_left_out_and_counted(tmp_path, capsys):
    results = tmp_path / "results"
    fake_record(results, "kp", 4, 0, 100)
    old = fake_record(results, "lmf", 4, 0, 50)
    old.code_version = "0123456789ab"  # made by code that no longer exists
    old.save(run_dir(results, "tiny", "lmf", old.run_id) / "record.json")
    records, left_out = load(results)
    assert [r.method for r in records] == ["kp"] and left_out == 1
    assert main(["report", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert " lmf " not in out and "1 record(s) of older code left out" in out
    assert main(["report", "--results", str(results), "--stale"]) == 0
    assert "stale" in capsys.readouterr().out


def test_figures_without_data_are_skipped_with_a_note(tmp_path):
    made = make_figures(tmp_path / "empty", tmp_path / "figs")
    assert all(paths == [] and note for paths, note in made.values())
    assert set(json.loads((tmp_path / "figs" / "index.json").read_text())) == {f"F{i}" for i in range(1, 7)}


def test_pareto_front_keeps_only_non_dominated_points():
    pts = pd.DataFrame({"x": [1, 2, 3, 4, 2], "y": [5, 3, 4, 1, 6]})
    assert pareto(pts, "x", "y")[["x", "y"]].values.tolist() == [[1, 5], [2, 3], [4, 1]]


def test_pipeline_stages_params_and_specs_agree():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "baselines", "sweeps", "report", "bench", "figures", "dashboards"]
    for task, info in params["tasks"].items():
        assert (ROOT / "tasks" / f"{task}.yaml").is_file() and info["dataset"] in params["datasets"]
    for profile in ("smoke", "paper"):
        p = load_params(ROOT / "params.yaml", profile)
        for name, info in params["sweeps"].items():
            spec = load_spec(ROOT / "sweeps" / f"{name}.yaml", profile, p.set)
            assert Path(spec.task).stem == info["task"] and spec.n_trials >= 1
    assert load_params(ROOT / "params.yaml").profile == "smoke"


def test_prepare_and_baselines_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUITE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    corpus = write_corpus(tmp_path / "data" / "ptb")
    for split in ("train", "valid", "test"):  # the PTB layout, tiny
        (corpus / f"{split}.txt").rename(corpus / f"ptb.{split}.txt")
    assert main(["prepare", "ptb", "--data-dir", str(tmp_path / "data"), "--out", "prepared"]) == 0
    assert json.loads(Path("prepared/ptb.json").read_text())["vocab"] == 42  # 40 words, <eos> and <unk>
    preset = tmp_path / "tiny.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "dataset": "ptb",
                "model": {"hidden": 8, "layers": 1},
                "train": {"epochs": 1, "batch_size": 8, "bptt": 8, "eval_batch_size": 8},
                "profiles": {"smoke": {"train_fraction": 0.5}},
            }
        )
    )
    Path("params.yaml").write_text(
        yaml.safe_dump(
            {
                "profile": "smoke",
                "threads": 1,
                "profiles": {"smoke": {"seeds": [0, 1], "set": {"data_dir": str(tmp_path / "data")}}},
            }
        )
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored after the test, as one_thread restores torch's
    with one_thread():
        assert main(["baselines", str(preset), "--params", "params.yaml", "--out", "baselines"]) == 0
    runs = json.loads(Path("baselines/tiny.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["test_ppl"] > 1 for r in runs)


def test_f6_draws_one_curve_per_lp_exponent(tmp_path, monkeypatch):
    import suite.figures as figures

    out, tables = tmp_path / "results", tmp_path / "tables"
    fake_record(out, "dense", 1, 0, 100)
    trained = {"targets": ["decoder.weight"], "init": "trained", "finetune_epochs": 0}
    for f in (2, 4):
        fake_record(out, "svd", f, 0, 110 + f, **trained)
        for p in (1.0, 1.5):
            fake_record(out, "lp_lowrank", f, 0, 120 + f - p, p=p, **trained)
    assert main(["report", "--results", str(out), "--out", str(tables)]) == 0
    drawn = []

    def record_curve(ax, pts, x, label, method, linestyle="-"):
        drawn.append((label, method, linestyle, sorted(pts["factor"])))

    monkeypatch.setattr(figures, "errorbar", record_curve)
    made = make_figures(tables, tmp_path / "figures", {"bench": str(tmp_path / "missing.json")})
    assert made["F6"][0], made["F6"]
    assert sorted(drawn) == [
        ("lp_lowrank p=1", "lp_lowrank", "-", [2, 4]),
        ("lp_lowrank p=1.5", "lp_lowrank", "--", [2, 4]),
        ("svd", "svd", "-", [2, 4]),
    ]


def test_figure_points_are_the_tables_choices_and_every_asked_cf(tmp_path, monkeypatch):
    """F1's plotted points (its CSV, which the figure draws) are, per method and asked CF, the configuration
    with the best validation metric in the summary table, with that configuration's test metric; non-integer
    asked CFs are kept. F2 draws one sparsity curve per distinct schedule."""
    from suite.report import write_tables

    out = tmp_path / "results"
    for seed, noise in ((0, 0.0), (1, 2.0)):
        fake_record(out, "dense", 1, seed, 100 + noise)
        for f in (2, 2.5, 4):
            fake_record(out, "small_dense", f, seed, 110 + 5 * f + noise)
            for lr, shift in ((1.0, 0.0), (0.5, 3.0)):
                fake_record(out, "doped_kp", f, seed, 104 + 2 * f + shift + noise, lr=lr, cmr=0.0)
    for seed in (0, 1):  # a second CMR rate on the same schedule of D
        fake_record(out, "doped_kp", 2, seed, 101 + seed, cmr=0.5)
    write_tables(out, tmp_path / "tables")
    import suite.figures as figures

    drawn, save = {}, figures.save
    monkeypatch.setattr(
        figures, "save", lambda fig, out, name: (drawn.update({name: fig}), save(fig, out, name))[1]
    )
    made = make_figures(tmp_path / "tables", tmp_path / "figs")
    points = pd.read_csv(tmp_path / "figs" / "F1_metric_vs_cf.csv")
    summ = pd.read_csv(tmp_path / "tables" / "summary.csv")
    summ = summ[summ["method"] != "dense"]
    best = summ.loc[summ.groupby(["method", "factor"])["val_mean"].idxmin()]
    got = points.set_index(["method", "factor"])[["lr", "val_mean", "test_mean"]].sort_index()
    want = best.set_index(["method", "factor"])[["lr", "val_mean", "test_mean"]].sort_index()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert sorted(points["factor"].unique()) == [2.0, 2.5, 4.0]
    assert set(points.loc[points["method"] == "doped_kp", "lr"]) == {1.0}  # the better rate on validation
    assert made["F2"][0] and made["F1"][0]
    f1 = drawn["F1_metric_vs_cf"].axes[0]
    doped = next(c for c in f1.containers if c.get_label() == "doped_kp").lines[0]  # the errorbar's data line
    assert list(doped.get_xdata()) == sorted(points.loc[points["method"] == "doped_kp", "cf"])
    top, bottom = drawn["F2_cma"].axes  # doped_kp: with and without D per CMR rate; one schedule of D
    assert len(top.get_lines()) == 4 and len(bottom.get_lines()) == 1
    assert bottom.get_legend().get_texts()[0].get_text() == "every CMR rate (one schedule)"


def test_the_rate_a_method_declares_is_what_f3_sweeps_and_the_points_keep(tmp_path, monkeypatch):
    """F3 and the points tables read the swept rate and its label from the method's registration."""
    from dataclasses import dataclass

    from suite import figures
    from suite.compressors import registry
    from suite.report import write_tables
    from suite.settings import setting

    @dataclass
    class Filled(registry.CompressorConfig):
        rho: float = setting(0.0, ge=0, lt=1)

    declared = registry.Diagnostics(
        title="fill adaptation",
        abbrev="FA",
        methods="filled",
        during="while filling",
        part="Q",
        schedule=registry.Column("q_fill", "fill of Q", "fraction of ones"),
        without="_without_q",
        setting=registry.Column("rho", "fill rate rho (FR)", "FR"),
    )
    registry.register(
        registry.Method("filled_kp", Filled, lambda m, c, ctx=None: None, "test only", diagnostics=declared)
    )
    try:
        out, tables = tmp_path / "results", tmp_path / "tables"
        for f in (2, 4):
            for rho in (0.0, 0.5):
                fake_record(out, "filled_kp", f, 0, 110 + f - rho, rho=rho)
        write_tables(out, tables)
        drawn = []
        monkeypatch.setattr(
            figures,
            "errorbar",
            lambda ax, pts, x, label, method, **kw: drawn.append((x, label, list(pts[x]))),
        )
        labels = []
        monkeypatch.setattr(figures.plt.Axes, "set_xlabel", lambda ax, text, **kw: labels.append(text))
        made = make_figures(tables, tmp_path / "figures", {"bench": str(tmp_path / "missing.json")})
        assert made["F3"][0], made["F3"]
        assert ("rho", "filled_kp", [0.0, 0.5]) in drawn  # at the CF with the most rates
        assert "fill rate rho (FR)" in labels
        assert "rho" in pd.read_csv(tmp_path / "figures" / "F5_pareto.csv")
        assert "no per-epoch" in made["F2"][1]  # no run logged the fill of Q
    finally:
        registry.REGISTRY.pop("filled_kp")
