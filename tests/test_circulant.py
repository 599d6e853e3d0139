"""Block-circulant matrices: circulant blocks, the FFT product, the nearest block-circulant matrix, padding
counted in the storage."""

import pytest
import torch
from torch import nn

from suite.compressors import account, registry
from suite.compressors.circulant import BlockCirculant, block_size, circulant_stored


def test_blocks_are_circulant_and_padding_is_counted():
    torch.manual_seed(0)
    p = BlockCirculant((13, 7), 3)  # blocks 5 x 3 of 3 x 3, W the (13, 7) corner of (15, 9)
    assert (p.p, p.q) == (5, 3) and p.storage().values == 5 * 3 * 3 == circulant_stored((13, 7), 3)
    (c,) = p.fresh(torch.randn(13, 7))
    w = p(c)
    assert w.shape == (13, 7)
    for a in range(4):
        for b in range(2):
            block = w[3 * a : 3 * a + 3, 3 * b : 3 * b + 3]
            ref = torch.stack([torch.roll(c[a, b], j) for j in range(3)], 1)  # column j: c shifted by j
            assert torch.equal(block, ref)


@pytest.mark.parametrize("shape,k", [((13, 7), 3), ((96, 24), 8), ((800, 200), 10), ((50, 70), 16)])
def test_fft_products_equal_the_materialized_matrix(shape, k):
    torch.manual_seed(0)
    p = BlockCirculant(shape, k)
    factors = p.fresh(torch.randn(shape))
    w = p(*factors)
    x, xs = torch.randn(shape[1]), torch.randn(shape[1], 3)
    assert torch.allclose(p.matvec(factors, x), w @ x, atol=1e-4)
    assert torch.allclose(p.matvec(factors, xs), w @ xs, atol=1e-4)
    assert torch.allclose(p.deploy(factors)(x), w @ x, atol=1e-4)


def test_decomposition_is_the_nearest_block_circulant_matrix():
    torch.manual_seed(0)
    p = BlockCirculant((13, 7), 3)
    (c,) = p.fresh(torch.randn(13, 7))
    assert torch.allclose(p.right_inverse(p(c))[0][:4, :2], c[:4, :2], atol=1e-6)  # blocks inside W come back
    w = torch.randn(13, 7)
    (fit,) = p.right_inverse(w)
    residual = w - p(fit)
    for d in torch.randn(5, *c.shape):  # the residual is orthogonal to every block-circulant direction
        assert abs(float((residual * p(d)).sum())) < 1e-4


def test_block_size_is_the_smallest_that_reaches_the_cf():
    for shape in [(2600, 650), (800, 200)]:
        m, n = shape
        for factor in (2, 4, 8, 16, 25):
            k = block_size(shape, factor)
            assert m * n / circulant_stored(shape, k) >= factor
            assert all(m * n / circulant_stored(shape, j) < factor for j in range(1, k))
    assert block_size((2600, 650), 16) == 17  # k = 16 pads 2600 x 650 to 2608 x 656: CF 15.8


def test_applied_to_a_matrix_reaches_the_cf():
    torch.manual_seed(0)
    model = nn.Module()
    model.weight = nn.Parameter(torch.randn(800, 200))
    cfg = registry.make_config("circulant", {"factor": 10, "targets": ["weight"], "init": "trained"})
    registry.get("circulant").apply(model, cfg)
    acc = account(model, ["weight"])
    assert acc.cf == 10 and acc.matrices[0].detail["block"] == 10
