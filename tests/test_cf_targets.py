"""Every weight-level method of the registry reaches the asked CF: within 5% above it, or at the closest
achievable CF above it with the accounting saying so; never below. A CF a method cannot reach is a
CompressionError that says what it can reach.

Methods come from the registry (nothing here lists them): a method that compresses weights in place is one
that accepts a CF and changes no architecture (not ``dense``, not a ``resize`` method). A method that asks for
data gets word counts (Zipf) for the test matrix, as for a vocabulary matrix. Each is taken in the state its
records are counted in: after its ``finalize`` (annealed sparsity, quantized factors).
"""

import pytest
import torch
from torch import nn

from suite.compressors import account, registry
from suite.compressors.kronecker import kp_shapes
from suite.context import DataContext
from suite.errors import CompressionError, ConfigError

SHAPES = [(2600, 650), (800, 200)]  # nn.LSTM's (4H, in) for ptb-medium and ptb-small
FACTORS = [2, 4, 8, 16, 25]


def weight_level(name: str) -> bool:
    try:
        registry.make_config(name, {"factor": 2.0, "targets": ["weight"]})
    except ConfigError:
        return False  # dense: no CF to ask for
    return registry.get(name).resize is None


METHODS = [m for m in registry.available() if weight_level(m)]


class OneMatrix(nn.Module):
    def __init__(self, shape: tuple[int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-0.05, 0.05))


def context(name: str, rows: int) -> DataContext:
    if "row_frequencies" in registry.get(name).needs:
        return DataContext(row_frequencies={"weight": 1e5 / torch.arange(1, rows + 1).float()})
    return DataContext()


def compress(name: str, shape: tuple[int, int], factor: float) -> OneMatrix:
    torch.manual_seed(0)
    model = OneMatrix(shape)
    method = registry.get(name)
    cfg = registry.make_config(name, {"factor": factor, "targets": ["weight"]})
    method.apply(model, cfg, context(name, shape[0]))
    if method.finalize is not None:
        method.finalize(model, cfg)  # the state the final accounting counts
    return model


def test_the_registry_has_weight_level_methods():
    assert {"kp", "lmf", "prune", "groupreduce", "deepthin", "lp_lowrank", "hashed", "circulant"} <= set(
        METHODS
    )


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", METHODS)
def test_achieved_cf_meets_the_target(name, shape):
    m, n = shape
    for factor in FACTORS:
        try:
            model = compress(name, shape, factor)
        except CompressionError as e:
            assert f"cannot reach CF {factor:g}" in str(e) and "smaller --factor" in str(e)
            continue
        acc = account(model, ["weight"], method=name)
        detail = acc.matrices[0].detail
        assert acc.cf >= factor * (1 - 1e-9), (factor, acc.cf)
        assert detail["target_cf"] == factor
        if acc.cf > factor * 1.05:
            assert detail["closest_achievable"], (factor, acc.cf)
            if name == "kp":  # nothing in between exists
                assert not [s for s in kp_shapes(shape) if factor <= m * n / s.stored < acc.cf - 1e-9]
            if name in ("lmf", "svd", "lp_lowrank"):  # one more rank would overshoot the budget
                assert (detail["rank"] + 1) * (m + n) > m * n / factor
        else:
            assert not detail["closest_achievable"]
        if "final_nnz" in detail:  # a sparse part: its nonzeros fill what is left
            assert acc.cf <= factor * 1.001
            assert detail["nnz"] == detail["final_nnz"]


@pytest.mark.parametrize("name", METHODS)
def test_impossible_cf_is_a_compression_error(name):
    with pytest.raises(CompressionError, match=r"cannot reach CF 1e\+06"):  # more than the 160000 weights
        compress(name, (800, 200), 1_000_000)
