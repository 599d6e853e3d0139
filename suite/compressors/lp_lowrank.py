"""Robust low-rank ``lp_lowrank`` (after Tukan et al., 2020): the rank-k subspace of R^n that minimizes
sum_i dist(w_i, subspace)^p over the rows w_i of W (m, n), p in [1, 2]; W ~ U V with V (k, n) a basis of the
subspace and U (m, k) the rows' coordinates in it (their projections). p = 2 is the truncated SVD; p < 2 lets a
few outlying rows (rare words of an embedding or softmax, a gate unit with large weights) pull the subspace less.

Solver: iteratively reweighted least squares started from the SVD. With the current basis V, each row's
distance d_i = ||w_i - w_i V^T V||; its weight is max(d_i, eps * max_j ||w_j||)^(p - 2); the new V is the top-k
eigenvectors of the weighted Gram matrix W^T diag(weights) W (the right singular vectors of the rows scaled by
sqrt(weights)), in float64. Because t -> t^(p/2) is concave, each step minimizes a majorizer of the (clamped)
objective, so it does not increase it; the iterate with the lowest sum of d_i^p (the SVD included) is kept. It
stops after ``iters`` steps or when the objective changes by less than ``tol`` (relative). U = W V^T; the scale is
then split evenly between the factors (the SVD of U), as ``svd`` does.

Rank from the CF as ``svd`` (``lowrank.rank_for``): r (m + n) <= mn / CF. Applied to trained weights without
fine-tuning by default (``init: trained``, ``finetune_epochs: 0``); deployment U (V x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..settings import setting
from .lowrank import LowRank, make_lowrank
from .registry import Method, TrainedConfig, apply_structured, register


def row_distances(w: Tensor, basis: Tensor) -> Tensor:
    """(m,) distances of the rows of w (m, n) to the row space of an orthonormal basis (k, n)."""
    return (w - (w @ basis.T) @ basis).norm(dim=1)


def lp_cost(w: Tensor, basis: Tensor, p: float) -> float:
    """sum_i dist(w_i, span(basis))^p."""
    return float(row_distances(w, basis).pow(p).sum())


def top_basis(gram: Tensor, k: int) -> Tensor:
    """(k, n) orthonormal eigenvectors of the k largest eigenvalues of a symmetric (n, n) matrix."""
    _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vecs[:, -k:].flip(1).T.contiguous()


def lp_subspace(
    w: Tensor, k: int, p: float, iters: int = 50, tol: float = 1e-6, eps: float = 1e-6
) -> tuple[Tensor, list[float]]:
    """The IRLS basis (k, n) of the module docstring and the objective after each step (the SVD's first)."""
    a = w.double()
    basis = top_basis(a.T @ a, k)
    best, history = basis, [lp_cost(a, basis, p)]
    floor = eps * float(a.norm(dim=1).max().clamp_min(1e-300))
    cost = history[0]
    for _ in range(iters):
        weights = row_distances(a, basis).clamp_min(floor).pow(p - 2)
        basis = top_basis(a.T @ (weights[:, None] * a), k)
        new = lp_cost(a, basis, p)
        history.append(new)
        if new < min(history[:-1]):
            best = basis
        if abs(cost - new) <= tol * max(cost, 1e-300):
            break
        cost = new
    return best.to(w.dtype), history


class LpLowRank(LowRank):
    """W = U V with V spanning the l_p-optimal rank-k row subspace (module docstring); ``fresh`` as ``lmf``."""

    method = "lp_lowrank"

    def __init__(
        self,
        shape: tuple[int, int],
        rank: int,
        p: float,
        iters: int,
        tol: float,
        eps: float,
        target: float | None = None,
    ) -> None:
        super().__init__(shape, rank, target)
        self.p, self.iters, self.tol, self.eps = p, iters, tol, eps
        self.history: list[float] = []
        """The objective sum_i d_i^p after each solver step of the last decomposition (the SVD's first)."""

    def right_inverse(self, w: Tensor) -> tuple[Tensor, Tensor]:
        basis, self.history = lp_subspace(w, self.rank, self.p, self.iters, self.tol, self.eps)
        coords = (w.double() @ basis.double().T).to(w.dtype)  # (m, k): each row projected on the basis
        p_, s, qh = torch.linalg.svd(coords.double(), full_matrices=False)  # U = P S Q^T
        root = s.sqrt()
        u = p_ * root  # (m, k)
        v = (root[:, None] * qh) @ basis.double()  # (k, n)
        return u.to(w.dtype), v.to(w.dtype)

    def describe(self) -> dict:
        detail = {**super().describe(), "p": self.p}
        if self.history:
            detail.update(
                lp_cost_svd=self.history[0], lp_cost=min(self.history), solver_steps=len(self.history) - 1
            )
        return detail


@dataclass
class LpLowRankConfig(TrainedConfig):
    """Robust l_p low-rank approximation of trained weights."""

    p: float = setting(1.0, ge=1, le=2)
    """The exponent of the row distances (2: the truncated SVD)."""
    iters: int = setting(50, ge=0)
    """Most IRLS steps."""
    tol: float = setting(1e-6, ge=0, lt=1)
    """Stop when one step changes sum_i d_i^p by less than this fraction."""
    eps: float = setting(1e-6, gt=0, lt=1)
    """Distances below eps * (the largest row norm) weigh as that much (keeps rows on the subspace finite)."""


def make_lp(name: str, w: Tensor, cfg: LpLowRankConfig, ctx=None) -> LpLowRank:
    plain = make_lowrank(name, w, cfg)  # the rank from the CF, or the CompressionError
    return LpLowRank(plain.shape, plain.rank, cfg.p, cfg.iters, cfg.tol, cfg.eps, cfg.factor)


register(
    Method(
        name="lp_lowrank",
        config=LpLowRankConfig,
        apply=apply_structured(make_lp),
        summary="robust l_p low-rank (IRLS from the SVD) of the trained weights, rank from the CF; no fine-tuning",
    )
)
