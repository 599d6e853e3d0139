"""The shared sparse piece: a binary mask over one stored tensor, its magnitude pruning, and the Zhu-Gupta
schedule that anneals it. Doping (the sparse D of W = S + M * D) and gradual pruning (M * W) both use it.

A parametrization with a sparse part (``Masked``) keeps ``mask``, a buffer of 0/1 values in the dtype of the
tensor it masks (S + D * M is then one fused addcmul), the index of that tensor among its stored factors
(``sparse_factor``) and ``final_nnz``, the nonzeros the CF leaves it. Pruning is by magnitude among the entries
the mask still has, so a pruned entry never comes back; pruned values are zeroed. The mask computation is
torch.nn.utils.prune's L1-unstructured one (keep the largest |values|), restricted to live entries.

Annealing (Zhu and Gupta, 2017). Pruning events k = 0..n at steps t_0 + k dt, with t_0 = start * T and
n dt <= (end - start) * T for T training steps; at event k every masked matrix is pruned to
s_k = s_f + (s_0 - s_f)(1 - k / n)^3, the last event exactly to s_f (its final nnz). dt is ``every``, shortened
when the window would hold fewer than 10 events. The method's ``finalize`` prunes to s_f when training ends
(``finish``), so a record is always counted at its final sparsity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from .accounting import parametrized_tensors
from .registry import originals

MIN_EVENTS = 10


class Masked:
    """Mixin of a parametrization with a sparse part: ``mask`` (buffer), ``sparse_factor``, ``final_nnz``."""

    mask: Tensor
    final_nnz: int
    sparse_factor: int = -1
    """Index, among the stored factors, of the tensor the mask applies to."""

    @property
    def live(self) -> Tensor:
        """The mask as booleans."""
        return self.mask != 0

    @property
    def nnz(self) -> int:
        return int(self.mask.count_nonzero())


@dataclass
class SparseTensor:
    """One masked weight of a model: its qualified name, the parametrization, all its stored tensors and the
    one the mask applies to."""

    name: str
    param: Masked
    factors: tuple[Tensor, ...]
    values: Tensor


def sparse_tensors(model: nn.Module) -> list[SparseTensor]:
    out = []
    for qual, module, tensor_name, param in parametrized_tensors(model):
        if isinstance(param, Masked):
            factors = originals(module, tensor_name)
            out.append(SparseTensor(qual, param, factors, factors[param.sparse_factor]))
    return out


def magnitude_mask(values: Tensor, live: Tensor, keep: int) -> Tensor:
    """0/1 mask (values' dtype) of the ``keep`` largest |values| among ``live`` entries (pruned ones rank
    below every live one, so they are never chosen back)."""
    scores = torch.where(live, values.abs(), -1.0).flatten()
    kept = torch.zeros(values.numel(), dtype=values.dtype, device=values.device)
    kept[torch.topk(scores, keep, sorted=False).indices] = 1
    return kept.view_as(values)


@torch.no_grad()
def prune_to(t: SparseTensor, keep: int) -> None:
    """Keep the ``keep`` largest-magnitude live entries of the masked tensor; zero the pruned values."""
    if keep >= t.param.nnz:
        return
    t.param.mask.copy_(magnitude_mask(t.values, t.param.live, keep))
    t.values.mul_(t.param.mask)


def finish(model: nn.Module) -> None:
    """Prune every masked weight to its final sparsity s_f (the deployed state)."""
    for t in sparse_tensors(model):
        prune_to(t, t.param.final_nnz)


def cubic_sparsity(k: int, n: int, s0: float, sf: float) -> float:
    """Zhu-Gupta sparsity after pruning event k of n (event 0 at t_0, event n at t_0 + n dt)."""
    return sf + (s0 - sf) * (1 - k / n) ** 3


@dataclass(frozen=True)
class Schedule:
    """Pruning events at steps t0 + k dt, k = 0..n."""

    t0: int
    dt: int
    n: int

    @classmethod
    def build(cls, total_steps: int, start: float, end: float, every: int) -> Schedule:
        t0 = math.floor(start * total_steps)
        window = max(0, math.floor(end * total_steps) - t0)
        dt = max(1, min(every, window // MIN_EVENTS))
        return cls(t0, dt, max(1, window // dt))

    def events_done(self, step: int) -> int:
        """Index of the last event due after ``step`` optimizer steps (-1: none yet)."""
        return -1 if step < self.t0 else min(self.n, (step - self.t0) // self.dt)


def keep_count(t: SparseTensor, k: int, n: int, s0: float) -> int:
    """Nonzeros of one masked matrix after event k: the cubic schedule, ending exactly at its final nnz."""
    numel = t.values.numel()
    if k >= n:
        return t.param.final_nnz
    sf = 1 - t.param.final_nnz / numel
    sparsity = cubic_sparsity(k, n, min(s0, sf), sf)
    return max(t.param.final_nnz, round(numel * (1 - sparsity)))


class SparsityAnnealing(pl.Callback):
    """Anneals the sparsity of every masked matrix of the trained module (see the module docstring)."""

    def __init__(self, initial_sparsity: float, start: float, end: float, every: int) -> None:
        self.s0, self.start, self.end, self.every = initial_sparsity, start, end, every
        self.schedule: Schedule | None = None
        self.done = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        self.schedule = Schedule.build(total, self.start, self.end, self.every)
        self.done = -1
        self.advance(pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        self.advance(pl_module, trainer.global_step)

    def advance(self, module: nn.Module, step: int) -> None:
        """Run the pruning event due after ``step`` optimizer steps, if it has not run yet."""
        k = self.schedule.events_done(step)
        if k > self.done:
            for t in sparse_tensors(module):
                prune_to(t, keep_count(t, k, self.schedule.n, self.s0))
            self.done = k
