"""Low-rank matrices W = U V: ``svd`` (truncated SVD of trained weights, optional fine-tuning) and ``lmf``
(low-rank matrix factorization trained from scratch by default)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import terms
from .accounting import Storage
from .registry import (
    CompressorConfig,
    Method,
    Structured,
    TrainedConfig,
    apply_structured,
    check_budget,
    register,
)


def rank_for(shape: tuple[int, int], factor: float) -> int:
    """Largest rank whose U (m, r) and V (r, n) store at most mn / factor values (never rounded up)."""
    m, n = shape
    return min(m, n, math.floor(m * n / (factor * (m + n)) + 1e-9))


def split_svd(w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-r factors of w (Eckart-Young), singular values split evenly: w ~ (U sqrt S)(sqrt S Vh)."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w.dtype), (root[:, None] * vh[:rank]).to(w.dtype)


class LowRank(Structured):
    """W = U V with U (m, r), V (r, n). Decomposition (a ``trained`` init): truncated SVD; ``scratch``: random
    factors whose product has the variance of the initial dense weight."""

    method = "lowrank"

    def __init__(self, shape: tuple[int, int], rank: int, target: float | None = None) -> None:
        super().__init__(shape)
        self.rank = rank
        self.target = target

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return u @ v  # (m, r) @ (r, n) -> (m, n)

    def right_inverse(self, w: Tensor) -> tuple[Tensor, Tensor]:
        return split_svd(w, self.rank)

    def fresh(self, w: Tensor) -> tuple[Tensor, Tensor]:
        # Var(sum_k u_ik v_kj) = r var_u var_v; choose var_u = var_v = std(w) / sqrt(r).
        std = (w.float().std().item() / math.sqrt(self.rank)) ** 0.5
        m, n = self.shape
        return torch.randn(m, self.rank, dtype=w.dtype) * std, torch.randn(self.rank, n, dtype=w.dtype) * std

    def storage(self) -> Storage:
        m, n = self.shape
        return Storage(values=self.rank * (m + n))

    def describe(self) -> dict:
        return {"rank": self.rank, **self.budget()}

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        u, v = factors
        return u @ (v @ x)

    def deploy(self, factors: tuple[Tensor, ...]):
        u, v = (f.contiguous() for f in factors)
        return lambda x: u @ (v @ x)  # (m, r) @ ((r, n) @ (n,))

    def deploy_terms(self, factors: tuple[Tensor, ...]) -> list[terms.Term]:
        return [terms.LowRank(*(f.contiguous() for f in factors))]


def make_lowrank(name: str, w: Tensor, cfg: CompressorConfig, ctx=None) -> LowRank:
    shape = tuple(w.shape)
    rank = rank_for(shape, cfg.factor)
    m, n = shape
    check_budget(name, shape, cfg.factor, rank * (m + n), f"rank 1 already gives CF {m * n / (m + n):.1f}")
    return LowRank(shape, rank, cfg.factor)


@dataclass
class SVDConfig(TrainedConfig):
    """The truncated SVD of the trained dense weights."""


register(
    Method(
        name="svd",
        config=SVDConfig,
        apply=apply_structured(make_lowrank),
        summary="truncated SVD of the trained dense weights, rank solved from the CF; optional fine-tuning",
    )
)


@dataclass
class LMFConfig(CompressorConfig):
    """Low-rank matrix factorization: trained from scratch (``init=scratch``, default) or started from the
    truncated SVD of the trained dense weights (``init=trained``)."""


register(
    Method(
        name="lmf",
        config=LMFConfig,
        apply=apply_structured(make_lowrank),
        summary="low-rank factorization W = U V, rank solved from the CF, trained from scratch by default",
    )
)
