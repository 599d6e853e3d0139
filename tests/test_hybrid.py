"""Hybrid matrix decomposition (hmd) and low-rank factorization (lmf)."""

import pytest
import torch
from torch import nn

from suite.compressors import registry
from suite.compressors.hybrid import Hybrid, hmd_split, hmd_stored
from suite.compressors.lowrank import LowRank
from suite.errors import CompressionError


def test_split_fills_the_budget_with_the_asked_dense_share():
    shape = (2600, 650)
    k, r = hmd_split(shape, 10, 0.5)
    stored = hmd_stored(shape, k, r)
    assert 10 <= 2600 * 650 / stored <= 10.5
    assert k * 650 / stored == pytest.approx(0.5, abs=0.05)
    assert hmd_split(shape, 10, 0.0)[0] < k < hmd_split(shape, 10, 0.9)[0]


def test_unreachable_cf_is_a_compression_error():
    with pytest.raises(CompressionError, match=r"at most CF 160\.0"):
        hmd_split((800, 200), 1000, 0.5)


def test_construction_first_rows_dense_rest_low_rank():
    torch.manual_seed(0)
    w = torch.randn(40, 12)
    h = Hybrid((40, 12), k=5, rank=3)
    wd, u, v = h.right_inverse(w)
    assert torch.equal(wd, w[:5])
    out = h(wd, u, v)
    assert torch.allclose(out[:5], w[:5])
    assert torch.linalg.matrix_rank(out[5:]) == 3
    best = torch.linalg.svd(w[5:])
    assert torch.allclose((out[5:] - w[5:]).norm(), best.S[3:].norm(), rtol=1e-4)


@pytest.mark.parametrize("k", [0, 7])
def test_hmd_matvec_and_deploy_equal_the_materialized_matrix(k):
    h = Hybrid((30, 10), k=k, rank=2)
    factors = h.right_inverse(torch.randn(30, 10))
    w = h(*factors)
    x = torch.randn(10)
    assert torch.allclose(h.matvec(factors, x), w @ x, atol=1e-5)
    xs = torch.randn(10, 4)
    assert torch.allclose(h.matvec(factors, xs), w @ xs, atol=1e-5)
    assert torch.allclose(h.deploy(factors)(x), w @ x, atol=1e-5)


def test_lmf_trains_from_scratch_by_default_and_can_start_from_svd():
    assert registry.make_config("lmf", {"factor": 4}).init == "scratch"
    torch.manual_seed(0)
    lin = nn.Linear(16, 64, bias=False)
    u, v = torch.randn(64, 3), torch.randn(3, 16)
    with torch.no_grad():
        lin.weight.copy_(u @ v)
    cfg = registry.make_config("lmf", {"factor": 4, "init": "trained", "targets": ["weight"]})
    registry.get("lmf").apply(lin, cfg)
    assert torch.allclose(lin.weight, u @ v, atol=1e-4)  # rank 3 <= the rank CF 4 allows


def test_lowrank_deploy_matches():
    lr = LowRank((20, 8), 3)
    factors = lr.right_inverse(torch.randn(20, 8))
    x = torch.randn(8)
    assert torch.allclose(lr.deploy(factors)(x), lr(*factors) @ x, atol=1e-5)
