"""Kronecker products: ``kp``, W = sum_k A_k (x) B_k with A_k (m1, n1), B_k (m2, n2), m = m1 m2, n = n1 n2.

Shape rule. The divisor pairs of m and n give every factorization; each stores terms * (m1 n1 + m2 n2) values.
Among the shapes that reach the target CF, those within 5% above it form the band (when none is that close,
the band is the closest achievable CF, and the accounting says so). Inside the band the shape is chosen by
  1. the largest rank bound: rank(A (x) B) = rank(A) rank(B) <= min(m1, n1) min(m2, n2) (times the terms,
     capped at min(m, n)). A factor shaped against W caps the rank of the product: for a tall W, a 1 x 13
     factor B leaves rank <= n1 = n / 13, a 13 x 1 one keeps rank <= min(m / 13, n).
  2. then the cheapest deployed matvec (multiply-adds of A X B^T in its cheaper order);
  3. then the most balanced sizes (smallest |log(m1 n1 / (m2 n2))|), then the larger A: consecutive blocks of
     m2 rows share a row of A, so when m1 is a multiple of 4 each LSTM gate has rows of A of its own.
Scale balance. Both inits give ||A_k||_F = ||B_k||_F (the scale gradient descent preserves for a bilinear
product): the nearest Kronecker product splits each singular value evenly, the scratch init draws Gaussian
factors (each rescaled to its exact norm) whose product has the variance of the initial dense weight.
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
from .registry import (
    CF_TOLERANCE,
    CompressorConfig,
    Method,
    Structured,
    apply_structured,
    check_budget,
    register,
)


def divisors(k: int) -> list[int]:
    return [d for d in range(1, k + 1) if k % d == 0]


@dataclass(frozen=True)
class KPShape:
    """One factorization of an (m1 m2, n1 n2) matrix into ``terms`` Kronecker products."""

    m1: int
    n1: int
    m2: int
    n2: int
    terms: int = 1

    @property
    def stored(self) -> int:
        return self.terms * (self.m1 * self.n1 + self.m2 * self.n2)

    @property
    def rank_bound(self) -> int:
        m, n = self.m1 * self.m2, self.n1 * self.n2
        return min(m, n, self.terms * min(self.m1, self.n1) * min(self.m2, self.n2))

    @property
    def a_first(self) -> bool:
        """Whether (A X) B^T costs fewer multiply-adds than A (X B^T) for X (n1, n2)."""
        m1, n1, m2, n2 = self.m1, self.n1, self.m2, self.n2
        return m1 * n1 * n2 + m1 * n2 * m2 <= n1 * n2 * m2 + m1 * n1 * m2

    @property
    def flops(self) -> int:
        m1, n1, m2, n2 = self.m1, self.n1, self.m2, self.n2
        return self.terms * min(m1 * n1 * n2 + m1 * n2 * m2, n1 * n2 * m2 + m1 * n1 * m2)

    @property
    def imbalance(self) -> float:
        return round(abs(math.log(self.m1 * self.n1 / (self.m2 * self.n2))), 9)  # A B and B A tie exactly


def kp_shapes(shape: tuple[int, int], terms: int = 1) -> list[KPShape]:
    """Every factorization whose rearranged matrix has at least ``terms`` singular triplets."""
    m, n = shape
    out = []
    for m1 in divisors(m):
        for n1 in divisors(n):
            s = KPShape(m1, n1, m // m1, n // n1, terms)
            if terms <= min(s.m1 * s.n1, s.m2 * s.n2):
                out.append(s)
    return out


def choose_kp_shape(shape: tuple[int, int], factor: float, terms: int = 1, name: str = "matrix") -> KPShape:
    """The shape rule of the module docstring; CompressionError (with the best CF) when none reaches it."""
    m, n = shape
    shapes = kp_shapes(shape, terms)
    feasible = [s for s in shapes if m * n / s.stored >= factor * (1 - 1e-9)]
    if not feasible:
        best = min(shapes, key=lambda s: s.stored, default=None)
        what = (
            f"{terms} Kronecker term(s) reach at most CF {m * n / best.stored:.1f} "
            f"(A {best.m1}x{best.n1}, B {best.m2}x{best.n2})"
            if best
            else f"no factorization has {terms} terms"
        )
        check_budget(name, shape, factor, 0, what)
    closest = max(s.stored for s in feasible)
    floor = min(closest, m * n / (factor * (1 + CF_TOLERANCE)))
    band = [s for s in feasible if s.stored >= floor - 1e-9]
    return min(band, key=lambda s: (-s.rank_bound, s.flops, s.imbalance, -s.m1, -s.n1))


def rearrange(w: Tensor, s: KPShape) -> Tensor:
    """Van Loan-Pitsianis rearrangement: row (i1, j1) holds block W[i1 m2:(i1+1) m2, j1 n2:(j1+1) n2], so that
    ||W - sum A_k (x) B_k||_F = ||R(W) - sum vec(A_k) vec(B_k)^T||_F."""
    blocks = w.reshape(s.m1, s.m2, s.n1, s.n2)  # (i1, i2, j1, j2)
    return blocks.permute(0, 2, 1, 3).reshape(s.m1 * s.n1, s.m2 * s.n2)  # rows (i1, j1), cols (i2, j2)


def nearest_kp(w: Tensor, s: KPShape) -> tuple[Tensor, Tensor]:
    """Best sum of ``terms`` Kronecker products in Frobenius norm: the top singular triplets of R(W)."""
    u, sv, vh = torch.linalg.svd(rearrange(w.double(), s), full_matrices=False)
    root = sv[: s.terms].sqrt()
    a = (u[:, : s.terms] * root).T.reshape(s.terms, s.m1, s.n1)  # left singular vectors -> (r, m1, n1)
    b = (root[:, None] * vh[: s.terms]).reshape(s.terms, s.m2, s.n2)  # right ones -> (r, m2, n2)
    return a.to(w.dtype), b.to(w.dtype)


def _gaussian(shape: tuple[int, int, int], std: float, dtype: torch.dtype) -> Tensor:
    """Gaussian factors, each term rescaled to exactly the norm std * sqrt(size): a small B (often a few
    dozen entries) would otherwise set the scale of W by the luck of its draw."""
    x = torch.randn(shape, dtype=dtype)
    return (
        x * (std * math.sqrt(shape[1] * shape[2]) / x.flatten(1).norm(dim=1).clamp_min(1e-12))[:, None, None]
    )


class Kronecker(Structured):
    """W = sum_k A_k (x) B_k; the factors are stacked as A (terms, m1, n1) and B (terms, m2, n2)."""

    method = "kp"

    def __init__(self, s: KPShape, target: float | None = None) -> None:
        super().__init__((s.m1 * s.m2, s.n1 * s.n2))
        self.kp = s
        self.target = target

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        s = self.kp
        r = a.size(0)
        # R(W) = sum_k vec(A_k) vec(B_k)^T in one matmul, then undo the rearrangement; autograd's backward is
        # then a rearranged copy of the gradient and two matrix-vector products (half the time of einsum's).
        rw = a.reshape(r, -1).T @ b.reshape(r, -1)  # (m1 n1, m2 n2)
        w = rw.view(s.m1, s.n1, s.m2, s.n2).permute(0, 2, 1, 3)  # (m1, m2, n1, n2)
        return w.reshape(self.shape)  # W[i1 m2 + i2, j1 n2 + j2] = A[i1, j1] B[i2, j2]

    def right_inverse(self, w: Tensor) -> tuple[Tensor, Tensor]:
        return nearest_kp(w, self.kp)

    def fresh(self, w: Tensor) -> tuple[Tensor, Tensor]:
        s = self.kp
        # Var(sum_k a b) = terms var_a var_b = var_w, with ||A||_F = ||B||_F: var_a m1 n1 = var_b m2 n2.
        base = w.float().std().item() / math.sqrt(s.terms)
        ratio = math.sqrt(s.m2 * s.n2 / (s.m1 * s.n1))
        a = _gaussian((s.terms, s.m1, s.n1), math.sqrt(base * ratio), w.dtype)
        return a, _gaussian((s.terms, s.m2, s.n2), math.sqrt(base / ratio), w.dtype)

    def storage(self) -> Storage:
        return Storage(values=self.kp.stored)

    def describe(self) -> dict:
        s = self.kp
        detail = {"A": [s.m1, s.n1], "B": [s.m2, s.n2], "terms": s.terms, "rank_bound": s.rank_bound}
        return detail | self.budget()

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        a, b = factors
        s = self.kp
        xs = x.reshape(s.n1, s.n2, -1)  # (n1, n2, K): x[j1 n2 + j2] = X[j1, j2]
        if s.a_first:
            t = torch.einsum("rik,kln->riln", a, xs)  # (terms, m1, n2, K)
            y = torch.einsum("riln,rjl->ijn", t, b)  # (m1, m2, K)
        else:
            t = torch.einsum("rjl,kln->rkjn", b, xs)  # (terms, n1, m2, K)
            y = torch.einsum("rik,rkjn->ijn", a, t)  # (m1, m2, K)
        return y.reshape(self.shape[0], *x.shape[1:])  # (m,) or (m, K): y[i1 m2 + i2] = Y[i1, i2]

    def deploy(self, factors: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
        """Batch-1 form: Y = A X B^T as two small matmuls on the reshaped x, in the cheaper order. When A X
        comes first it is computed as (X^T A^T)^T with A^T stored contiguous: BLAS runs a product with a short
        left operand (n2 rows) two to three times faster than one with a thin right operand (n2 columns)."""
        a, b = factors
        s, m = self.kp, self.shape[0]
        at, bt = a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous()  # (r, n1, m1), (r, n2, m2)
        if s.terms == 1:
            at, bt, a = at[0], bt[0], a[0].contiguous()
            if s.a_first:  # ((m1, n1) @ (n1, n2)) @ (n2, m2)
                return lambda x: torch.mm(torch.mm(x.view(s.n1, s.n2).T, at).T, bt).view(m)
            return lambda x: torch.mm(a, torch.mm(x.view(s.n1, s.n2), bt)).view(m)  # (m1, n1) @ (n1, m2)
        a = a.contiguous()
        if s.a_first:  # per term (X^T A^T)^T B^T, summed: (r, m1, m2) -> (m1, m2)
            return lambda x: (
                torch.bmm(torch.matmul(x.view(s.n1, s.n2).T, at).transpose(1, 2), bt).sum(0).view(m)
            )
        return lambda x: torch.bmm(a, torch.matmul(x.view(s.n1, s.n2), bt)).sum(0).view(m)

    def deploy_terms(self, factors: tuple[Tensor, ...]) -> list[terms.Term]:
        a, b = factors
        return [terms.Kron(a.contiguous(), b.contiguous(), self.kp.a_first)]


@dataclass
class KPConfig(CompressorConfig):
    terms: int = setting(1, ge=1)
    """Number of Kronecker products summed (W = sum_k A_k (x) B_k); each term costs m1 n1 + m2 n2 values."""


def make_kp(name: str, w: Tensor, cfg: KPConfig, ctx=None) -> Kronecker:
    return Kronecker(choose_kp_shape(tuple(w.shape), cfg.factor, cfg.terms, name), cfg.factor)


register(
    Method(
        name="kp",
        config=KPConfig,
        apply=apply_structured(make_kp),
        summary="Kronecker product W = A (x) B (or a sum of `terms`), factor shapes solved from the CF",
    )
)
