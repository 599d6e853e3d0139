"""The library API: compress any ``nn.Module`` with a registered method, train it with the method's hooks, count
what it stores and export it. The suite's own ``train()`` goes through the same function.

    import suite
    c = suite.compress(model, "doped_kp", factor=10)     # in place; the default targets are the recurrent matrices
    for step in range(steps):                            # a plain loop (or trainer.fit(..., callbacks=c.callbacks()))
        ...; optimizer.step()
        c.on_step(step + 1, steps)                       # annealing, pruning events
    c.finalize()                                         # the final sparsity, quantization
    print(c.accounting.cf)
    c.export("model.safetensors")
    c2 = suite.load("model.safetensors", fresh_model)    # the same compressed model
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .compressors import registry
from .compressors.accounting import Accounting, account
from .context import DataContext
from .errors import ConfigError


@dataclass
class Compressed:
    """A model compressed in place by one method, with what the method needs during and after training."""

    model: nn.Module
    method: str
    config: registry.CompressorConfig
    finalized: bool = False
    _hooks: list | None = field(default=None, repr=False)

    @property
    def settings(self) -> dict[str, Any]:
        return self.config.to_dict()

    @property
    def accounting(self) -> Accounting:
        """What the model stores against its dense shapes (``.cf``, ``.to_dict()``: the table of a record)."""
        return account(self.model, self.config.targets, method=self.method)

    def callbacks(self) -> list:
        """The Lightning callbacks the method trains with (sparsity annealing), new ones at each call."""
        method = registry.get(self.method)
        return list(method.callbacks(self.config)) if method.callbacks else []

    def on_step(self, step: int, total_steps: int) -> None:
        """For a hand-written loop: call after each optimizer step with the steps done so far and the steps the
        training will take; it runs the method's schedule events due by then (as its callbacks would)."""
        if self._hooks is None:
            self._hooks = [cb for cb in self.callbacks() if hasattr(cb, "advance")]
        for hook in self._hooks:
            hook.plan(total_steps)
            hook.advance(self.model, step)

    def finalize(self) -> None:
        """The method's end of training (the final sparsity, quantized factors); run it before evaluating,
        counting or exporting. Running it twice does nothing more."""
        method = registry.get(self.method)
        if method.finalize is not None and not self.finalized:
            method.finalize(self.model, self.config)
        self.finalized = True

    def export(self, path: str | Path) -> dict[str, Any]:
        """Write the compressed parts (factors, CSR sparse parts, biases and the rest) as safetensors; returns
        the file's size next to what the accounting stores."""
        from . import __version__, export

        meta = {
            "method": self.method,
            "settings": self.settings,
            "finalized": self.finalized,
            "suite": __version__,
        }
        return export.save(self.model, path, meta, self.accounting)


def compress(
    model: nn.Module,
    method: str,
    factor: float | None = None,
    targets: str | Sequence[str] | None = None,
    *,
    row_frequencies: Mapping[str, Tensor] | None = None,
    calibration: Sequence[Any] = (),
    **settings: Any,
) -> Compressed:
    """Compress ``model`` in place with ``method`` (see ``suite methods -v`` for each method's settings).

    ``targets``: fnmatch patterns on qualified parameter names; by default the recurrent matrices of nn.LSTM,
    nn.GRU, nn.LSTMCell and nn.GRUCell (``*weight_ih_l*``, ``*weight_hh*``, ...); name nn.Linear or nn.Embedding
    weights explicitly (``["*.linear1.weight"]``). ``init``: ``"scratch"`` (the method's default: fresh factors,
    for a model about to be trained) or ``"trained"`` (decompose the current weights). ``row_frequencies``:
    the training counts of the word each row of a vocabulary matrix stands for, for methods that need them
    (groupreduce). Errors are ConfigError / CompressionError with one line that says what to do.
    """
    if targets is not None:
        settings["targets"] = [targets] if isinstance(targets, str) else list(targets)
    if factor is not None:
        settings["factor"] = factor
    cfg = registry.make_config(method, settings)
    if registry.get(method).resize is not None:
        raise ConfigError(
            f"{method} changes the model's architecture itself (a smaller model), so it applies only to the "
            "suite's task families; build the smaller model yourself, or choose a weight-level method"
        )
    ctx = DataContext(row_frequencies=dict(row_frequencies or {}), calibration=tuple(calibration))
    return apply(model, method, cfg, ctx)


def apply(model: nn.Module, method: str, cfg: registry.CompressorConfig, ctx: DataContext) -> Compressed:
    """``compress`` with a validated config and the task's data context (train() calls this)."""
    registry.get(method).apply(model, cfg, ctx)
    return Compressed(model, method, cfg)


def load(path: str | Path, model: nn.Module, **data: Any) -> Compressed:
    """Load a file ``Compressed.export`` wrote into ``model``, a fresh instance of the exported model's class:
    it is compressed the same way (``data``: the ``row_frequencies`` a method needs, as at export), then given
    the stored tensors."""
    from . import export

    tensors, meta = export.read(path)
    settings = {k: v for k, v in meta["settings"].items() if k != "init"}
    done = compress(model, meta["method"], **settings, **data)
    export.unpack(model, tensors)
    done.finalized = bool(meta.get("finalized"))
    return done
