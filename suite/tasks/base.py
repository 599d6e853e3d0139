"""The task-family contract: what train(), the report, the figures, the sweeps and the compressors may ask of a
kind of task (language modeling, translation, speech, ...).

A family is one module under suite/tasks/ that subclasses ``Family`` and calls ``register`` on an instance;
``suite.tasks`` imports every module of the package, so adding a family edits no list. A family gives:

- its metric (name and direction: ``ppl`` and ``wer`` are minimized, ``bleu`` maximized);
- its training and model settings as validated dataclasses (``TrainSettings`` subclasses; a model dataclass
  whose unknown keys are refused);
- its data (``load_data``: from a local folder or a download, cached), its model builder (plain nn.Modules with
  stock nn.LSTM / nn.LSTMCell weights, so the compressors find them), its LightningDataModule and its
  LightningModule (a ``Task``);
- what a method may ask of its data (``context``: a ``DataContext``).

The LightningModule logs ``val_<metric>`` and ``test_<metric>`` once per validation and test epoch, and offers
``evaluate`` (the metric over a loader outside the Trainer) and ``run_batch`` (one forward pass on a batch) to
the callbacks of the methods (the CMA diagnostics of doping use both).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from ..context import DataContext
from ..errors import ConfigError, TrialDiverged
from ..settings import Settings, build, setting

FLOAT32_MAX_LOG = 88.7  # log of the largest float32

DIRECTIONS = ("minimize", "maximize")
SCALES = ("linear", "log")

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
"""Training precisions (Lightning's): full fp32, or mixed with bf16 or fp16 autocast (fp16: CUDA only)."""
DEFAULT_PRECISION = "32"


@dataclass(frozen=True)
class Metric:
    """A task's metric: ``name`` (the records' final keys are ``val_<name>`` and ``test_<name>``) and direction."""

    name: str
    direction: str
    label: str = ""
    """For axes and tables: ``perplexity``, ``BLEU``, ``word error rate``."""
    scale: str = "linear"
    """The figures' axis scale: ``log`` where weak and strong runs differ by factors (perplexity)."""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.scale not in SCALES:
            raise ValueError(f"metric scale must be one of {SCALES}, got {self.scale!r}")

    @property
    def val(self) -> str:
        return f"val_{self.name}"

    @property
    def test(self) -> str:
        return f"test_{self.name}"


@dataclass
class ModelSettings(Settings):
    """Base of a family's model settings: errors name them ``model.<name>``."""

    section = "model"


@dataclass
class TrainSettings(Settings):
    """Settings every family's training has; a family subclasses this with its own (optimizer, schedule, ...)."""

    section = "train"

    epochs: int = setting(1, ge=0)
    batch_size: int = setting(20, ge=1)
    lr: float = setting(1.0, gt=0)
    clip: float = setting(5.0, gt=0)
    """Max global gradient norm."""
    train_fraction: float = setting(1.0, gt=0, le=1)
    """Train on this leading fraction of the training data (smoke profiles)."""
    eval_fraction: float = setting(1.0, gt=0, le=1)
    """Validate and test on this leading fraction of the validation and test data."""
    precision: str = setting(DEFAULT_PRECISION, choices=PRECISIONS)
    """What Lightning's Trainer computes in: ``32``, ``bf16-mixed`` or ``16-mixed`` (CUDA only). Weights and
    the accounting stay fp32 either way."""

    def __post_init__(self) -> None:
        if self.precision == 32 and not isinstance(self.precision, bool):
            self.precision = DEFAULT_PRECISION  # ``--set precision=32`` reads as a number
        super().__post_init__()


def step_decay(train: Any) -> Callable[[int], float]:
    """Learning rate of epoch index e (0-based) under ``train``'s ``lr``, ``lr_decay`` and ``decay_after``: lr
    for epochs 1..decay_after, then divided by lr_decay every epoch."""
    return lambda e: train.lr / train.lr_decay ** max(0, e + 1 - train.decay_after)


def train_identity(train: dict[str, Any]) -> dict[str, Any]:
    """Training settings as a run's identity holds them: the precision only where it is not the default, so
    that runs made before precision was a setting keep their run-ids (and checkpoints, published records)."""
    return {k: v for k, v in train.items() if not (k == "precision" and v == DEFAULT_PRECISION)}


@dataclass
class Example:
    """A tiny model of a family and what the shared test matrix runs it on (``Family.example``)."""

    model: dict
    """Resolved settings of a tiny model (as ``resolve_model`` returns them)."""
    batch: Any
    """One batch as the family's loaders yield it."""
    loss: Callable[[nn.Module, Any], Any]
    """``loss(model, batch)``: the bare model's training loss (a scalar tensor)."""
    context: DataContext
    """What a method may ask of the data, for this model (row frequencies of its vocabulary matrices, ...)."""


class SeededData(pl.LightningDataModule):
    """A data module whose training batches depend only on the run's seed and the epoch (``train_loader``, which
    the calibration of methods also reads with seed 0) and whose evaluation batches come from ``eval_loader``."""

    val_split: ClassVar[str] = "val"
    """The name of the validation split that ``eval_loader`` takes."""

    def train_dataloader(self) -> DataLoader:
        # The run's seed (train() seeds torch before fitting) and the trainer's epoch, read as each pass starts.
        return self.train_loader(torch.initial_seed(), lambda: self.trainer.current_epoch)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test")


class Task(pl.LightningModule):
    """Base of every family's LightningModule: the model, the metric, the optimizer and its per-epoch rate, and
    the evaluation that the Trainer's validation and test loops, ``evaluate`` and ``run_batch`` share.

    A family's task gives only what differs: ``training_step``, an evaluation accumulator (``eval_begin``,
    ``eval_step``, ``eval_end``), the forward inputs of a batch (``inputs``) and, where it is not SGD, its
    ``optimizer``. The forward pass evaluates every parametrized weight once (``parametrize.cached``), so a
    compressed stock module (nn.LSTM reads each weight once per step otherwise) costs one materialization per
    forward. A validation loss that is not finite (or that fp32 cannot exponentiate) stops the run as diverged.
    """

    metric: Metric
    optimizer: ClassVar[type[torch.optim.Optimizer]] = torch.optim.SGD
    """Built with lr 1; the epoch's rate is ``lr_at(epoch)`` through a LambdaLR stepped once per epoch."""

    def __init__(self, model: nn.Module, lr_at: Callable[[int], float]) -> None:
        super().__init__()
        self.model = model
        self.lr_at = lr_at
        self.metric_detail: dict[str, Any] = {}
        """Facts about how the metric was computed (a sacrebleu signature), written into the record."""
        self._eval_acc: dict[str, Any] = {}

    def forward(self, *args, **kwargs):
        with parametrize.cached():
            return self.model(*args, **kwargs)

    def configure_optimizers(self):
        opt = self.optimizer(self.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_at)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def check_training_loss(self, loss: Tensor, batch_idx: int) -> None:
        if not torch.isfinite(loss):
            raise TrialDiverged(
                f"training loss became {loss.item()} at epoch {self.current_epoch + 1}, step {batch_idx}"
            )

    # Evaluation: one accumulator per split, filled batch by batch, closed into (loss per unit, metric).
    def eval_begin(self, split: str) -> Any:
        raise NotImplementedError

    def eval_step(self, acc: Any, batch: Any, split: str) -> None:
        raise NotImplementedError

    def eval_end(self, acc: Any, split: str, dataset: Any) -> tuple[float, float]:
        raise NotImplementedError

    def inputs(self, batch: Any) -> tuple:
        """The forward pass's arguments for a batch (on the module's device)."""
        raise NotImplementedError

    def _close(self, split: str, dataset: Any) -> None:
        loss, value = self.eval_end(self._eval_acc.pop(split), split, dataset)
        if split == "val" and not loss < FLOAT32_MAX_LOG:  # NaN, inf, or a loss fp32 cannot exponentiate
            raise TrialDiverged(f"validation loss became {loss:.4g} at epoch {self.current_epoch + 1}")
        self.log(f"{split}_loss", loss)
        self.log(f"{split}_{self.metric.name}", value)

    def on_validation_epoch_start(self) -> None:
        self._eval_acc["val"] = self.eval_begin("val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.eval_step(self._eval_acc["val"], batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._close("val", self.trainer.val_dataloaders.dataset)

    def on_test_epoch_start(self) -> None:
        self._eval_acc["test"] = self.eval_begin("test")

    def test_step(self, batch, batch_idx: int) -> None:
        self.eval_step(self._eval_acc["test"], batch, "test")

    def on_test_epoch_end(self) -> None:
        self._close("test", self.trainer.test_dataloaders.dataset)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode and no gradients, the model's training mode restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def evaluate(self, loader, split: str = "val") -> float:
        """The metric over ``loader`` outside the Trainer, as the ``split``'s loop computes it (diagnostics such as
        'val with D removed')."""
        with self.evaluating():
            acc = self.eval_begin(split)
            for batch in loader:
                self.eval_step(acc, batch, split)
            return self.eval_end(acc, split, getattr(loader, "dataset", None))[1]

    def run_batch(self, batch) -> None:
        """One forward pass of the model on ``batch`` in eval mode (diagnostics capture what each matrix sees)."""
        with self.evaluating():
            self(*self.inputs(batch))

    def decoders(self) -> dict[str, Callable[[Any], Any]]:
        """How a deployed model of this task turns a batch into its output (``suite bench decode`` times each):
        name -> decode(batch). None by default (a language model's is ``suite bench generate``)."""
        return {}


class Family:
    """A kind of task. Subclasses set the class attributes and implement the methods that raise here."""

    name: ClassVar[str]
    metric: ClassVar[Metric]
    train_settings: ClassVar[type[TrainSettings]] = TrainSettings
    model_settings: ClassVar[type[ModelSettings]]
    """A ``ModelSettings`` dataclass of the model's settings (``suite.settings``); unknown keys are refused."""
    datasets: ClassVar[tuple[str, ...]] = ()
    """Dataset names this family loads (``suite prepare <name>``)."""
    units: ClassVar[str] = "examples"
    """What training throughput counts (``tokens``, ``frames``)."""

    def load_data(self, dataset: str | dict, data_dir: str | None, train: TrainSettings) -> Any:
        """Load (from ``data_dir``/SUITE_DATA_DIR, a cache or a download) everything the runs need; raise
        DataError with what to do when it is missing or corrupt. The result has ``describe() -> dict``."""
        raise NotImplementedError

    def data_files(self, dataset: str | dict, data_dir: str | None) -> dict[str, Path | str]:
        """The files ``load_data`` reads, by name (a split's file, or a folder read whole), or a hub dataset's id (a
        string): what a run's data fingerprint hashes. Empty: the family does not say, and its runs are reused
        without a check of their data. Missing data is the DataError ``load_data`` raises."""
        return {}

    def check_model(self, model: dict) -> dict:
        """The model settings, validated by ``model_settings`` and with its defaults filled in."""
        return dataclasses.asdict(build(self.model_settings, dict(model), "model"))

    def resolve_model(self, model: dict, data: Any) -> dict:
        """The model settings plus what the data fixes (vocabulary sizes, feature dimension)."""
        return dict(model)

    def build_model(self, model: dict) -> nn.Module:
        """A fresh model from resolved settings (``resolve_model``)."""
        raise NotImplementedError

    def datamodule(self, data: Any, train: TrainSettings) -> pl.LightningDataModule:
        raise NotImplementedError

    def task(self, model: nn.Module, train: TrainSettings, lr_at: Callable[[int], float]) -> Task:
        raise NotImplementedError

    def lr_at(self, train: TrainSettings) -> Callable[[int], float]:
        """Learning rate of epoch index e (0-based); the default is constant."""
        return lambda e: train.lr

    def train_units(self, datamodule: pl.LightningDataModule) -> int:
        """How many ``units`` one training epoch processes (for throughput)."""
        return 0

    def example(self, seed: int = 0) -> Example:
        """A tiny model and batch for the shared method matrix (tests/test_methods.py)."""
        raise NotImplementedError

    def context(self, data: Any, datamodule: pl.LightningDataModule, needs: frozenset[str]) -> DataContext:
        """The DataContext fields in ``needs``; a family that cannot give one raises ConfigError saying so."""
        if needs:
            raise ConfigError(f"task family {self.name} cannot give methods {', '.join(sorted(needs))}")
        return DataContext()
