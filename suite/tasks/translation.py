"""Translation (family ``translation``): Multi30k English -> German with an attention LSTM encoder-decoder,
Adam, teacher forcing, corpus BLEU by sacrebleu.

BLEU is corpus BLEU on the lower-cased Moses-tokenized text of the official files, the text the model reads and
writes, computed by sacrebleu with ``tokenize="none"`` (the text is tokenized already; sacrebleu's ``13a``
would split it again, e.g. ``&apos;`` into three tokens) and ``lowercase=True`` (a no-op on these files, so that
the signature says ``case:lc``). This reproduces multi-bleu.perl -lc, the tokenized lower-cased BLEU that papers
report on this split. The sacrebleu signature is kept in the record (``metric_detail``).

Validation BLEU (``val_bleu``, the metric that selects settings and prunes sweep trials) decodes greedily, which is cheap
enough for every epoch; test BLEU (``test_bleu``) uses beam search with the preset's width.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sacrebleu.metrics import BLEU
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from ..context import DataContext
from ..data.buckets import BucketBatchSampler, PairDataset, collate
from ..data.loaders import loader
from ..data.multi30k import MULTI30K, PAD_ID, ParallelCorpus, load_multi30k
from ..data.sources import find
from ..errors import ConfigError
from ..models.seq2seq import ATTENTION, Seq2Seq, beam_search, build_seq2seq, greedy
from ..settings import setting
from . import register
from .base import Example, Family, Metric, ModelSettings, SeededData, Task, TrainSettings, step_decay

CALIBRATION_BATCHES = 4


@dataclass
class TranslationTrain(TrainSettings):
    """Optimisation and decoding of a translation model: Adam, an optional step decay, clipped gradients."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    clip: float = 5.0
    lr_decay: float = setting(1.0, ge=1)
    """The learning rate is divided by this every epoch after ``decay_after`` (1: constant). A schedule by
    epoch, not on plateau, so that the rate of every epoch is known in advance (fine-tuning from a trained
    baseline starts at the rate it ended with)."""
    decay_after: int = setting(10, ge=0)
    """Epochs 1..decay_after run at ``lr``; epoch e > decay_after at lr / lr_decay ** (e - decay_after)."""
    label_smoothing: float = setting(0.1, ge=0, lt=1)
    """Of the training loss only; ``val_loss`` is the plain per-token NLL."""
    eval_batch_size: int = setting(128, ge=1)
    beam: int = setting(5, ge=1)
    """Beam width of test decoding (validation decodes greedily)."""
    length_alpha: float = setting(1.0, ge=0)
    """Beam search ranks finished hypotheses by log-probability / length ** length_alpha (0: no normalization)."""
    max_len_a: float = setting(1.5, gt=0)
    max_len_b: int = setting(10, ge=0)
    """A hypothesis has at most floor(max_len_a * source words + max_len_b) words."""
    min_freq: int = setting(2, ge=1)
    """Vocabularies keep the training words seen at least this often; the rest is ``<unk>``."""


