"""Benchmarks produce ratios against dense from the same process (the speed goals are checked by running
`suite bench`, not by timing tests)."""

import json

import pytest

from suite.bench import bench_train, format_rows


def test_bench_train_writes_ratios(tiny_preset, tmp_path):
    out = tmp_path / "bench" / "train.json"
    res = bench_train(
        str(tiny_preset), ["svd", "small_dense"], [2.0], steps=3, warmup=1, vocab=50, out=out, echo=False
    )
    on_disk = json.loads(out.read_text())
    assert [(r["method"], r["factor"]) for r in on_disk["rows"]] == [
        ("dense", 1.0),
        ("svd", 2.0),
        ("small_dense", 2.0),
    ]
    assert all(r["median_ms"] > 0 for r in res["rows"])
    dense_ms = on_disk["rows"][0]["median_ms"]
    for r in on_disk["rows"]:  # every ratio is the dense median over this method's, from the same run
        assert r["speed_vs_dense"] == pytest.approx(dense_ms / r["median_ms"])
    assert "speed_vs_dense" in format_rows(res["rows"], "speed_vs_dense")
