"""DeepThin ``deepthin`` (Sotoudeh and Baghsorkhi, 2018): W is a reshaped low-rank product.

    F = X Y,  X (p, r), Y (r, q);   W (m, n) = the first m n entries of F, read row-major, reshaped to (m, n)

A plain factorization caps rank(W) at r. Here row i of W is F's entries i n .. i n + n - 1 of its row-major
order: a row of W starts at column (i n) mod q of some row of F and may run on into the next. Choosing q coprime
with n (so q does not divide n, nor n divide q), the rows of W start at every offset modulo q, each sees the rank-r
row space of F shifted differently, and W reaches a rank far above r (full rank for random factors).

Shapes: q is the smallest integer >= ceil(sqrt(mn)) coprime with n, p = ceil(mn / q) (so p q >= mn, and F wastes
fewer than q entries); with p + q about 2 sqrt(mn) this stores the fewest values per unit of rank. The rank is
the largest with r (p + q) <= mn / CF. For example 2600 x 650 (ptb-medium's LSTM): q = 1301, p = 1300, r = 81 at
CF 8; 800 x 200: q = 401, p = 400, r = 24 at CF 8.

Inits. ``scratch`` (``fresh``): X and Y Gaussian, the product with the variance of the fresh dense weight.
``trained`` (``right_inverse``): fitting X Y to a weight is a rank-r approximation of F = W rearranged to (p, q),
whose last row is observed only in its first t = mn - (p - 1) q entries. It is solved exactly rather than by
gradient steps: the truncated SVD of the p - 1 complete rows gives the basis Y, the last row's coefficients are
the least-squares fit to its t observed entries (exact for a weight that is itself a DeepThin matrix); then
``fit_iters`` rounds of imputation (fill the unobserved tail from the current fit, truncated SVD of the whole F),
each kept only if it lowers the error on the observed entries.

Deployment: the matrix is rebuilt once (X Y and the reshape, p q r multiply-adds) and multiplied densely:
DeepThin saves storage, not inference time or memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..settings import setting
from .accounting import Storage
from .registry import (
    CompressorConfig,
    Method,
    Structured,
    apply_structured,
    check_budget,
    register,
)


def thin_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """(p, q) of the module docstring: q >= ceil(sqrt(mn)) coprime with n, p = ceil(mn / q)."""
    m, n = shape
    q = math.isqrt(m * n - 1) + 1 if m * n > 1 else 1
    while math.gcd(q, n) != 1 and n > 1:
        q += 1
    return math.ceil(m * n / q), q


def thin_rank(shape: tuple[int, int], factor: float) -> int:
    m, n = shape
    p, q = thin_shape(shape)
    return min(p, q, math.floor(m * n / (factor * (p + q)) + 1e-9))


def _truncated(f: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """(coefficients (rows, r), orthonormal basis (r, q)) of the best rank-r approximation of f."""
    _, _, vh = torch.linalg.svd(f, full_matrices=False)
    basis = vh[:r]
    return f @ basis.T, basis


class DeepThin(Structured):
    """W = reshape((X Y).flatten()[: m n]); factors X (p, r), Y (r, q)."""

    method = "deepthin"

    def __init__(
        self, shape: tuple[int, int], rank: int, fit_iters: int = 0, target: float | None = None
    ) -> None:
        super().__init__(shape)
        self.p, self.q = thin_shape(self.shape)
        self.rank, self.fit_iters, self.target = rank, fit_iters, target

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        m, n = self.shape
        return (x @ y).reshape(-1)[: m * n].view(m, n)  # (p, q) row-major -> its first m n entries -> (m, n)

    def right_inverse(self, w: Tensor) -> tuple[Tensor, Tensor]:
        p, q, r = self.p, self.q, self.rank
        m, n = self.shape
        t = m * n - (p - 1) * q  # observed entries of F's last row, 1..q
        f = torch.cat((w.double().flatten(), w.new_zeros(p * q - m * n, dtype=torch.float64))).view(p, q)
        if p - 1 >= r:
            coef, basis = _truncated(f[:-1], r)
            last = torch.linalg.lstsq(basis[:, :t].T, f[-1, :t, None]).solution.T  # (1, r)
            coef = torch.cat((coef, last))
        else:  # too few complete rows to span r dimensions: start from the tail filled with zeros
            coef, basis = _truncated(f, r)

        def observed_error(c: Tensor, b: Tensor) -> float:
            return float(((c @ b).flatten()[: m * n] - f.flatten()[: m * n]).norm())

        error = observed_error(coef, basis)
        for _ in range(self.fit_iters):
            filled = f.clone()
            filled[-1, t:] = (coef[-1] @ basis)[t:]  # the unobserved tail from the current fit
            c2, b2 = _truncated(filled, r)
            e2 = observed_error(c2, b2)
            if e2 >= error:
                break
            coef, basis, error = c2, b2, e2
        scale = (coef.norm(dim=0) / basis.norm(dim=1)).clamp_min(1e-30).sqrt()  # equal norms per component
        return (coef / scale).to(w.dtype), (basis * scale[:, None]).to(w.dtype)

    def fresh(self, w: Tensor) -> tuple[Tensor, Tensor]:
        std = (w.float().std().item() / math.sqrt(self.rank)) ** 0.5  # Var(sum_k x y) = r var_x var_y
        return (
            torch.randn(self.p, self.rank, dtype=w.dtype) * std,
            torch.randn(self.rank, self.q, dtype=w.dtype) * std,
        )

    def storage(self) -> Storage:
        return Storage(values=self.rank * (self.p + self.q))

    def describe(self) -> dict:
        return {"X": [self.p, self.rank], "Y": [self.rank, self.q], **self.budget()}

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return self(*factors) @ x

    def deploy_dense(self, factors: tuple[Tensor, ...]) -> Tensor:
        return self(*factors).contiguous()  # rebuilt once (module docstring)


@dataclass
class DeepThinConfig(CompressorConfig):
    """DeepThin: W the reshaped product of thin factors, rank from the CF."""

    fit_iters: int = setting(0, ge=0)
    """Imputation rounds of the fit to a trained weight after the first (each one more SVD of the (p, q)
    rearranged weight; they only refit the last row's unobserved tail, under q of its p q entries)."""


def make_deepthin(name: str, w: Tensor, cfg: DeepThinConfig, ctx=None) -> DeepThin:
    shape = tuple(w.shape)
    m, n = shape
    p, q = thin_shape(shape)
    r = thin_rank(shape, cfg.factor)
    check_budget(
        name, shape, cfg.factor, max(r, 1) * (p + q), f"rank 1 (X {p}x1, Y 1x{q}) is CF {m * n / (p + q):.1f}"
    )
    return DeepThin(shape, r, cfg.fit_iters, cfg.factor)


register(
    Method(
        name="deepthin",
        config=DeepThinConfig,
        apply=apply_structured(make_deepthin),
        summary="DeepThin: W the first mn entries of a thin product X Y reshaped (rank above r), r from the CF",
    )
)
