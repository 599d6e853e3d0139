"""Block-circulant matrices ``circulant`` (the C-LSTM line of work, Wang et al., 2018).

W (m, n) is padded with zeros to (p k, q k), p = ceil(m / k), q = ceil(n / k), and split into p x q blocks of
k x k, each circulant: block (a, b) is C[i, j] = c_ab[(i - j) mod k], so it stores its first column c_ab (k
values). Storage: p q k values, the padding included (it is stored: a deployment multiplies whole blocks).

Block size from the CF: the smallest k (the most parameters) with p q k <= mn / CF; padding makes this CF
non-monotone in k, so every k is tried. The largest CF is min(m, n) (one block of max(m, n)). When the smallest
feasible k overshoots the CF by more than 5%, the accounting says it is the closest achievable.

Decomposition (``trained``): the nearest block-circulant matrix in Frobenius norm: each c_ab[d] is the mean of
the entries of block (a, b) on its circulant diagonal d ((i - j) mod k = d), over the entries inside W (the
padding is free). Scratch: c drawn Gaussian with the standard deviation of the freshly initialised W (every
entry of W is one entry of c).

Deployment: y_a = sum_b C_ab x_b by FFT, C_ab x_b = irfft(rfft(c_ab) * rfft(x_b)) (a circular convolution):
rfft(c) is precomputed, x's k-blocks are transformed once, and the frequency-domain products, (p, q) @ (q,) at
each of the k / 2 + 1 frequencies, are one elementwise complex product and a sum: p q (k / 2 + 1) complex
multiply-adds, against mn for the dense product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .accounting import Storage
from .registry import (
    CompressorConfig,
    Method,
    Structured,
    apply_structured,
    check_budget,
    register,
)


def circulant_stored(shape: tuple[int, int], k: int) -> int:
    m, n = shape
    return math.ceil(m / k) * math.ceil(n / k) * k


def block_size(shape: tuple[int, int], factor: float, name: str = "matrix") -> int:
    """The smallest block size k whose storage p q k fits mn / factor (padding counted)."""
    m, n = shape
    budget = m * n / factor
    for k in range(1, max(m, n) + 1):
        if circulant_stored(shape, k) <= budget * (1 + 1e-12):
            return k
    check_budget(name, shape, factor, 0, f"one {max(m, n)}-block stores {max(m, n)} values, CF {min(m, n)}")
    raise AssertionError  # check_budget raised


class BlockCirculant(Structured):
    """W = the (m, n) corner of the (p k, q k) matrix of circulant blocks C_ab; factor c (p, q, k)."""

    method = "circulant"

    def __init__(self, shape: tuple[int, int], k: int, target: float | None = None) -> None:
        super().__init__(shape)
        m, n = self.shape
        self.k, self.p, self.q = k, math.ceil(m / k), math.ceil(n / k)
        self.target = target
        i = torch.arange(k)
        self.register_buffer("diag", (i[:, None] - i[None, :]) % k, persistent=False)  # (k, k): (i - j) mod k

    def forward(self, c: Tensor) -> Tensor:
        p, q, k = self.p, self.q, self.k
        blocks = c[:, :, self.diag]  # (p, q, k, k): block (a, b)[i, j] = c[a, b, (i - j) mod k]
        w = blocks.permute(0, 2, 1, 3).reshape(p * k, q * k)  # rows (a, i), columns (b, j)
        return w[: self.shape[0], : self.shape[1]]

    def right_inverse(self, w: Tensor) -> tuple[Tensor]:
        p, q, k = self.p, self.q, self.k
        m, n = self.shape
        pad = (0, q * k - n, 0, p * k - m)
        inside = F.pad(torch.ones_like(w), pad)
        blocks = F.pad(w, pad).view(p, k, q, k).permute(0, 2, 1, 3).reshape(p, q, k * k)
        counts = inside.view(p, k, q, k).permute(0, 2, 1, 3).reshape(p, q, k * k)
        d = self.diag.flatten()
        sums = w.new_zeros(p, q, k).index_add_(2, d, blocks)  # per diagonal: the sum of its entries in W
        n_in = w.new_zeros(p, q, k).index_add_(2, d, counts)
        return (sums / n_in.clamp_min(1),)  # a diagonal wholly in the padding: 0

    def fresh(self, w: Tensor) -> tuple[Tensor]:
        return (torch.randn(self.p, self.q, self.k, dtype=w.dtype) * w.float().std().item(),)

    def storage(self) -> Storage:
        return Storage(values=self.p * self.q * self.k)

    def describe(self) -> dict:
        return {"block": self.k, "blocks": [self.p, self.q], **self.budget()}

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """W x for x (n,) or (n, K), by FFT."""
        p, q, k = self.p, self.q, self.k
        cf = torch.fft.rfft(factors[0], dim=-1)  # (p, q, f)
        xs = torch.cat((x, x.new_zeros(q * k - self.shape[1], *x.shape[1:])))  # (q k,) or (q k, K)
        xf = torch.fft.rfft(xs.reshape(q, k, *x.shape[1:]), dim=1)  # (q, f, ...)
        yf = torch.einsum("pqf,qf...->pf...", cf, xf)  # (p, f, ...)
        y = torch.fft.irfft(yf, n=k, dim=1)  # (p, k, ...)
        return y.reshape(p * k, *x.shape[1:])[: self.shape[0]]

    def deploy(self, factors: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
        p, q, k = self.p, self.q, self.k
        m, pad = self.shape[0], q * k - self.shape[1]
        cf = torch.fft.rfft(factors[0], dim=-1).permute(2, 0, 1).contiguous()  # (f, p, q)

        def mv(x: Tensor) -> Tensor:
            xf = torch.fft.rfft(F.pad(x, (0, pad)).view(q, k), dim=1).T  # (f, q)
            yf = (cf * xf[:, None, :]).sum(2)  # (f, p): per frequency (p, q) @ (q,), elementwise (faster
            # on a CPU than a batched complex matrix-vector product)
            return torch.fft.irfft(yf.T, n=k, dim=1).reshape(p * k)[:m]  # (p, k) -> (m,)

        return mv


@dataclass
class CirculantConfig(CompressorConfig):
    """Block-circulant weights; the block size comes from the CF."""


def make_circulant(name: str, w: Tensor, cfg: CompressorConfig, ctx=None) -> BlockCirculant:
    shape = tuple(w.shape)
    return BlockCirculant(shape, block_size(shape, cfg.factor, name), cfg.factor)


register(
    Method(
        name="circulant",
        config=CirculantConfig,
        apply=apply_structured(make_circulant),
        summary="block-circulant W (k x k circulant blocks, padding counted), k from the CF; FFT matvec",
    )
)
