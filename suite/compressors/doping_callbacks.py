"""Training-time callbacks of the doped methods: sparsity annealing of D and the CMA diagnostics.

Annealing (Zhu and Gupta, 2017). Pruning events k = 0..n at steps t_0 + k dt, with t_0 = anneal_start * T and
n dt <= (anneal_end - anneal_start) * T for T training steps; at event k every doped matrix is magnitude-pruned
to s_k = s_f + (s_0 - s_f)(1 - k / n)^3, the last event exactly to s_f (its final nnz). dt is ``prune_every``,
shortened when the window would hold fewer than 10 events. A pruned entry never comes back, and if training
stops before the last event, D is pruned to s_f when training ends, so a record is always counted annealed.

CMA diagnostics (co-matrix adaptation: S leaning on D), per validation epoch while fitting:
``d_sparsity`` (zeros of M * D over all doped matrices), ``val_ppl_without_d`` (validation perplexity of S
alone), ``d_to_s_ratio`` (mean over the doped LSTM matrices of ||(M * D) X||_F / ||S X||_F, X the vectors each
matrix multiplies on the first validation batch: layer inputs for W_ih, previous hidden states for W_hh).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .doping import DopedTensor, doped_tensors, finish_annealing, prune_to

MIN_EVENTS = 10


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


def keep_count(t: DopedTensor, k: int, n: int, s0: float) -> int:
    """Nonzeros of one doped matrix after event k: the cubic schedule, ending exactly at its final nnz."""
    numel = t.d.numel()
    if k >= n:
        return t.param.final_nnz
    sf = 1 - t.param.final_nnz / numel
    sparsity = cubic_sparsity(k, n, min(s0, sf), sf)
    return max(t.param.final_nnz, round(numel * (1 - sparsity)))


class SparsityAnnealing(pl.Callback):
    """Anneals the sparsity of every doped matrix of the trained module (see the module docstring)."""

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

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        finish_annealing(pl_module)

    def advance(self, module: nn.Module, step: int) -> None:
        """Run the pruning event due after ``step`` optimizer steps, if it has not run yet."""
        k = self.schedule.events_done(step)
        if k > self.done:
            for t in doped_tensors(module):
                prune_to(t, keep_count(t, k, self.schedule.n, self.s0))
            self.done = k


@contextmanager
def sparse_disabled(model: nn.Module) -> Iterator[None]:
    """Evaluate every doped matrix as its structured part alone."""
    params = [t.param for t in doped_tensors(model)]
    for p in params:
        p.sparse_enabled = False
    try:
        yield
    finally:
        for p in params:
            p.sparse_enabled = True


@torch.no_grad()
def lstm_matrix_inputs(model: nn.Module, run: Callable[[], object]) -> dict[str, Tensor]:
    """The vectors each nn.LSTM weight multiplies while ``run()`` evaluates ``model``, (N, in) per qualified
    weight name: W_ih_l{k} sees layer k's inputs, W_hh_l{k} the hidden state of the step before. The
    recurrence is replayed layer by layer from each LSTM's captured input (eval mode: no dropout)."""
    lstms = {n: m for n, m in model.named_modules() if isinstance(m, nn.LSTM) and not m.bidirectional}
    captured: dict[str, tuple] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=n: captured.setdefault(name, args))
        for n, m in lstms.items()
        if not m.proj_size
    ]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, Tensor] = {}
    for name, args in captured.items():
        lstm, prefix = lstms[name], f"{name}." if name else ""
        x = args[0].transpose(0, 1) if lstm.batch_first else args[0]  # (T, B, in)
        hx = args[1] if len(args) > 1 and args[1] is not None else None
        with parametrize.cached():
            for layer in range(lstm.num_layers):
                w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
                bias = (
                    getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
                    if lstm.bias
                    else 0
                )
                zeros = x.new_zeros(x.size(1), lstm.hidden_size)
                h, c = (hx[0][layer], hx[1][layer]) if hx is not None else (zeros, zeros)
                prev, outs = [], []
                for step in x:  # (B, in)
                    prev.append(h)
                    i, f, g, o = (step @ w_ih.T + h @ w_hh.T + bias).chunk(4, 1)  # (B, H) each
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    outs.append(h)
                out[f"{prefix}weight_ih_l{layer}"] = x.reshape(-1, x.size(-1))  # (T B, in)
                out[f"{prefix}weight_hh_l{layer}"] = torch.stack(prev).reshape(
                    -1, lstm.hidden_size
                )  # (T B, H)
                x = torch.stack(outs)  # (T, B, H): the next layer's input
    return out


@torch.no_grad()
def sparse_to_structured_ratios(model: nn.Module, run: Callable[[], object]) -> dict[str, float]:
    """||(M * D) X||_F / ||S X||_F for each doped LSTM weight, X as ``lstm_matrix_inputs`` gives it."""
    inputs = lstm_matrix_inputs(model, run)
    ratios = {}
    for t in doped_tensors(model):
        if t.name in inputs:
            x = inputs[t.name]  # (N, n)
            s = t.param.structured(*t.factors)  # (m, n)
            sparse = t.d * t.param.mask
            ratios[t.name] = ((x @ sparse.T).norm() / (x @ s.T).norm().clamp_min(1e-30)).item()
    return ratios


class CMADiagnostics(pl.Callback):
    """Logs the CMA columns of the module docstring after each validation epoch while fitting."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        doped = doped_tensors(pl_module)
        if not doped:
            return
        nnz = sum(t.param.nnz for t in doped)
        metrics = {"d_sparsity": 1 - nnz / sum(t.d.numel() for t in doped)}
        loader = trainer.datamodule.val_dataloader()
        if hasattr(pl_module, "perplexity"):
            with sparse_disabled(pl_module):
                metrics["val_ppl_without_d"] = pl_module.perplexity(loader)
        x, _ = next(iter(loader))
        ratios = sparse_to_structured_ratios(pl_module, lambda: pl_module(x.to(pl_module.device)))
        if ratios:
            metrics["d_to_s_ratio"] = sum(ratios.values()) / len(ratios)
        for key, value in metrics.items():
            pl_module.log(key, value)
