"""Speed benchmarks: the batch-1 LSTM step of each deployed method, and doped_kp in the training bench."""

import json

import pytest
import torch
from sweep_fixtures import ROOT
from torch import nn

from suite import cli
from suite.bench import (
    bench_infer,
    bench_train,
    compressed_lstm,
    dense_step,
    deployed_step,
    infer_methods,
)
from suite.deploy import layer_csr
from suite.errors import CompressionError, ConfigError


def test_every_deployable_method_is_timed():
    assert {"kp", "lmf", "doped_kp", "prune", "deepthin", "lp_lowrank", "hashed", "circulant"} <= set(
        infer_methods()
    )
    assert "groupreduce" not in infer_methods()  # needs word counts: not for a bare LSTM


def test_deployed_steps_equal_the_dense_step_with_materialized_weights():
    torch.manual_seed(0)
    base = nn.LSTM(24, 32)
    x, h, c = torch.randn(24), torch.randn(32), torch.randn(32)
    for name in infer_methods():
        for factor in (4.0, 3.0, 2.0):  # the largest CF the method reaches on this shape (8-bit: under 4)
            try:
                lstm, acc = compressed_lstm(base, name, factor)
                break
            except CompressionError:
                continue
        assert acc["cf"] >= factor * (1 - 1e-9)
        dense = nn.LSTM(24, 32)
        with torch.no_grad():
            for p in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(dense, p).copy_(getattr(lstm, p))
        with torch.inference_mode():
            got, ref = deployed_step(lstm)(x, h, c), dense_step(dense)(x, h, c)
            _, (h1, c1) = dense(x.view(1, 1, -1), (h.view(1, 1, -1), c.view(1, 1, -1)))
        assert torch.allclose(got[0], ref[0], atol=1e-5) and torch.allclose(got[1], ref[1], atol=1e-5)
        assert torch.allclose(ref[0], h1.flatten(), atol=1e-5)  # the cell is nn.LSTM's


def test_bench_infer_writes_speedups(tmp_path):
    out = tmp_path / "infer.json"
    res = bench_infer(["kp", "doped_kp"], [4.0], hidden=32, input_size=16, reps=3, inner=2, warmup=1, out=out)
    rows = {(r["method"], r["factor"]): r for r in res["rows"]}
    assert set(rows) == {("dense", 1.0), ("kp", 4.0), ("doped_kp", 4.0)}
    assert all(r["median_us"] > 0 and r["cold_us"] > 0 for r in rows.values())
    dense = rows[("dense", 1.0)]
    for r in rows.values():  # ratios against the dense step timed in the same process
        assert r["speedup_vs_dense"] == pytest.approx(dense["median_us"] / r["median_us"])
        assert r["cold_speedup_vs_dense"] == pytest.approx(dense["cold_us"] / r["cold_us"])
    assert json.loads(out.read_text())["threads"] == 1


def test_bench_infer_refuses_model_level_methods():
    with pytest.raises(ConfigError, match="weight-level"):
        compressed_lstm(nn.LSTM(8, 8), "small_dense", 2)


def test_bench_train_includes_doped_kp(tmp_path):
    res = bench_train(
        str(ROOT / "tasks" / "ptb-small.yaml"),
        ["doped_kp"],
        [10.0],
        steps=1,
        warmup=0,
        vocab=100,
        out=None,
        echo=False,
    )
    assert [r["method"] for r in res["rows"]] == ["dense", "doped_kp"]


def test_cli_bench_infer(tmp_path, capsys):
    argv = [
        "bench",
        "infer",
        "--methods",
        "lmf",
        "--factors",
        "4",
        "--hidden",
        "16",
        "--input",
        "8",
        "--reps",
        "2",
    ]
    assert cli.main([*argv, "--results", str(tmp_path)]) == 0
    assert "lmf" in capsys.readouterr().out
    assert (tmp_path / "bench" / "infer.json").is_file()


def test_layer_csr_puts_the_sparse_parts_side_by_side():
    a = torch.zeros(6, 4)
    a[1, 2], a[5, 0] = 1.0, 2.0
    b = torch.zeros(6, 3)
    b[1, 1] = 3.0
    fused = layer_csr([a.to_sparse_csr(), None], [(6, 4), (6, 3)])
    assert torch.equal(fused.to_dense(), torch.cat((a, torch.zeros(6, 3)), 1))
    fused = layer_csr([a.to_sparse_csr(), b.to_sparse_csr()], [(6, 4), (6, 3)])
    assert torch.equal(fused.to_dense(), torch.cat((a, b), 1))
    assert fused.col_indices().dtype == torch.int32 and fused.values().numel() == 3
