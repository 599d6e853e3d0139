"""DeepThin: the shapes, the CF, a rank above the factorization's, the exact fit of a DeepThin matrix."""

import math

import pytest
import torch
from torch import nn

from suite.compressors import account, registry
from suite.compressors.deepthin import DeepThin, thin_rank, thin_shape


class OneMatrix(nn.Module):
    def __init__(self, shape) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-0.1, 0.1))


@pytest.mark.parametrize("shape", [(2600, 650), (800, 200), (128, 32), (7, 3)])
def test_shapes_cover_w_and_q_is_coprime_with_n(shape):
    m, n = shape
    p, q = thin_shape(shape)
    assert p * q >= m * n > (p - 1) * q  # F wastes less than one of its rows
    assert math.gcd(q, n) == 1 and n % q != 0 and q % n != 0
    assert q >= math.isqrt(m * n)


def test_the_docstring_examples():
    assert thin_shape((2600, 650)) == (1300, 1301) and thin_rank((2600, 650), 8) == 81
    assert thin_shape((800, 200)) == (400, 401) and thin_rank((800, 200), 8) == 24


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_reaches_the_cf_with_a_rank_above_r(factor):
    torch.manual_seed(0)
    model = OneMatrix((800, 200))
    cfg = registry.make_config("deepthin", {"factor": factor, "targets": ["weight"]})
    registry.get("deepthin").apply(model, cfg)
    p: DeepThin = model.parametrizations.weight[0]
    assert account(model, ["weight"]).cf >= factor
    rank = torch.linalg.matrix_rank(model.weight.detach().double())
    assert rank > 4 * p.rank, (int(rank), p.rank)  # a plain U V of rank r stays at r


def test_a_deepthin_matrix_is_decomposed_back_exactly():
    torch.manual_seed(0)
    p = DeepThin((800, 200), rank=24)
    x, y = p.fresh(torch.randn(800, 200))
    w = p(x, y)
    got = p(*p.right_inverse(w))
    assert (got - w).norm() / w.norm() < 1e-5


def test_fit_to_a_trained_weight_beats_a_random_start_and_imputation_never_hurts():
    torch.manual_seed(0)
    w = torch.randn(128, 32) + 3 * torch.randn(128, 2) @ torch.randn(2, 32)
    errors = []
    for iters in (0, 3):
        p = DeepThin((128, 32), rank=7, fit_iters=iters)
        errors.append(float((p(*p.right_inverse(w)) - w).norm()))
    # the fit keeps an imputation round only if it lowers the error (in float64); float32 rounding aside
    assert errors[1] <= errors[0] * (1 + 1e-5) and errors[0] < float(w.norm())


def test_deployment_is_the_rebuilt_matrix():
    torch.manual_seed(0)
    p = DeepThin((96, 24), rank=3)
    factors = p.fresh(torch.randn(96, 24))
    x = torch.randn(24)
    assert torch.allclose(p.deploy(factors)(x), p(*factors) @ x, atol=1e-5)
