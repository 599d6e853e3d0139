"""Compiled deployment (suite.deploy): every kernel against the materialized matrix, every method's compiled
LSTM step against its materialized weights, and a whole language model's compiled greedy decoding against its
own forward."""

import numpy as np
import pytest
import torch
from sweep_fixtures import ROOT
from torch import nn

from suite.bench import bench_generate, compressed_lm, compressed_lstm, infer_methods, lstm_cell
from suite.compressors import terms
from suite.deploy import Program, compile_generator, compile_step
from suite.errors import CompressionError
from suite.models.lm import LSTMLanguageModel


def _matvec(term: terms.Term, m: int):
    prog = Program()
    prog.lines.append("    y = np.zeros(m, np.float32)")
    prog.add("y", term, "z", "    ")
    fn, _ = prog.compile("m, z", ["    return y"], "mv")
    return lambda z: fn(m, z, *prog.arrays.values())


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(torch.kron(a[r], b[r]) for r in range(a.shape[0]))


@pytest.mark.parametrize("a_first", [True, False])
def test_each_kernel_computes_the_materialized_product(a_first):
    torch.manual_seed(0)
    z = torch.randn(12)
    w = torch.randn(7, 12)
    u, v = torch.randn(9, 3), torch.randn(3, 12)
    a, b = torch.randn(2, 5, 4), torch.randn(2, 3, 3)  # two Kronecker terms, W (15, 12)
    d = torch.randn(15, 12) * (torch.rand(15, 12) < 0.2)
    index = torch.randperm(15)[:9]
    cases = [
        (terms.Dense(w, offset=2), 9, torch.cat((torch.zeros(2), w @ z))),
        (terms.LowRank(u, v, offset=1), 10, torch.cat((torch.zeros(1), u @ (v @ z)))),
        (terms.LowRank(u, v, index=index.int()), 15, torch.zeros(15).index_copy(0, index, u @ (v @ z))),
        (terms.Kron(a, b, a_first), 15, _kron(a, b) @ z),
        (terms.Sparse(d.to_sparse_csr()), 15, d @ z),
    ]
    for term, m, ref in cases:
        got = _matvec(term, m)(z.numpy())
        assert np.abs(got - ref.numpy()).max() < 1e-4, term


def test_compiled_steps_equal_the_materialized_step():
    torch.manual_seed(0)
    base = nn.LSTM(24, 32)
    x, h, c = torch.randn(24), torch.randn(32), torch.randn(32)
    compiled = set()
    for name in infer_methods():
        for factor in (4.0, 3.0, 2.0):
            try:
                lstm, _ = compressed_lstm(base, name, factor)
                break
            except CompressionError:
                continue
        step = compile_step(lstm)
        if step is None:  # a form without kernels (block-circulant's FFT) stays eager
            continue
        compiled.add(name)
        with torch.no_grad():
            gates = x @ lstm.weight_ih_l0.T + h @ lstm.weight_hh_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
            ref = lstm_cell(gates, c)
        got = step(x.numpy(), h.numpy(), c.numpy())
        assert np.abs(got[0] - ref[0].numpy()).max() < 1e-5, name
        assert np.abs(got[1] - ref[1].numpy()).max() < 1e-5, name
        assert step.compile_s > 0 and step.macs > 0 and step.nbytes > 0
    builtin = {"kp", "lmf", "hmd", "svd", "prune", "doped_kp", "doped_lmf", "doped_hmd", "deepthin", "hashed"}
    assert builtin | {"lp_lowrank"} <= compiled


def test_compiled_generation_follows_the_models_forward():
    torch.manual_seed(0)
    cfg = {"vocab": 40, "hidden": 16, "layers": 2}
    base = LSTMLanguageModel(40, hidden=16, layers=2).eval()
    model, cfs = compressed_lm(cfg, base, ("doped_kp", 4.0), ("groupreduce", 2.0))
    assert cfs["lstm"] >= 4.0 and cfs["softmax"] >= 2.0
    alone = compressed_lm(cfg, base, None, ("groupreduce", 2.0))[1]
    assert alone["softmax"] == cfs["softmax"]  # each part's CF counts its own matrices only
    gen = compile_generator(model)
    tokens, logits = gen(3, 6)
    with torch.inference_mode(), torch.nn.utils.parametrize.cached():
        hidden, x, ref = None, torch.tensor([[3]]), []
        for _ in range(6):
            out, hidden = model(x, hidden)
            x = out[0, 0].argmax().view(1, 1)
            ref.append(int(x))
    assert list(tokens) == ref
    assert np.abs(logits - out[0, 0].numpy()).max() < 1e-4


def test_tied_or_compressed_embeddings_have_no_compiled_loop():
    assert compile_generator(LSTMLanguageModel(20, hidden=8, layers=1, tie_weights=True)) is None


def test_bench_generate_rows(tmp_path):
    res = bench_generate(
        [str(ROOT / "tasks" / "ptb-small.yaml")],
        ["kp"],
        [4.0],
        softmax=[None, ("svd", 2.0)],
        vocab=30,
        tokens=2,
        reps=1,
        warmup=0,
        out=tmp_path / "generate.json",
        echo=False,
    )
    rows = {(r["lstm"], r["softmax"], r["form"]): r for r in res["rows"]}
    assert set(rows) == {
        ("dense", "dense", "compiled"),
        ("dense", "dense", "eager"),
        ("dense", "svd", "compiled"),
        ("kp", "dense", "compiled"),
        ("kp", "svd", "compiled"),
    }
    fastest = min(rows[("dense", "dense", f)]["us_per_token"] for f in ("compiled", "eager"))
    for r in rows.values():
        assert r["speedup_vs_dense"] == pytest.approx(fastest / r["us_per_token"])
        assert r["max_abs_err"] < 1e-3
    assert (tmp_path / "generate.json").is_file()


def test_bench_decode_times_exported_translation_and_speech_models(tmp_path, monkeypatch):
    import yaml
    from test_speech import utterance_fields, write_fsdd
    from test_translation import write_multi30k

    from suite.bench import bench_decode

    root = write_fsdd(write_multi30k(tmp_path / "data"))
    monkeypatch.setenv("SUITE_DATA_DIR", str(root))
    presets = []
    for name, preset in {
        "m30k": {
            "family": "translation",
            "dataset": "multi30k",
            "model": {"hidden": 8, "emb_size": 8, "layers": 1, "bidirectional": True},
            "train": {"epochs": 1, "batch_size": 8, "beam": 2, "min_freq": 1, "max_len_b": 4},
        },
        "digits": {
            "family": "speech",
            "dataset": "fsdd",
            "model": {"hidden": 8, "layers": 1, "stack": 3},
            "train": {"epochs": 1, "batch_size": 8, **utterance_fields()},
        },
    }.items():
        presets.append(tmp_path / f"{name}.yaml")
        presets[-1].write_text(yaml.safe_dump(preset))
    res = bench_decode([str(p) for p in presets], ["prune"], [2.0], items=2, reps=1, out=None, echo=False)
    got = {(r["task"], r["method"], r["mode"]) for r in res["rows"]}
    assert got == {
        ("m30k", "dense", "greedy"),
        ("m30k", "dense", "beam 2"),
        ("m30k", "prune", "greedy"),
        ("m30k", "prune", "beam 2"),
        ("digits", "dense", "greedy"),
        ("digits", "prune", "greedy"),
    }
    for r in res["rows"]:
        assert r["items_per_s"] > 0 and r["cf"] >= (1.0 if r["method"] == "dense" else 2.0)
        if r["method"] == "dense":
            assert r["speedup_vs_dense"] == 1.0
