"""The deployment form of a compressed matrix as data: W z = the sum of a few primitive terms, each adding its
product into a slice (or a scattered set) of the output rows. A compiler (``suite.deploy``) fuses the terms of
a layer's matrices, its bias and its cell update into one function; nothing here depends on how.

Each method's ``Structured.deploy_terms(factors)`` returns its terms, or None when its form is none of these
(a block-circulant matrix multiplies by FFT), which leaves it to the eager ``deploy`` closure."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Dense:
    """y[offset : offset + r] += W z, W (r, n)."""

    w: Tensor
    offset: int = 0


@dataclass(frozen=True)
class LowRank:
    """y[rows] += U (V z), U (r, k), V (k, n); rows = offset + arange(r), or ``index`` (int) when given."""

    u: Tensor
    v: Tensor
    offset: int = 0
    index: Tensor | None = None


@dataclass(frozen=True)
class Kron:
    """y[offset + i1 m2 + i2] += sum_t (A_t X B_t^T)[i1, i2] with X = z.view(n1, n2), A (terms, m1, n1), B
    (terms, m2, n2); ``a_first``: (A X) B^T is the cheaper order."""

    a: Tensor
    b: Tensor
    a_first: bool
    offset: int = 0


@dataclass(frozen=True)
class Sparse:
    """y += D z, D an int32 CSR tensor (m, n)."""

    csr: Tensor


Term = Dense | LowRank | Kron | Sparse
