"""Robust l_p low-rank: p = 2 is the SVD; p = 1 resists outlying rows; the solver never does worse than its
SVD start."""

import pytest
import torch
from torch import nn

from suite.compressors import account, registry
from suite.compressors.lowrank import split_svd
from suite.compressors.lp_lowrank import LpLowRank, lp_cost, lp_subspace
from suite.errors import ConfigError


class OneMatrix(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(w.clone())


def outliers(m: int = 400, n: int = 60, k: int = 4, bad: int = 12, seed: int = 0) -> torch.Tensor:
    """Rows near a k-dimensional subspace, plus ``bad`` large rows in random directions."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g) @ torch.randn(k, n, generator=g) + 0.05 * torch.randn(
        m, n, generator=g
    )
    w[:bad] = 20 * torch.randn(bad, n, generator=g)
    return w


def compress(w: torch.Tensor, factor: float, **settings) -> OneMatrix:
    model = OneMatrix(w)
    cfg = registry.make_config("lp_lowrank", {"factor": factor, "targets": ["weight"], **settings})
    registry.get("lp_lowrank").apply(model, cfg)
    return model


def test_p2_is_the_truncated_svd():
    w = outliers()
    model = compress(w, 8, p=2.0)
    p: LpLowRank = model.parametrizations.weight[0]
    u, v = split_svd(w, p.rank)
    assert torch.allclose(model.weight, u @ v, atol=1e-4)
    assert p.history[0] == pytest.approx(p.history[-1])


def test_p1_has_a_lower_sum_of_row_distances_than_svd_on_outlying_rows():
    w = outliers()
    svd, lp = compress(w, 12, p=2.0), compress(w, 12, p=1.0)
    rank = lp.parametrizations.weight[0].rank
    assert rank == svd.parametrizations.weight[0].rank == 4  # the same storage

    def row_distance_sum(model):
        return float((model.weight.detach() - w).norm(dim=1).sum())  # W ~ U V: each row's distance

    assert row_distance_sum(lp) < 0.8 * row_distance_sum(svd)
    inliers = slice(12, None)  # the majority is fitted better
    assert (lp.weight.detach() - w)[inliers].norm() < 0.5 * (svd.weight.detach() - w)[inliers].norm()
    assert account(lp, ["weight"]).cf >= 12


def test_the_solver_keeps_its_best_iterate_and_stops_at_the_tolerance():
    w = outliers(seed=1).double()
    basis, history = lp_subspace(w, 4, p=1.2, iters=100, tol=1e-9)
    assert lp_cost(w, basis, 1.2) == pytest.approx(min(history)) and min(history) < history[0]
    assert len(history) < 101  # converged before the cap
    _, short = lp_subspace(w, 4, p=1.2, iters=3)
    assert len(short) == 4


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"p must be a number in \[1, 2\]"):
        registry.make_config("lp_lowrank", {"factor": 4, "p": 0.5})
    with pytest.raises(ConfigError, match="init must be 'trained'"):
        registry.make_config("lp_lowrank", {"factor": 4, "init": "scratch"})
    with pytest.raises(ConfigError, match="eps"):
        registry.make_config("lp_lowrank", {"factor": 4, "eps": 0})
