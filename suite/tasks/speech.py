"""Speech (family ``speech``): connected spoken digits from FSDD, log-mel features, a (bi)LSTM acoustic model
trained with CTC, greedy decoding, word error rate by jiwer.

WER is reported as a fraction (0.05 = 5%): jiwer's corpus-level (substitutions + deletions + insertions) over
the reference words of the whole split. The ten digit words are the vocabulary (``zero`` .. ``nine``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..context import DataContext
from ..data.audio import N_MELS
from ..data.buckets import BucketBatchSampler
from ..data.fsdd import DIGIT_WORDS, FSDD, UtteranceSettings, load_fsdd, locate_fsdd
from ..data.loaders import loader
from ..data.utterances import Batch, Utterances, collate
from ..errors import ConfigError
from ..models.acoustic import BLANK, CLASSES, build_acoustic, greedy_decode
from ..settings import setting
from . import register
from .base import Example, Family, Metric, ModelSettings, SeededData, Task, TrainSettings, step_decay


@dataclass
class SpeechTrain(TrainSettings, UtteranceSettings):
    """Training of the acoustic model: Adam, step decay of the learning rate, clipped gradient norm; and how the
    utterances are built (the fields of ``suite.data.fsdd.UtteranceSettings``)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    """Adam's learning rate for epochs 1..decay_after."""
    clip: float = 5.0
    lr_decay: float = setting(1.0, gt=0)
    """The learning rate is divided by this every epoch after ``decay_after`` (1: constant)."""
    decay_after: int = setting(0, ge=0)
    eval_batch_size: int = setting(64, ge=1)


@dataclass
class SpeechModel(ModelSettings):
    """The acoustic model's settings (``features`` comes from the data)."""

    hidden: int = setting(128, ge=1)
    layers: int = setting(2, ge=1)
    bidirectional: bool = True
    dropout: float = setting(0.0, ge=0, lt=1)
    """Between LSTM layers and before the head."""
    stack: int = setting(3, ge=1, le=8, hint="a short digit must keep several steps")
    """Feature frames joined into one LSTM step (3: 30 ms steps); see suite.models.acoustic."""
    features: int | None = setting(None, ge=1)
    """Feature bins per frame (40), filled in from the data."""


# Transcripts and the metric -------------------------------------------------------------------------------


def transcript(labels: Sequence[int]) -> str:
    """Class ids (digit + 1; the blank never appears) -> the digit words, space separated."""
    return " ".join(DIGIT_WORDS[c - 1] for c in labels)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus-level WER (a fraction) of hypotheses against non-empty references, by jiwer."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return math.nan
    return float(jiwer.wer(list(references), list(hypotheses)))


# Data -----------------------------------------------------------------------------------------------------


class SpeechData(SeededData):
    """Length-bucketed, zero-padded batches of the train/valid/test utterances: training batches shuffled by
    (run seed, epoch), evaluation sorted by length."""

    val_split = "valid"

    def __init__(self, data: FSDD, cfg: SpeechTrain) -> None:
        super().__init__()
        self.data, self.cfg = data, cfg
        self.sets = {
            "train": Utterances(data, "train", cfg.train_fraction),
            "valid": Utterances(data, "valid", cfg.eval_fraction),
            "test": Utterances(data, "test", cfg.eval_fraction),
        }

    def train_loader(self, seed: int, epoch: Callable[[], int] = lambda: 0) -> DataLoader:
        """Training batches whose order depends only on ``seed`` and the epoch ``epoch()`` says."""
        ds = self.sets["train"]
        sampler = BucketBatchSampler(ds.lengths, self.cfg.batch_size, True, seed, epoch, chunk_batches=50)
        return loader(ds, batch_sampler=sampler, collate_fn=collate)

    def eval_loader(self, split: str) -> DataLoader:
        ds = self.sets[split]
        sampler = BucketBatchSampler(ds.lengths, self.cfg.eval_batch_size, shuffle=False, sort_eval=True)
        return loader(ds, batch_sampler=sampler, collate_fn=collate)


# The LightningModule --------------------------------------------------------------------------------------


def ctc_losses(model_out: tuple[Tensor, Tensor], labels: Tensor, label_lengths: Tensor) -> Tensor:
    """(B,) CTC loss of each utterance divided by its number of labels (infinite losses become 0)."""
    logits, out_lengths = model_out  # (B, T', C), (B,)
    log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T', B, C)
    loss = F.ctc_loss(
        log_probs, labels, out_lengths, label_lengths, blank=BLANK, reduction="none", zero_infinity=True
    )
    return loss / label_lengths.to(loss.dtype)


