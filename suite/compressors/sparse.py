"""The shared sparse piece: a binary mask over one stored tensor, its magnitude pruning, and the Zhu-Gupta
schedule that anneals it. Doping (the sparse D of W = S + M * D) and gradual pruning (M * W) both use it.

A parametrization with a sparse part (``Masked``) keeps ``mask``, a buffer of 0/1 values in the dtype of the
tensor it masks (S + D * M is then one fused addcmul), the index of that tensor among its stored factors
(``sparse_factor``) and ``final_nnz``, the nonzeros the CF leaves it. Pruning is by magnitude among the entries
the mask still has, so a pruned entry never comes back; pruned values are zeroed. The mask computation is
torch.nn.utils.prune's L1-unstructured one (keep the largest |values|), restricted to live entries.

Scope. A masked matrix of scope ``matrix`` is pruned alone, to its own final nnz. The matrices of scope
``global`` in one model are pruned together, as one group: one magnitude threshold across all of them (the
largest |values| among their live entries, wherever they are), to the sum of their final nnz; how the nonzeros
spread over the matrices is then decided by the magnitudes.

Annealing (Zhu and Gupta, 2017). Pruning events k = 0..n at steps t_0 + k dt, with t_0 = start * T and
n dt <= (end - start) * T for T training steps; at event k every group is pruned to
s_k = s_f + (s_0 - s_f)(1 - k / n)^3, the last event exactly to s_f (its final nnz). dt is ``every``, shortened
when the window would hold fewer than 10 events. The method's ``finalize`` prunes to s_f when training ends
(``finish``), so a record is always counted at its final sparsity.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .accounting import parametrized_tensors
from .registry import originals

MIN_EVENTS = 10
SCOPES = ("matrix", "global")


class Masked:
    """Mixin of a parametrization with a sparse part: ``mask`` (buffer), ``sparse_factor``, ``final_nnz``."""

    mask: Tensor
    final_nnz: int
    sparse_factor: int = -1
    """Index, among the stored factors, of the tensor the mask applies to."""
    scope: str = "matrix"
    """``matrix``: pruned alone; ``global``: pruned with the model's other global matrices (module docstring)."""

    @property
    def live(self) -> Tensor:
        """The mask as booleans."""
        return self.mask != 0

    @property
    def nnz(self) -> int:
        return int(self.mask.count_nonzero())

    def sparsity(self) -> dict:
        """The nonzeros and sparsity now and once annealed, for ``describe``."""
        numel = self.mask.numel()
        return {
            "nnz": self.nnz,
            "sparsity": 1 - self.nnz / numel,
            "final_nnz": self.final_nnz,
            "final_sparsity": 1 - self.final_nnz / numel,
        }

    def csr(self, values: Tensor) -> Tensor:
        """The masked tensor in CSR with int32 indices: exactly the entries the mask keeps (``masked_csr``)."""
        return masked_csr(values, self.mask)


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
    prune_group([t], keep)


@torch.no_grad()
def prune_group(group: list[SparseTensor], keep: int) -> None:
    """Keep the ``keep`` largest-magnitude live entries over all tensors of ``group`` together (one threshold);
    zero the pruned values."""
    if keep >= sum(t.param.nnz for t in group):
        return
    values = torch.cat([t.values.detach().flatten() for t in group])
    live = torch.cat([t.param.live.flatten() for t in group])
    kept = magnitude_mask(values, live, keep)
    start = 0
    for t in group:
        numel = t.values.numel()
        t.param.mask.copy_(kept[start : start + numel].view_as(t.param.mask))
        t.values.mul_(t.param.mask)
        start += numel


def groups(tensors: list[SparseTensor]) -> list[list[SparseTensor]]:
    """The pruning groups: each ``matrix``-scope tensor alone, every ``global``-scope one together."""
    alone = [[t] for t in tensors if t.param.scope != "global"]
    together = [t for t in tensors if t.param.scope == "global"]
    return alone + ([together] if together else [])


def finish(model: nn.Module) -> None:
    """Prune every masked weight (each group) to its final sparsity s_f (the deployed state)."""
    for group in groups(sparse_tensors(model)):
        prune_group(group, sum(t.param.final_nnz for t in group))


def masked_csr(values: Tensor, mask: Tensor) -> Tensor:
    """values * mask in CSR with int32 indices: exactly the entries the mask keeps (what a CSR storage counts:
    nnz values, nnz column indices, rows + 1 row pointers)."""
    m, n = values.shape
    rows, cols = mask.nonzero(as_tuple=True)  # row-major order
    crow = torch.zeros(m + 1, dtype=torch.int32, device=values.device)
    crow[1:] = torch.bincount(rows, minlength=m).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols.int(), values[rows, cols].contiguous(), (m, n))


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


def keep_count(group: list[SparseTensor], k: int, n: int, s0: float) -> int:
    """Nonzeros of a pruning group after event k: the cubic schedule, ending exactly at its final nnz."""
    numel = sum(t.values.numel() for t in group)
    final = sum(t.param.final_nnz for t in group)
    if k >= n:
        return final
    sf = 1 - final / numel
    sparsity = cubic_sparsity(k, n, min(s0, sf), sf)
    return max(final, round(numel * (1 - sparsity)))


def check_annealing(cfg) -> None:
    """The annealing window of a config (``anneal_start``, ``anneal_end``) ends after it starts; each setting's own
    range is its field's."""
    if not cfg.anneal_end > cfg.anneal_start:
        raise ConfigError(
            f"anneal_end must be after anneal_start ({cfg.anneal_start:g}), got {cfg.anneal_end!r}"
        )


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

    def plan(self, total_steps: int) -> None:
        """For a hand-written loop (``suite.compress``): the schedule of a training of ``total_steps`` steps."""
        if self.schedule is None or getattr(self, "total_steps", None) != total_steps:
            self.schedule = Schedule.build(total_steps, self.start, self.end, self.every)
            self.total_steps, self.done = total_steps, -1

    def advance(self, module: nn.Module, step: int) -> None:
        """Run the pruning event due after ``step`` optimizer steps, if it has not run yet."""
        k = self.schedule.events_done(step)
        if k > self.done:
            for group in groups(sparse_tensors(module)):
                prune_group(group, keep_count(group, k, self.schedule.n, self.s0))
            self.done = k
