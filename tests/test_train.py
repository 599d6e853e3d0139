"""train(cfg) end to end on a tiny corpus: records, re-use, trained inits, failure handling."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from suite.config import load_run
from suite.store import find, load_records
from suite.tasks.lm import LanguageModelTask
from suite.train import train


def run(preset, results, method="dense", factor=None, **sets):
    cfg = load_run(preset, method, factor, None, {"results_dir": str(results), **sets})
    return cfg, train(cfg, progress_bar=False)


def test_dense_run_writes_a_complete_record(tiny_preset, results):
    cfg, rec = run(tiny_preset, results)
    folder = results / "runs" / cfg.task / "dense" / cfg.run_id
    on_disk = json.loads((folder / "record.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["run_id"] == cfg.run_id
    assert [e["epoch"] for e in on_disk["epochs"]] == [1, 2]
    assert on_disk["epochs"][1]["lr"] == pytest.approx(0.5)  # decay_after 1, lr_decay 2
    assert math.isfinite(on_disk["final"]["test_ppl"]) and on_disk["final"]["test_ppl"] < 60  # vocab ~60
    assert on_disk["accounting"]["cf"] == 1.0 and on_disk["accounting"]["matrices"]
    assert on_disk["timings"]["wall_s"] > 0 and on_disk["timings"]["train_tokens_per_s"] > 0
    prov = on_disk["provenance"]
    assert {"git_sha", "git_dirty", "versions", "device"} <= set(prov) and "torch" in prov["versions"]
    assert (folder / "csv" / "metrics.csv").is_file() and (folder / "model.pt").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_git_dirty_counts_untracked_files_of_the_package_only(tmp_path, monkeypatch):
    import subprocess

    import suite.provenance as provenance

    checkout = tmp_path / "checkout"
    (checkout / "suite").mkdir(parents=True)
    (checkout / "suite" / "train.py").write_text("")
    (checkout / ".gitignore").write_text("__pycache__/\n")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    monkeypatch.setattr(provenance, "PACKAGE", checkout / "suite")
    (checkout / "notes.txt").write_text("outside the package")
    (checkout / "suite" / "__pycache__").mkdir()
    (checkout / "suite" / "__pycache__" / "train.pyc").write_text("ignored")
    assert provenance.provenance()["git_dirty"] is False
    (checkout / "suite" / "compressors").mkdir()
    (checkout / "suite" / "compressors" / "mine.py").write_text("")  # a new method module, not added yet
    assert provenance.provenance()["git_dirty"] is True


def test_finished_run_is_found_not_redone(tiny_preset, results):
    cfg, rec = run(tiny_preset, results)
    folder = results / "runs" / cfg.task / "dense" / cfg.run_id
    (folder / "marker").write_text("the first run's folder")
    again = train(cfg)
    assert again.created == rec.created and find(cfg).run_id == rec.run_id and (folder / "marker").exists()
    redone = train(cfg, force=True, progress_bar=False)
    assert not (folder / "marker").exists()  # the run was redone into a new folder
    assert redone.timings["wall_s"] != rec.timings["wall_s"] and len(load_records(results)) == 1


def test_same_config_same_run_id_and_seed_changes_it(tiny_preset, results):
    a = load_run(tiny_preset, "svd", 4, None, {"results_dir": str(results)})
    b = load_run(tiny_preset, "svd", None, None, {"factor": 4.0, "results_dir": "elsewhere"})
    c = load_run(tiny_preset, "svd", 4, 1, {})
    assert a.run_id == b.run_id != c.run_id


def test_svd_starts_from_the_trained_dense_baseline(tiny_preset, results):
    _, rec = run(tiny_preset, results, "svd", 2)
    assert rec.status == "ok" and rec.config["epochs_run"] == 0  # no fine-tuning by default
    assert rec.accounting["cf"] >= 2
    methods = sorted(r.method for r in load_records(results))
    assert methods == ["dense", "svd"]  # the baseline was trained once, on the way
    _, tuned = run(tiny_preset, results, "svd", 2, finetune_epochs=1)
    assert tuned.config["epochs_run"] == 1 and len(tuned.epochs) == 1
    assert len(load_records(results)) == 3  # the baseline was found, not redone


def test_small_dense_shrinks_hidden_and_counts_against_dense(tiny_preset, results):
    _, rec = run(tiny_preset, results, "small_dense", 4)
    assert rec.config["model_resolved"]["hidden"] < 16
    assert rec.accounting["cf"] >= 4


def test_divergence_is_recorded_as_failed_with_a_reason(tiny_preset, results):
    cfg, rec = run(tiny_preset, results, lr=1e30, clip=1e30)
    assert rec.status == "failed" and "became" in rec.reason
    on_disk = json.loads((results / "runs" / cfg.task / "dense" / cfg.run_id / "record.json").read_text())
    assert on_disk["status"] == "failed"
    assert find(cfg) is None  # a failed run is redone next time


def test_wandb_offline_run_is_created_and_closed(tiny_preset, results, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE")
    cfg, rec = run(tiny_preset, results, epochs=1)
    folder = results / "runs" / cfg.task / "dense" / cfg.run_id / "wandb"
    runs = list(folder.glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    import wandb

    assert wandb.run is None  # finished


def test_a_killed_runs_staging_folder_is_cleaned_up(tiny_preset, results):
    cfg = load_run(tiny_preset, "dense", None, None, {"results_dir": str(results), "epochs": 1})
    parent = results / "runs" / cfg.task / "dense"
    stale = parent / f".{cfg.run_id}.tmp999999999"  # no such process
    (stale / "csv").mkdir(parents=True)
    train(cfg, progress_bar=False)
    assert not stale.exists() and (parent / cfg.run_id / "record.json").is_file()


def test_uniform_logits_give_the_vocabulary_size_as_perplexity():
    class Uniform(nn.Module):
        vocab = 37

        def init_hidden(self, batch):
            return (torch.zeros(1, batch, 1), torch.zeros(1, batch, 1))

        def forward(self, x, hidden=None):
            return torch.zeros(*x.shape, self.vocab), hidden

    task = LanguageModelTask(Uniform(), lambda e: 1.0)
    batches = [(torch.randint(37, (5, 3)), torch.randint(37, (5, 3))) for _ in range(4)]
    assert task.evaluate(batches) == pytest.approx(37, rel=1e-5)
    assert math.isclose(math.log(task.evaluate(batches)), math.log(37), rel_tol=1e-6)


def test_code_version_ignores_comments_docstrings_and_formatting(tmp_path):
    """A run's code version hashes syntax trees without docstrings: comments, docstrings and formatting of the
    code that decides a run never make its records stale; a changed constant does."""
    from suite.version import files_version

    source = Path(__file__).resolve().parent.parent / "suite" / "errors.py"
    text = source.read_text()
    same = tmp_path / "same.py"
    same.write_text(
        '"""Another docstring."""\n# a comment\n' + text.split('"""', 2)[2].replace("\n\n", "\n\n\n")
    )
    changed = tmp_path / "changed.py"
    changed.write_text(text + "\nLIMIT = 3\n")
    assert files_version({"suite.errors": source}) == files_version({"suite.errors": same})
    assert files_version({"suite.errors": source}) != files_version({"suite.errors": changed})
