"""Kronecker products: nearest-KP init, factor shapes solved from the CF, deployed matvec."""

import pytest
import torch
from torch import nn

from suite.compressors import registry
from suite.compressors.kronecker import (
    KPShape,
    Kronecker,
    choose_kp_shape,
    kp_shapes,
    nearest_kp,
    rearrange,
)
from suite.errors import CompressionError


def kron_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(torch.kron(a[k], b[k]) for k in range(a.size(0)))


@pytest.mark.parametrize("terms", [1, 2, 3])
def test_nearest_kp_recovers_an_exact_kronecker_sum(terms):
    torch.manual_seed(0)
    s = KPShape(6, 4, 5, 3, terms)
    a, b = torch.randn(terms, 6, 4, dtype=torch.float64), torch.randn(terms, 5, 3, dtype=torch.float64)
    w = kron_sum(a, b)
    a2, b2 = nearest_kp(w, s)
    assert torch.allclose(kron_sum(a2, b2), w, atol=1e-10)
    if terms == 1:  # the factors themselves, up to a scale split between them
        scale = (a2[0] / a[0]).flatten()
        assert torch.allclose(scale, scale[0].expand_as(scale))


def test_rearrangement_turns_a_kronecker_product_into_rank_one():
    s = KPShape(3, 2, 4, 5)
    a, b = torch.randn(3, 2), torch.randn(4, 5)
    r = rearrange(torch.kron(a, b), s)
    assert torch.allclose(r, a.reshape(-1, 1) * b.reshape(1, -1))


@pytest.mark.parametrize(
    "s",
    [
        KPShape(6, 4, 5, 3),
        KPShape(2, 12, 15, 1),
        KPShape(30, 1, 1, 12),
        KPShape(6, 4, 5, 3, 2),
        KPShape(3, 2, 10, 6, 2),
    ],
)
def test_forward_matvec_and_deploy_equal_the_materialized_matrix(s):
    torch.manual_seed(1)
    k = Kronecker(s)
    a, b = torch.randn(s.terms, s.m1, s.n1), torch.randn(s.terms, s.m2, s.n2)
    w = k(a, b)
    assert torch.allclose(w, kron_sum(a, b), atol=1e-5)
    x, xs = torch.randn(w.size(1)), torch.randn(w.size(1), 3)
    assert torch.allclose(k.matvec((a, b), x), w @ x, atol=1e-4)
    assert torch.allclose(k.matvec((a, b), xs), w @ xs, atol=1e-4)
    assert torch.allclose(k.deploy((a, b))(x), w @ x, atol=1e-4)


def test_both_contraction_orders_are_exercised():
    orders = {s.a_first for s in kp_shapes((60, 12))}
    assert orders == {True, False}


def test_shape_rule_takes_the_band_above_the_target_then_the_largest_rank():
    s = choose_kp_shape((2600, 650), 25)
    cf = 2600 * 650 / s.stored
    assert 25 <= cf <= 25 * 1.05
    band = [c for c in kp_shapes((2600, 650)) if 25 <= 2600 * 650 / c.stored <= 25 * 1.05]
    assert s.rank_bound == max(c.rank_bound for c in band)
    assert (s.m1, s.n1, s.m2, s.n2) == (200, 325, 13, 2)  # rank bound 400; (26 x 1) B would cap it at 100


def test_shape_rule_falls_back_to_the_closest_achievable_cf():
    s = choose_kp_shape((2600, 650), 10)  # no factorization stores between 1/10.5 and 1/10 of the matrix
    cf = 2600 * 650 / s.stored
    assert cf > 10.5
    assert not [c for c in kp_shapes((2600, 650)) if 10 <= 2600 * 650 / c.stored < cf - 1e-9]


def test_unreachable_cf_names_the_best_shape():
    with pytest.raises(CompressionError, match=r"cannot reach CF 100000: .*at most CF 200\.0"):
        choose_kp_shape((800, 200), 100_000, name="w")


def test_scratch_init_preserves_variance_and_balances_the_factors():
    torch.manual_seed(0)
    lin = nn.Linear(200, 800, bias=False)
    rms = lin.weight.square().mean().sqrt().item()
    registry.compress_targets(lin, ["weight"], lambda name, w: Kronecker(KPShape(100, 50, 8, 4)), fresh=True)
    a, b = lin.parametrizations.weight.original0, lin.parametrizations.weight.original1
    assert lin.weight.square().mean().sqrt().item() == pytest.approx(
        rms, rel=1e-4
    )  # ||A (x) B|| = ||A|| ||B||
    assert a.norm().item() == pytest.approx(b.norm().item(), rel=1e-4)


def test_trained_init_through_the_method_recovers_a_product_weight():
    torch.manual_seed(0)
    lin = nn.Linear(650, 2600, bias=False)
    s = choose_kp_shape((2600, 650), 25)
    with torch.no_grad():
        lin.weight.copy_(torch.kron(torch.randn(s.m1, s.n1), torch.randn(s.m2, s.n2)))
    w = lin.weight.detach().clone()
    cfg = registry.make_config("kp", {"factor": 25, "init": "trained", "targets": ["weight"]})
    registry.get("kp").apply(lin, cfg)
    assert torch.allclose(lin.weight, w, atol=1e-4)
    assert lin.parametrizations.weight[0].describe()["A"] == [s.m1, s.n1]


def test_assigning_a_weight_decomposes_it_and_never_draws_fresh_factors():
    """The scratch init is drawn by the method; ``right_inverse`` only ever decomposes, so assigning a weight
    to a parametrized matrix gives its nearest Kronecker product, whatever the init was."""
    torch.manual_seed(0)
    lin = nn.Linear(20, 40, bias=False)
    cfg = registry.make_config("kp", {"factor": 4, "targets": ["weight"]})  # init=scratch
    registry.get("kp").apply(lin, cfg)
    s = lin.parametrizations.weight[0].kp
    target = torch.kron(torch.randn(s.m1, s.n1), torch.randn(s.m2, s.n2))
    with torch.no_grad():
        lin.weight = target
    assert torch.allclose(lin.weight, target, atol=1e-5)