@dataclass
class TranslationModel(ModelSettings):
    """The encoder-decoder's settings (``src_vocab`` and ``tgt_vocab`` come from the data)."""

    hidden: int = setting(256, ge=1)
    """Units of each LSTM layer (of each direction in the encoder) and of the attentional hidden."""
    layers: int = setting(1, ge=1)
    """LSTM layers of the encoder and of the decoder."""
    emb_size: int | None = setting(None, ge=1)
    """Word embedding size of both languages; None: ``hidden``."""
    bidirectional: bool = True
    """A bidirectional encoder (its final states reach the decoder through a bridge)."""
    dropout: float = setting(0.3, ge=0, lt=1)
    """On embeddings, between LSTM layers and on the attentional hidden."""
    attention: str = setting("general", choices=ATTENTION)
    """Luong score: ``general`` (h^T W_a m) or ``dot`` (h^T m; needs a unidirectional encoder)."""
    init: float = setting(0.1, gt=0)
    """Every weight uniform in [-init, init]."""
    src_vocab: int | None = setting(None, ge=1)
    tgt_vocab: int | None = setting(None, ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention == "dot" and self.bidirectional:
            raise ConfigError("model.attention dot needs bidirectional: false (or use attention: general)")


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """Corpus BLEU of tokenized hypotheses against one tokenized reference each, and sacrebleu's signature."""
    # lowercase: a no-op on these lower-cased files that makes the signature say ``case:lc``; force: the text is
    # tokenized on purpose, so sacrebleu's warning about tokenized input does not apply.
    metric = BLEU(tokenize="none", lowercase=True, force=True)
    score = metric.corpus_score(hypotheses, [references])
    return score.score, str(metric.get_signature())


def _leading(n: int, fraction: float) -> int:
    return n if fraction >= 1 else max(1, int(n * fraction))


class TranslationData(SeededData):
    """Length-bucketed training batches, shuffled by (run seed, epoch); validation and test in file order."""

    def __init__(self, corpus: ParallelCorpus, cfg: TranslationTrain) -> None:
        super().__init__()
        self.corpus, self.cfg = corpus, cfg
        n = _leading(corpus.pairs("train"), cfg.train_fraction)
        self.train_set = PairDataset(corpus.src["train"], corpus.tgt["train"], n)
        self.eval_sets = {}
        for split in ("val", "test"):
            n = _leading(corpus.pairs(split), cfg.eval_fraction)
            refs = corpus.references[split][:n]
            self.eval_sets[split] = PairDataset(
                corpus.src[split], corpus.tgt[split], n, refs, corpus.tgt_vocab
            )

    def train_loader(self, seed: int, epoch: Callable[[], int] = lambda: 0) -> DataLoader:
        """Training batches whose order depends only on ``seed`` and the epoch ``epoch()`` says."""
        ds = self.train_set
        sampler = BucketBatchSampler(ds.bucket_key, self.cfg.batch_size, True, seed, epoch)
        return loader(ds, batch_sampler=sampler, collate_fn=collate)

    def eval_loader(self, split: str) -> DataLoader:
        ds = self.eval_sets[split]
        sampler = BucketBatchSampler(ds.bucket_key, self.cfg.eval_batch_size, shuffle=False)
        return loader(ds, batch_sampler=sampler, collate_fn=collate)


def token_nll(model: nn.Module, batch: dict[str, Tensor], label_smoothing: float = 0.0) -> tuple[Tensor, int]:
    """Summed teacher-forced cross-entropy over the batch's target tokens (padding ignored) and their count."""
    logits = model(batch["src"], batch["src_len"], batch["tgt_in"])  # (B, T, V)
    target = batch["tgt_out"]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        target.reshape(-1),
        ignore_index=PAD_ID,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return loss, int((target != PAD_ID).sum())


class TranslationTask(Task):
    """Trains with teacher forcing on the mean token cross-entropy (label-smoothed); evaluates BLEU."""

    metric = Metric("bleu", "maximize", "BLEU")

    optimizer = torch.optim.Adam

    def __init__(self, model: Seq2Seq, lr_at: Callable[[int], float], cfg: TranslationTrain) -> None:
        super().__init__(model, lr_at)
        self.cfg = cfg

    def _to(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, tokens = token_nll(self, batch, self.cfg.label_smoothing)
        loss = loss / max(tokens, 1)
        self.check_training_loss(loss, batch_idx)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=tokens)
        return loss

    def decode(self, batch: dict[str, Tensor], beam: int = 1) -> list[list[int]]:
        """Hypotheses (word ids) for a batch: greedy with ``beam`` 1, else beam search; every parametrized
        weight is evaluated once for the whole decoding."""
        c = self.cfg
        src, src_len = batch["src"].to(self.device), batch["src_len"].to(self.device)
        with parametrize.cached():
            if beam == 1:
                return greedy(self.model, src, src_len, c.max_len_a, c.max_len_b)
            return beam_search(self.model, src, src_len, beam, c.max_len_a, c.max_len_b, c.length_alpha)

    def decoders(self) -> dict[str, Callable]:
        beam = self.cfg.beam
        return {
            "greedy": lambda batch: self.decode(batch, 1),
            f"beam {beam}": lambda batch: self.decode(batch, beam),
        }

    # Evaluation: corpus BLEU over the hypotheses of the whole split (greedy on val, the preset's beam on test),
    # and the per-token NLL.
    def eval_begin(self, split: str) -> dict:
        return {"nll": 0.0, "tokens": 0, "hyps": {}, "decode_s": 0.0}

    def eval_step(self, acc: dict, batch, split: str) -> None:
        nll, tokens = token_nll(self, self._to(batch))
        acc["nll"] += nll.item()
        acc["tokens"] += tokens
        t0 = time.perf_counter()
        hyps = self.decode(batch, self.cfg.beam if split == "test" else 1)
        acc["decode_s"] += time.perf_counter() - t0
        for i, hyp in zip(batch["index"].tolist(), hyps):
            acc["hyps"][i] = hyp

    def eval_end(self, acc: dict, split: str, dataset: PairDataset) -> tuple[float, float]:
        score, signature = corpus_bleu(dataset, acc["hyps"])
        # Decoding speed of the split (greedy on val, beam search on test), the model as it trains.
        speed = len(acc["hyps"]) / acc["decode_s"] if acc["decode_s"] > 0 else None
        self.metric_detail["bleu_signature"] = signature
        self.metric_detail[f"{split}_sentences_per_s"] = speed
        return acc["nll"] / max(acc["tokens"], 1), score

    def inputs(self, batch) -> tuple:
        b = self._to(batch)
        return b["src"], b["src_len"], b["tgt_in"]


def corpus_bleu(dataset: PairDataset, hyps: dict[int, list[int]]) -> tuple[float, str]:
    """BLEU of hypotheses (example index -> word ids) against the dataset's references of those examples."""
    order = sorted(hyps)
    vocab = dataset.tgt_vocab
    return bleu([" ".join(vocab.decode(hyps[i])) for i in order], [dataset.references[i] for i in order])


class Translation(Family):
    name = "translation"
    metric = TranslationTask.metric
    train_settings = TranslationTrain
    model_settings = TranslationModel
    datasets = ("multi30k",)
    units = "tokens"
    build_model = staticmethod(build_seq2seq)
    datamodule = TranslationData
    lr_at = staticmethod(step_decay)

    def load_data(self, dataset, data_dir, train: TranslationTrain) -> ParallelCorpus:
        self._check_dataset(dataset)
        return load_multi30k(data_dir, train.min_freq)

    def data_files(self, dataset, data_dir) -> dict:
        self._check_dataset(dataset)
        return find(MULTI30K, data_dir)  # train.en ... test.de -> file

    def _check_dataset(self, dataset) -> None:
        if dataset not in self.datasets:
            raise ConfigError(
                f"task family translation reads dataset(s) {', '.join(self.datasets)}, got {dataset!r}"
            )

    def resolve_model(self, model: dict, data: ParallelCorpus) -> dict:
        return {**model, "src_vocab": len(data.src_vocab), "tgt_vocab": len(data.tgt_vocab)}

    def task(self, model, train: TranslationTrain, lr_at) -> TranslationTask:
        return TranslationTask(model, lr_at, train)

    def train_units(self, datamodule: TranslationData) -> int:
        """Target tokens the decoder predicts in one epoch (words and ``<eos>``)."""
        return int((datamodule.corpus.tgt["train"].lengths[: len(datamodule.train_set)] - 1).sum())

    def example(self, seed: int = 0) -> Example:
        model = {**self.check_model({"hidden": 32, "emb_size": 32}), "src_vocab": 30, "tgt_vocab": 40}
        g = torch.Generator().manual_seed(seed)
        items = [
            (i, torch.randint(4, 30, (n,), generator=g), torch.randint(4, 40, (k,), generator=g))
            for i, (n, k) in enumerate(((7, 6), (5, 8), (3, 4)))
        ]
        batch = collate(items)  # (3, 7) source, (3, 7) target in and out, pads where shorter
        counts = _row_counts(torch.arange(30, 0, -1).float(), torch.arange(40, 0, -1).float())
        return Example(model, batch, _bare_loss, DataContext(counts, [batch], _bare_loss))

    def context(
        self, data: ParallelCorpus, datamodule: TranslationData, needs: frozenset[str]
    ) -> DataContext:
        fields = {}
        if "row_frequencies" in needs:
            fields["row_frequencies"] = _row_counts(data.src_counts, data.tgt_counts)
        if "calibration" in needs:
            loader = datamodule.train_loader(seed=0)
            fields["calibration"] = [b for _, b in zip(range(CALIBRATION_BATCHES), loader)]
            fields["loss"] = _bare_loss
        return DataContext(**fields)


def _row_counts(src: Tensor, tgt: Tensor) -> dict[str, Tensor]:
    """The vocabulary matrices' rows' word counts, from the source and the target vocabulary's."""
    return {"encoder.embedding.weight": src, "decoder.embedding.weight": tgt, "decoder.output.weight": tgt}


def _bare_loss(model: nn.Module, batch) -> Tensor:
    loss, tokens = token_nll(model, batch)
    return loss / max(tokens, 1)


register(Translation())
