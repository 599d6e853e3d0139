"""Language modeling (family ``lm``): word-level corpora, the LSTM LM of Zaremba et al. (2014), truncated BPTT
with the hidden state carried across batches, SGD with step decay, perplexity = exp(mean token NLL)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import BPTTWindows, Corpus, batchify, load_corpus, locate, prefix
from ..data.loaders import loader
from ..errors import ConfigError
from ..models.lm import build_lm, detach
from ..settings import setting
from . import register
from .base import DataContext, Example, Family, Metric, ModelSettings, Task, TrainSettings, step_decay


@dataclass
class LMTrain(TrainSettings):
    """Optimisation of a language model (Zaremba et al. 2014): SGD, step decay, clipped gradient norm."""

    epochs: int = 13
    bptt: int = setting(20, ge=1)
    lr_decay: float = setting(2.0, gt=0)
    """The learning rate is divided by this every epoch after ``decay_after``."""
    decay_after: int = setting(4, ge=0)
    """Epochs 1..decay_after run at ``lr``; epoch e > decay_after at lr / lr_decay ** (e - decay_after)."""
    eval_batch_size: int = setting(10, ge=1)
    max_vocab: int | None = setting(None, ge=2, hint="a word and <unk>")
    """Cap the vocabulary (most frequent words of train; the rest is ``<unk>``); None: every word."""


@dataclass
class LMModel(ModelSettings):
    """The LSTM language model's settings (``vocab`` comes from the data)."""

    hidden: int = setting(200, ge=1)
    layers: int = setting(2, ge=1)
    dropout: float = setting(0.0, ge=0, lt=1)
    init: float = setting(0.1, gt=0)
    """Every weight uniform in [-init, init]."""
    emb_size: int | None = setting(None, ge=1)
    """Embedding size; None: ``hidden``."""
    tie_weights: bool = False
    vocab: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tie_weights and (self.emb_size or self.hidden) != self.hidden:
            raise ConfigError("model.tie_weights needs emb_size == hidden")


class LanguageModelData(pl.LightningDataModule):
    """Batchified train/valid/test streams, served as consecutive BPTT windows (never shuffled)."""

    def __init__(self, corpus: Corpus, cfg: LMTrain) -> None:
        super().__init__()
        self.corpus, self.cfg = corpus, cfg
        self.train_data = batchify(prefix(corpus.train, cfg.train_fraction), cfg.batch_size)  # (S, B)
        self.eval_data = {
            s: batchify(prefix(corpus.split(s), cfg.eval_fraction), cfg.eval_batch_size)
            for s in ("valid", "test")
        }

    def _loader(self, data: Tensor) -> DataLoader:
        return loader(BPTTWindows(data, self.cfg.bptt), batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_data)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_data["valid"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_data["test"])


class LanguageModelTask(Task):
    """Trains and evaluates a language model that maps (T, B) ids and a hidden state to (T, B, V) logits.

    The training loss is the NLL summed over the bptt steps and averaged over the batch, the scale for which
    Zaremba et al.'s lr 1 and clip 5 were tuned; logged losses are per token.
    """

    metric = Metric("ppl", "minimize", "perplexity", scale="log")

    def __init__(self, model: nn.Module, lr_at: Callable[[int], float]) -> None:
        super().__init__(model, lr_at)
        self.hidden = None

    def _nll(self, batch, hidden):
        x, y = batch  # (T, B) each
        if hidden is None or hidden[0].size(1) != x.size(1):
            hidden = self.model.init_hidden(x.size(1))
        logits, hidden = self(x, hidden)  # (T, B, V)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        return nll, x.numel(), detach(hidden)

    def on_train_epoch_start(self) -> None:
        self.hidden = None

    def training_step(self, batch, batch_idx: int) -> Tensor:
        nll, tokens, self.hidden = self._nll(batch, self.hidden)
        self.check_training_loss(nll, batch_idx)
        self.log("train_loss", nll / tokens, on_step=False, on_epoch=True, batch_size=tokens)
        return nll / batch[0].size(1)

    # Evaluation: exact corpus-level perplexity from summed NLL and token counts, the state carried along.
    def eval_begin(self, split: str) -> dict:
        return {"nll": 0.0, "tokens": 0, "hidden": None}

    def eval_step(self, acc: dict, batch, split: str) -> None:
        x, y = batch
        nll, tokens, acc["hidden"] = self._nll((x.to(self.device), y.to(self.device)), acc["hidden"])
        acc["nll"] += nll.item()
        acc["tokens"] += tokens

    def eval_end(self, acc: dict, split: str, dataset) -> tuple[float, float]:
        loss = acc["nll"] / max(acc["tokens"], 1)
        return loss, math.exp(min(loss, 700.0))

    def inputs(self, batch) -> tuple:
        return (batch[0].to(self.device),)


class LanguageModeling(Family):
    name = "lm"
    metric = LanguageModelTask.metric
    train_settings = LMTrain
    model_settings = LMModel
    datasets = ("ptb", "wikitext2")
    units = "tokens"
    build_model = staticmethod(build_lm)
    datamodule = LanguageModelData
    lr_at = staticmethod(step_decay)

    def load_data(self, dataset, data_dir, train: LMTrain) -> Corpus:
        return load_corpus(dataset, data_dir, train.max_vocab)

    def data_files(self, dataset, data_dir) -> dict:
        _, where = locate(dataset, data_dir)  # split -> file, or a hub dataset's (id, config)
        return {"hub": "/".join(where)} if isinstance(where, tuple) else dict(where)

    def resolve_model(self, model: dict, data: Corpus) -> dict:
        return {**model, "vocab": len(data.vocab)}

    def task(self, model, train, lr_at) -> LanguageModelTask:
        return LanguageModelTask(model, lr_at)

    def train_units(self, datamodule: LanguageModelData) -> int:
        """Target tokens of one training epoch: (S - 1) steps of B columns."""
        return (datamodule.train_data.size(0) - 1) * datamodule.train_data.size(1)

    def example(self, seed: int = 0) -> Example:
        model = {**self.check_model({"hidden": 32, "layers": 2}), "vocab": 50}
        g = torch.Generator().manual_seed(seed)
        batch = tuple(torch.randint(50, (7, 3), generator=g) for _ in range(2))  # (T, B) inputs and targets
        counts = torch.arange(50, 0, -1).float()  # Zipf-like: row i is the (i+1)-th most frequent word
        ctx = DataContext({"embedding.weight": counts, "decoder.weight": counts}, [batch], _bare_loss)
        return Example(model, batch, _bare_loss, ctx)

    def context(self, data: Corpus, datamodule: LanguageModelData, needs: frozenset[str]) -> DataContext:
        fields = {}
        if "row_frequencies" in needs:
            counts = torch.bincount(data.train, minlength=len(data.vocab)).float()
            fields["row_frequencies"] = {"embedding.weight": counts, "decoder.weight": counts}
        if "calibration" in needs:
            loader = datamodule.train_dataloader()
            fields["calibration"] = [b for _, b in zip(range(4), loader)]
            fields["loss"] = _bare_loss
        return DataContext(**fields)


def _bare_loss(model: nn.Module, batch) -> Tensor:
    x, y = batch
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


register(LanguageModeling())
