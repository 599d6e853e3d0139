"""Every weight-level method of this family reaches the asked CF: within 5% above it, or at the closest
achievable CF above it with the accounting saying so; never below."""

import pytest
import torch
from torch import nn

from suite.compressors import account, registry
from suite.compressors.doping import finish_annealing
from suite.compressors.kronecker import kp_shapes
from suite.errors import CompressionError

METHODS = ["kp", "lmf", "hmd", "doped_kp", "doped_lmf", "doped_hmd"]
SHAPES = [(2600, 650), (800, 200)]  # nn.LSTM's (4H, in) for ptb-medium and ptb-small
FACTORS = [4, 8, 16, 25, 50]


class OneMatrix(nn.Module):
    def __init__(self, shape: tuple[int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-0.05, 0.05))


def compress(name: str, shape: tuple[int, int], factor: float) -> OneMatrix:
    model = OneMatrix(shape)
    cfg = registry.make_config(name, {"factor": factor, "targets": ["weight"]})
    registry.get(name).apply(model, cfg)
    finish_annealing(model)  # doped: the deployed state the final accounting counts
    return model


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", METHODS)
def test_achieved_cf_meets_the_target(name, shape):
    m, n = shape
    for factor in FACTORS:
        acc = account(compress(name, shape, factor), ["weight"], method=name)
        detail = acc.matrices[0].detail
        assert acc.cf >= factor * (1 - 1e-9), (factor, acc.cf)
        assert detail["target_cf"] == factor
        if acc.cf > factor * 1.05:
            assert detail["closest_achievable"], (factor, acc.cf)
            if name == "kp":  # nothing in between exists
                assert not [s for s in kp_shapes(shape) if factor <= m * n / s.stored < acc.cf - 1e-9]
            if name == "lmf":  # one more rank would overshoot the budget
                assert (detail["rank"] + 1) * (m + n) > m * n / factor
        else:
            assert not detail["closest_achievable"]
        if name.startswith("doped"):
            assert acc.cf <= factor * 1.001  # D's nonzeros fill what S leaves
            assert detail["nnz"] == detail["final_nnz"]


@pytest.mark.parametrize("name", METHODS)
def test_impossible_cf_is_a_compression_error(name):
    with pytest.raises(CompressionError, match="cannot reach CF 100000"):
        compress(name, (800, 200), 100_000)
