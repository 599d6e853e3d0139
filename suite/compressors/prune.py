"""Gradual magnitude pruning ``prune`` (Zhu and Gupta, 2017): W = M * W, the mask M annealed to the CF's sparsity
while the model trains.

Budget. A pruned matrix is stored as CSR: nnz values, nnz int32 column indices and m + 1 row pointers (as doping's
D), so the final nnz is the largest with 2 nnz + m + 1 <= mn / CF, and s_f = 1 - nnz_f / mn. With
``scope: global`` every targeted matrix still brings its own final nnz, but the matrices are pruned together
(one magnitude threshold across all of them, to the sum of their final nnz): the targeted CF is met, while a
matrix whose weights are larger keeps more than its share. Before annealing ends the accounting counts the
current nonzeros (at the start, all of them: CSR costs more than dense).

Schedule: the shared sparse piece (``sparse.SparsityAnnealing``): events every ``prune_every`` steps from
``anneal_start`` to ``anneal_end`` of training, the cubic sparsity s_k = s_f + (s_0 - s_f)(1 - k / n)^3; each
event keeps the largest |w| among the entries the mask still has, so a pruned entry never comes back. Pruned
weights are zeroed and receive no gradient. ``finalize`` prunes to s_f in any case (with ``init: trained`` and
``finetune_epochs: 0`` that is one-shot magnitude pruning of the trained weights).

Inits: ``scratch`` prunes while training the freshly initialised model; ``trained`` starts from the trained
dense baseline and prunes while fine-tuning it (``finetune_epochs``, default: the preset's epochs).

Deployment: the CSR matrix (``deploy_parts`` hands it to the benchmark, which fuses a layer's two matrices into
one sparse product).

Anchor: Distiller's word-language-model example (a 2-layer LSTM on PTB and WikiText-2, pruned with this schedule)
keeps the dense model's test perplexity at 80% sparsity. At 80% sparsity CSR stores 0.4 mn + m + 1 values, a CF
of about 2.5; CF 8 needs about 94% sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..settings import setting
from . import terms
from .accounting import Storage, csr_storage
from .registry import (
    CompressorConfig,
    Method,
    Structured,
    apply_structured,
    check_budget,
    register,
)
from .sparse import SCOPES, Masked, SparsityAnnealing, check_annealing, finish


class Pruned(Masked, Structured):
    """W = M * W: the stored weight and a 0/1 mask buffer. Decomposing a weight keeps it at the entries the mask
    still has; a scratch init is the freshly initialised dense weight."""

    method = "prune"
    sparse_factor = 0

    def __init__(
        self, shape: tuple[int, int], final_nnz: int, scope: str = "matrix", target: float | None = None
    ) -> None:
        super().__init__(shape)
        self.final_nnz = final_nnz
        self.scope = scope
        self.target = target
        self.register_buffer("mask", torch.ones(self.shape))

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask

    def right_inverse(self, w: Tensor) -> tuple[Tensor]:
        return (w * self.mask,)

    def storage(self) -> Storage:
        return csr_storage(self.shape[0], self.nnz)

    def final_storage(self) -> Storage:
        """Once annealed; a matrix pruned with the global group has no final nnz of its own: what it stores now."""
        return self.storage() if self.scope == "global" else csr_storage(self.shape[0], self.final_nnz)

    def describe(self) -> dict:
        detail = {"scope": self.scope, **self.sparsity()}
        if self.scope == "global":
            detail["final_nnz_is"] = "this matrix's share of the global budget"
        return detail | self.budget()

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return self.csr(factors[0]) @ x

    def deploy(self, factors: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
        csr = self.csr(factors[0])
        return lambda x: torch.mv(csr, x)  # (m, n) CSR @ (n,)

    def deploy_parts(self, factors: tuple[Tensor, ...]) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        m = self.shape[0]
        return (lambda x: x.new_zeros(m)), self.csr(factors[0])

    def deploy_terms(self, factors: tuple[Tensor, ...]) -> list[terms.Term]:
        return [terms.Sparse(self.csr(factors[0]))]


def final_nnz_for(shape: tuple[int, int], factor: float) -> int:
    """The most nonzeros whose CSR (values, column indices, m + 1 row pointers) fits mn / factor."""
    m, n = shape
    return min(m * n, math.floor((m * n / factor - (m + 1)) / 2 + 1e-9))


@dataclass
class PruneConfig(CompressorConfig):
    """Gradual magnitude pruning to the CF's sparsity."""

    scope: str = setting("matrix", choices=SCOPES)
    """``matrix``: each matrix pruned to its own budget; ``global``: one magnitude threshold across all targeted
    matrices, to their total budget."""
    initial_sparsity: float = setting(0.0, ge=0, lt=1)
    """s_0, the sparsity of the first pruning event (capped at s_f)."""
    anneal_start: float = setting(0.1, ge=0, lt=1)
    """Pruning starts at this fraction of the training steps ..."""
    anneal_end: float = setting(0.75, gt=0, le=1)
    """... and reaches s_f at this fraction (the rest of training recovers)."""
    prune_every: int = setting(100, ge=1)
    """dt: steps between pruning events (fewer when the window holds under 10 of them)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_annealing(self)


def make_pruned(name: str, w: Tensor, cfg: PruneConfig, ctx=None) -> Pruned:
    shape = tuple(w.shape)
    m, n = shape
    nnz = final_nnz_for(shape, cfg.factor)
    check_budget(
        name,
        shape,
        cfg.factor,
        2 * max(nnz, 1) + m + 1,
        f"CSR with one nonzero stores {m + 3} values (the m + 1 row pointers alone), CF {m * n / (m + 3):.1f}",
    )
    return Pruned(shape, nnz, cfg.scope, cfg.factor)


def prune_callbacks(cfg: PruneConfig) -> list:
    return [SparsityAnnealing(cfg.initial_sparsity, cfg.anneal_start, cfg.anneal_end, cfg.prune_every)]


register(
    Method(
        name="prune",
        config=PruneConfig,
        apply=apply_structured(make_pruned),
        summary="gradual magnitude pruning (Zhu-Gupta schedule) to the CF's sparsity, per matrix or global; CSR",
        callbacks=prune_callbacks,
        finalize=lambda model, cfg: finish(model),
    )
)
