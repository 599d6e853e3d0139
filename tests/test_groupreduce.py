"""GroupReduce: SVD in the degenerate case, a better weighted fit than SVD on Zipf counts, the refinement, the
8-bit accounting, the deployment forms, and the vocabulary-only refusal."""

import pytest
import torch
from torch import nn

from suite.compressors import account, registry
from suite.compressors.groupreduce import GroupReduce, quantize_model
from suite.compressors.lowrank import split_svd
from suite.config import load_run
from suite.context import DataContext
from suite.errors import ConfigError
from suite.models import LSTMLanguageModel
from suite.train import train


class OneMatrix(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(w.clone())


def zipf(rows: int) -> torch.Tensor:
    return 1e5 / torch.arange(1, rows + 1).float()


def compress(name: str, w: torch.Tensor, freqs: torch.Tensor, factor: float, **settings) -> OneMatrix:
    model = OneMatrix(w)
    cfg = registry.make_config(name, {"factor": factor, "targets": ["weight"], "init": "trained", **settings})
    registry.get(name).apply(model, cfg, DataContext(row_frequencies={"weight": freqs}))
    if registry.get(name).finalize:
        registry.get(name).finalize(model, cfg)
    return model


def weighted_error(model: OneMatrix, w: torch.Tensor, freqs: torch.Tensor) -> float:
    return float((freqs * (model.weight.detach() - w).pow(2).sum(1)).sum())


def param(model: OneMatrix) -> GroupReduce:
    return model.parametrizations.weight[0]


def test_one_block_and_uniform_counts_is_the_truncated_svd():
    torch.manual_seed(0)
    w = torch.randn(300, 40)
    model = compress("groupreduce", w, torch.ones(300), 4, blocks=1)
    (rank,) = param(model).ranks
    u, v = split_svd(w, rank)
    assert torch.allclose(model.weight, u @ v, atol=1e-4)
    # The same total rank as the svd method at this CF, less what the word order costs.
    assert rank == (300 * 40 // 4 - 302) // 340


def test_beats_svd_in_frequency_weighted_error_at_equal_storage():
    torch.manual_seed(0)
    w, freqs = torch.randn(2000, 100), zipf(2000)
    for factor in (4, 8, 16):
        gr = compress("groupreduce", w, freqs, factor)
        svd = compress("svd", w, freqs, factor)
        acc_gr, acc_svd = account(gr, ["weight"]), account(svd, ["weight"])
        assert acc_gr.cf >= factor and acc_svd.cf >= factor
        assert weighted_error(gr, w, freqs) < 0.7 * weighted_error(svd, w, freqs), factor


def test_ranks_grow_with_the_blocks_mean_frequency_and_fill_the_budget():
    torch.manual_seed(0)
    model = compress("groupreduce", torch.randn(1000, 60), zipf(1000), 6)
    p = param(model)
    assert p.ranks == sorted(p.ranks, reverse=True) and p.ranks[0] > p.ranks[-1] >= 1
    assert sum(p.sizes) == 1000 and len(p.sizes) == 5
    stored = p.storage()
    assert stored.indices == 1000 + 5 + 1  # the word order and the block offsets
    assert stored.values == sum(r * (n + 60) for n, r in zip(p.sizes, p.ranks))
    detail = p.describe()
    assert 1000 * 60 / stored.total >= 6 and not detail["closest_achievable"]


def test_refinement_moves_words_to_the_block_that_reconstructs_them():
    torch.manual_seed(0)
    bases = [torch.linalg.qr(torch.randn(40, 3)).Q.T for _ in range(5)]  # five 3-d subspaces of R^40
    group = torch.randperm(500) % 5  # 100 words in each, their counts unrelated to their subspace
    w = torch.stack([torch.randn(3) @ bases[int(g)] for g in group])
    freqs = zipf(500)[torch.randperm(500)]
    model = compress("groupreduce", w, freqs, 7, rank_exponent=0.0, refine_iters=5)
    p = param(model)
    assert p.ranks == [3] * 5
    assert p.errors == sorted(p.errors, reverse=True) and len(p.errors) > 1
    assert p.errors[-1] < 0.5 * p.errors[0]
    assert torch.equal(p.perm.sort().values, torch.arange(500))  # still a permutation, sizes kept
    assert p.sizes == [100] * 5


def test_quantized_factors_are_counted_in_bytes():
    torch.manual_seed(0)
    w, freqs = torch.randn(2000, 100), zipf(2000)
    plain = param(compress("groupreduce", w, freqs, 8))
    model = OneMatrix(w)
    cfg = registry.make_config(
        "groupreduce", {"factor": 8, "targets": ["weight"], "init": "trained", "quantize": True}
    )
    registry.get("groupreduce").apply(model, cfg, DataContext(row_frequencies={"weight": freqs}))
    p = param(model)
    assert sum(p.ranks) > sum(plain.ranks)  # the budget buys more rank in 8 bits
    assert account(model, ["weight"]).cf < 8  # fp32 until finalize
    quantize_model(model)
    acc = account(model, ["weight"])
    row = acc.matrices[0]
    factors = sum(r * (n + 100) for n, r in zip(p.sizes, p.ranks))
    assert row.storage.q8_values == factors and row.storage.values == sum(
        n + r for n, r in zip(p.sizes, p.ranks)
    )
    assert row.storage.total == factors / 4 + row.storage.values + 2000 + 6
    assert acc.cf >= 8 and row.detail["quantized"]
    for f in registry.originals(model, "weight"):
        scale = f.abs().amax(1, keepdim=True) / 127
        q = f / scale
        assert torch.allclose(q, q.round(), atol=1e-3) and q.abs().max() <= 127 + 1e-3
    before = model.weight.detach().clone()
    quantize_model(model)  # idempotent
    assert torch.allclose(model.weight, before)
    rel = (model.weight.detach() - w).norm() / w.norm()
    assert rel < 1.0


def test_deployment_forms_equal_the_materialized_matrix():
    torch.manual_seed(0)
    model = compress("groupreduce", torch.randn(300, 40), zipf(300), 4)
    p, factors = param(model), tuple(f.detach() for f in registry.originals(model, "weight"))
    w = model.weight.detach()
    ids = torch.tensor([[0, 299, 17], [150, 3, 3]])
    assert torch.allclose(p.lookup(factors, ids), w[ids], atol=1e-5)  # the embedding's row lookup
    x = torch.randn(40)
    assert torch.allclose(registry.deployed_matvec(model, "weight")(x), w @ x, atol=1e-5)  # the softmax


def test_applies_only_to_vocabulary_matrices_and_only_to_trained_weights():
    model = LSTMLanguageModel(vocab=30, hidden=8, layers=1)
    counts = torch.arange(30, 0, -1).float()
    ctx = DataContext(row_frequencies={"embedding.weight": counts, "decoder.weight": counts})
    cfg = registry.make_config("groupreduce", {"factor": 2})  # the LSTM matrices by default
    with pytest.raises(ConfigError, match="only to vocabulary matrices.*targets=decoder.weight"):
        registry.get("groupreduce").apply(model, cfg, ctx)
    cfg = registry.make_config(
        "groupreduce", {"factor": 2, "targets": ["decoder.weight", "embedding.weight"]}
    )
    registry.get("groupreduce").apply(model, cfg, ctx)
    assert account(model, cfg.targets).cf >= 2
    with pytest.raises(ConfigError, match="init must be 'trained'"):
        registry.make_config("groupreduce", {"factor": 2, "init": "scratch"})


def test_a_groupreduce_run_compresses_the_softmax(tiny_preset, results):
    sets = {"results_dir": str(results), "wandb": "disabled", "targets": ["decoder.weight"], "blocks": 3}
    rec = train(load_run(tiny_preset, "groupreduce", 3, sets=sets), progress_bar=False)
    assert rec.status == "ok" and rec.accounting["cf"] >= 3
    assert [m["name"] for m in rec.accounting["matrices"]] == ["decoder.weight"]
