"""Training-time callback of the doped methods: the CMA diagnostics (co-matrix adaptation: S leaning on D).

Per validation epoch while fitting: ``d_sparsity`` (zeros of M * D over all doped matrices),
``val_<metric>_without_d`` (the task's validation metric with S alone, from the task's own ``evaluate``) and
``d_to_s_ratio`` (mean over the doped recurrent matrices of ||(M * D) X||_F / ||S X||_F, X the vectors each
matrix multiplies on the first validation batch, as the task's ``run_batch`` runs it: layer inputs for W_ih,
previous hidden states for W_hh, in both directions of a bidirectional nn.LSTM and for nn.LSTMCell steps).
Sparsity annealing itself is the shared ``sparse.SparsityAnnealing``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .doping import CMA, doped_tensors


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


def _lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, bias) -> tuple[Tensor, Tensor]:
    i, f, g, o = (x @ w_ih.T + h @ w_hh.T + bias).chunk(4, 1)  # (B, H) each, nn.LSTM's gate order
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _replay_lstm(lstm: nn.LSTM, prefix: str, args: tuple, out: dict[str, list[Tensor]]) -> None:
    """Replay an nn.LSTM call layer by layer and direction by direction, recording for each weight the
    vectors it multiplies at valid (non-padded) steps."""
    x = args[0]
    if isinstance(x, PackedSequence):
        x, lengths = pad_packed_sequence(x, batch_first=False)  # (T, B, in), original batch order
    else:
        x = x.transpose(0, 1) if lstm.batch_first else x  # (T, B, in)
        lengths = torch.full((x.size(1),), x.size(0))
    hx = args[1] if len(args) > 1 and args[1] is not None else None
    steps, batch = x.size(0), x.size(1)
    valid = torch.arange(steps, device=x.device)[:, None] < lengths.to(x.device)[None, :]  # (T, B)
    dirs = 2 if lstm.bidirectional else 1
    for layer in range(lstm.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(lstm, f"weight_ih{sfx}"), getattr(lstm, f"weight_hh{sfx}")
            bias = getattr(lstm, f"bias_ih{sfx}") + getattr(lstm, f"bias_hh{sfx}") if lstm.bias else 0
            zeros = x.new_zeros(batch, lstm.hidden_size)
            h, c = (hx[0][layer * dirs + d], hx[1][layer * dirs + d]) if hx is not None else (zeros, zeros)
            y = x.new_zeros(steps, batch, lstm.hidden_size)
            order = range(steps - 1, -1, -1) if d else range(steps)  # the reverse direction starts at the end
            for t in order:
                m = valid[t]  # (B,): padded steps leave the state as it is
                out.setdefault(f"{prefix}weight_ih{sfx}", []).append(x[t][m])
                out.setdefault(f"{prefix}weight_hh{sfx}", []).append(h[m])
                h2, c2 = _lstm_step(x[t], h, c, w_ih, w_hh, bias)
                h, c = torch.where(m[:, None], h2, h), torch.where(m[:, None], c2, c)
                y[t] = h * m[:, None]
            outs.append(y)
        x = torch.cat(outs, -1)  # (T, B, dirs H): the next layer's input


@torch.no_grad()
def lstm_matrix_inputs(model: nn.Module, run: Callable[[], object]) -> dict[str, Tensor]:
    """The vectors each recurrent weight multiplies while ``run()`` evaluates ``model``, (N, in) per qualified
    weight name: W_ih sees the layer's inputs, W_hh the hidden state of the step before. nn.LSTM calls are
    captured and replayed (both directions, padded steps of packed sequences left out); nn.LSTMCell calls are
    captured step by step. Call it in eval mode (no dropout)."""
    lstms = {n: m for n, m in model.named_modules() if isinstance(m, nn.LSTM) and not m.proj_size}
    cells = {n: m for n, m in model.named_modules() if isinstance(m, nn.LSTMCell)}
    captured: dict[str, list[tuple]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=n: captured.setdefault(name, []).append(args))
        for n, m in {**lstms, **cells}.items()
    ]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, list[Tensor]] = {}
    with parametrize.cached():
        for name, calls in captured.items():
            prefix = f"{name}." if name else ""
            for args in calls:
                if name in lstms:
                    _replay_lstm(lstms[name], prefix, args, out)
                else:
                    x = args[0] if args[0].dim() == 2 else args[0][None]  # (B, in)
                    hx = args[1] if len(args) > 1 and args[1] is not None else None
                    h = hx[0] if hx is not None else x.new_zeros(x.size(0), cells[name].hidden_size)
                    out.setdefault(f"{prefix}weight_ih", []).append(x)
                    out.setdefault(f"{prefix}weight_hh", []).append(h.reshape(x.size(0), -1))
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def sparse_to_structured_ratios(model: nn.Module, run: Callable[[], object]) -> dict[str, float]:
    """||(M * D) X||_F / ||S X||_F for each doped LSTM weight, X as ``lstm_matrix_inputs`` gives it."""
    inputs = lstm_matrix_inputs(model, run)
    ratios = {}
    for t in doped_tensors(model):
        if t.name in inputs:
            x = inputs[t.name]  # (N, n)
            s = t.param.structured(*t.factors[:-1])  # (m, n)
            sparse = t.values * t.param.mask
            ratios[t.name] = ((x @ sparse.T).norm() / (x @ s.T).norm().clamp_min(1e-30)).item()
    return ratios


class CMADiagnostics(pl.Callback):
    """Logs the CMA columns of the module docstring (named by ``doping.CMA``, which the views read) after each
    validation epoch while fitting. The trained module is a task (``suite.tasks.base.Task``): it evaluates its
    metric and runs a batch for us; any other LightningModule (a library user's) gets ``d_sparsity`` alone."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        doped = doped_tensors(pl_module)
        if not doped:
            return
        nnz = sum(t.param.nnz for t in doped)
        sparsity = CMA.schedule.key
        metrics = {sparsity: 1 - nnz / sum(t.values.numel() for t in doped)}
        if not hasattr(pl_module, "run_batch"):  # a library user's module (suite.compress): D's sparsity only
            pl_module.log(sparsity, metrics[sparsity])
            return
        loader = trainer.datamodule.val_dataloader()
        with sparse_disabled(pl_module):
            metrics[f"{pl_module.metric.val}{CMA.without}"] = pl_module.evaluate(loader)
        batch = next(iter(loader))
        ratios = sparse_to_structured_ratios(pl_module, lambda: pl_module.run_batch(batch))
        if ratios:
            (ratio,) = CMA.extra
            metrics[ratio.key] = sum(ratios.values()) / len(ratios)
        for key, value in metrics.items():
            pl_module.log(key, value)
