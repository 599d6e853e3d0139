"""A doped run end to end through train(cfg) and the CLI, on a tiny corpus."""

import json

import pytest
import torch

from suite import cli
from suite.config import load_run
from suite.train import train

WORDS = "the cat sat on a mat and the dog ate my hat while a bird sang".split()


@pytest.fixture()
def one_thread():
    """Tiny ops on a shared machine: a second OpenMP thread only waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def preset(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SUITE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, lines in (("train", 60), ("valid", 12), ("test", 12)):
        text = "\n".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(9)) for i in range(lines))
        (corpus / f"{split}.txt").write_text(text + "\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"dataset: {{path: {corpus}}}\n"
        "model: {hidden: 16, layers: 2, dropout: 0.0, init: 0.1}\n"
        "train: {epochs: 2, batch_size: 4, bptt: 6, lr: 1.0, lr_decay: 2.0, decay_after: 1, clip: 5.0,"
        " eval_batch_size: 2}\n"
    )
    return path


def test_doped_run_records_cma_columns_and_an_annealed_accounting(preset, tmp_path):
    sets = {"results_dir": str(tmp_path / "results"), "cmr": 0.5, "anneal_end": 0.6, "wandb": "disabled"}
    rec = train(load_run(preset, "doped_kp", 3, sets=sets), progress_bar=False)
    assert rec.status == "ok"
    assert len(rec.epochs) == 2
    for row in rec.epochs:
        for col in ("d_sparsity", "val_ppl", "val_ppl_without_d", "d_to_s_ratio"):
            assert col in row, col
    final = [m["detail"] for m in rec.accounting["matrices"]]
    assert all(d["nnz"] == d["final_nnz"] for d in final)
    assert rec.epochs[-1]["d_sparsity"] == pytest.approx(
        1 - sum(d["final_nnz"] for d in final) / sum(m["dense"] for m in rec.accounting["matrices"])
    )
    assert 3 <= rec.accounting["cf"] <= 3 * 1.01
    saved = json.loads(next((tmp_path / "results").glob("runs/*/doped_kp/*/record.json")).read_text())
    assert saved["accounting"]["cf"] == rec.accounting["cf"]


def test_cli_unreachable_factor_exits_2_with_one_line(preset, tmp_path, capsys):
    argv = ["train", str(preset), "--method", "doped_kp", "--factor", "100000"]
    code = cli.main([*argv, "--set", f"results_dir={tmp_path / 'results'}", "--set", "wandb=disabled"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "cannot reach CF 100000" in err and "\n" not in err
    assert not (tmp_path / "results" / "runs").exists()