class SpeechTask(Task):
    """Trains an acoustic model ((B, T, 40), lengths -> (B, T', 11) logits, lengths) with CTC; the metric is the
    WER of greedy decoding. Logged losses are the CTC loss per label, averaged over utterances."""

    metric = Metric("wer", "minimize", "word error rate")

    optimizer = torch.optim.Adam

    def __init__(self, model: nn.Module, lr_at: Callable[[int], float]) -> None:
        super().__init__(model, lr_at)
        self.metric_detail = {
            "wer": f"corpus word error rate of greedy CTC decoding over digit words, a fraction (jiwer {version('jiwer')})"
        }

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, lengths, labels, label_lengths = batch
        loss = ctc_losses(self(x, lengths), labels, label_lengths).mean()
        self.check_training_loss(loss, batch_idx)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=x.size(0))
        return loss

    # Evaluation: corpus WER of the greedy transcripts of the whole split, and the CTC loss per label.
    def eval_begin(self, split: str) -> dict:
        return {"loss": 0.0, "count": 0, "refs": [], "hyps": []}

    def eval_step(self, acc: dict, batch: Batch, split: str) -> None:
        x, lengths, labels, label_lengths = (t.to(self.device) for t in batch)
        out = self(x, lengths)
        losses = ctc_losses(out, labels, label_lengths)
        acc["loss"] += losses.sum().item()
        acc["count"] += losses.numel()
        acc["hyps"] += [transcript(h) for h in greedy_decode(*out)]
        acc["refs"] += [transcript(y[:n]) for y, n in zip(labels.tolist(), label_lengths.tolist())]

    def eval_end(self, acc: dict, split: str, dataset) -> tuple[float, float]:
        return acc["loss"] / max(acc["count"], 1), word_error_rate(acc["refs"], acc["hyps"])

    def inputs(self, batch: Batch) -> tuple:
        x, lengths, *_ = (t.to(self.device) for t in batch)
        return x, lengths

    def decoders(self) -> dict[str, Callable]:
        return {"greedy": self.transcribe}

    def transcribe(self, batch: Batch) -> list[list[int]]:
        """Greedy CTC transcripts (digit ids) of a batch; the forward pass evaluates each weight once."""
        return greedy_decode(*self(*self.inputs(batch)))


class Speech(Family):
    name = "speech"
    metric = SpeechTask.metric
    train_settings = SpeechTrain
    model_settings = SpeechModel
    datasets = ("fsdd",)
    units = "frames"
    build_model = staticmethod(build_acoustic)
    datamodule = SpeechData
    lr_at = staticmethod(step_decay)

    def load_data(self, dataset, data_dir, train: SpeechTrain) -> FSDD:
        self._check_dataset(dataset)
        return load_fsdd(data_dir, train.utterances())

    def data_files(self, dataset, data_dir) -> dict:
        self._check_dataset(dataset)
        return {"recordings": locate_fsdd(data_dir)}  # every split is drawn from this folder's clips

    def _check_dataset(self, dataset) -> None:
        if dataset != "fsdd":
            raise ConfigError(f"the speech family reads dataset fsdd, got {dataset!r}")

    def resolve_model(self, model: dict, data: FSDD) -> dict:
        return {**model, "features": data.n_mels}

    def example(self, seed: int = 0) -> Example:
        model = {**self.check_model({"hidden": 32, "layers": 2, "stack": 2}), "features": N_MELS}
        g = torch.Generator().manual_seed(seed)
        items = [
            (torch.randn(n, N_MELS, generator=g), torch.randint(1, CLASSES, (k,), generator=g))
            for n, k in ((23, 3), (17, 2), (9, 1))
        ]
        batch = collate(items)  # (3, 23, 40) features, lengths, (3, 3) labels, label lengths
        return Example(model, batch, _bare_loss, DataContext(calibration=[batch], loss=_bare_loss))

    def task(self, model, train, lr_at) -> SpeechTask:
        return SpeechTask(model, lr_at)

    def train_units(self, datamodule: SpeechData) -> int:
        """Input feature frames (10 ms each, before stacking) of one training epoch."""
        return sum(datamodule.sets["train"].lengths)

    def context(self, data: FSDD, datamodule: SpeechData, needs: frozenset[str]) -> DataContext:
        super().context(data, datamodule, needs - {"calibration"})  # refuses what speech cannot give
        if not needs:
            return DataContext()
        loader = datamodule.train_loader(seed=0)
        return DataContext(calibration=[b for _, b in zip(range(4), loader)], loss=_bare_loss)


def _bare_loss(model: nn.Module, batch: Batch) -> Tensor:
    x, lengths, labels, label_lengths = batch
    return ctc_losses(model(x, lengths), labels, label_lengths).mean()


register(Speech())
