"""Hybrid matrix decomposition ``hmd``: the first k rows of W kept dense, the other m - k rows low-rank.

    W = [ W_d      ]   W_d (k, n) dense
        [ U V      ]   U (m - k, r), V (r, n)

Storage: k n + r (m - k + n) = k (n - r) + r (m + n) values. The split comes from the CF and one knob,
``dense_share``, the fraction of the stored values spent on the dense rows: for every rank r the dense rows
take what the budget mn / CF leaves (k = floor((budget - r (m + n)) / (n - r)), so each r fills the budget to
within one row); among the (k, r) whose CF is within 5% above the target, the one whose dense share is
closest to ``dense_share`` wins (when none is that close, the closest achievable CF, stated in the accounting).
The most an HMD reaches is k = 0, r = 1: mn / (m + n), as for a rank-1 factorization.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..settings import setting
from . import terms
from .accounting import Storage
from .lowrank import LowRank
from .registry import (
    CF_TOLERANCE,
    CompressorConfig,
    Method,
    Structured,
    apply_structured,
    check_budget,
    register,
)


def hmd_stored(shape: tuple[int, int], k: int, r: int) -> int:
    m, n = shape
    return k * n + r * (m - k + n)


def hmd_split(
    shape: tuple[int, int], factor: float, dense_share: float, name: str = "matrix"
) -> tuple[int, int]:
    """(k dense rows, rank r) for a target CF, as the module docstring describes."""
    m, n = shape
    budget = m * n / factor
    cands: list[tuple[int, int, int]] = []  # (k, r, stored)
    for r in range(1, min(m, n)):
        base = r * (m + n)
        if base > budget:
            break
        k = min(m - r, math.floor((budget - base) / (n - r) + 1e-9))  # at least r low-rank rows
        cands.append((k, r, hmd_stored(shape, k, r)))
    if not cands:
        check_budget(name, shape, factor, 0, f"hmd reaches at most CF {m * n / (m + n):.1f} (k = 0, rank 1)")
    closest = max(c[2] for c in cands)
    floor = min(closest, budget / (1 + CF_TOLERANCE))
    band = [c for c in cands if c[2] >= floor - 1e-9]
    k, r, _ = min(band, key=lambda c: (abs(c[0] * n / c[2] - dense_share), -c[2], c[1]))
    return k, r


class Hybrid(Structured):
    """W = [W_d; U V] with W_d the first k rows. Decomposition (``trained``): W_d copied, U V the truncated SVD
    of the other rows; ``scratch``: W_d the freshly initialised rows, U V drawn as ``LowRank`` draws them."""

    method = "hmd"

    def __init__(self, shape: tuple[int, int], k: int, rank: int, target: float | None = None) -> None:
        super().__init__(shape)
        self.k, self.rank, self.target = k, rank, target
        self.lowrank = LowRank((self.shape[0] - k, self.shape[1]), rank)

    def forward(self, wd: Tensor, u: Tensor, v: Tensor) -> Tensor:
        return torch.cat([wd, self.lowrank(u, v)])  # (k, n) over (m - k, n)

    def right_inverse(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u, v = self.lowrank.right_inverse(w[self.k :])
        return w[: self.k].clone(), u, v

    def fresh(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u, v = self.lowrank.fresh(w[self.k :])
        return w[: self.k].clone(), u, v

    def storage(self) -> Storage:
        return Storage(values=hmd_stored(self.shape, self.k, self.rank))

    def describe(self) -> dict:
        return {"dense_rows": self.k, "rank": self.rank, **self.budget()}

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        wd, u, v = factors
        return torch.cat([wd @ x, u @ (v @ x)])

    def deploy(self, factors: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
        wd, u, v = (f.contiguous() for f in factors)
        return lambda x: torch.cat((torch.mv(wd, x), torch.mv(u, torch.mv(v, x))))  # (k,) over (m - k,)

    def deploy_terms(self, factors: tuple[Tensor, ...]) -> list[terms.Term]:
        wd, u, v = (f.contiguous() for f in factors)
        return [terms.Dense(wd), terms.LowRank(u, v, offset=self.k)]


@dataclass
class HMDConfig(CompressorConfig):
    dense_share: float = setting(0.5, ge=0, lt=1)
    """Fraction of the stored values spent on the dense rows (0: plain low-rank; the rest is U V)."""


def make_hmd(name: str, w: Tensor, cfg: HMDConfig, ctx=None) -> Hybrid:
    shape = tuple(w.shape)
    k, r = hmd_split(shape, cfg.factor, cfg.dense_share, name)
    return Hybrid(shape, k, r, cfg.factor)


register(
    Method(
        name="hmd",
        config=HMDConfig,
        apply=apply_structured(make_hmd),
        summary="hybrid matrix decomposition: the first rows dense, the rest low-rank, split from the CF",
    )
)
