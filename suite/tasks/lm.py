"""LightningModules per task family. Language modeling: truncated BPTT with the hidden state carried across
batches, SGD with the step decay of Zaremba et al., perplexity = exp(mean token NLL)."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..data import BPTTWindows, Corpus, batchify, prefix
from ..errors import TrialDiverged
from ..models.lm import detach

FLOAT32_MAX_LOG = 88.7  # log of the largest float32


def step_decay(cfg: TrainConfig) -> Callable[[int], float]:
    """Learning rate of epoch index e (0-based): lr for epochs 1..decay_after, then divided every epoch."""
    return lambda e: cfg.lr / cfg.lr_decay ** max(0, e + 1 - cfg.decay_after)


class LanguageModelData(pl.LightningDataModule):
    """Batchified train/valid/test streams, served as consecutive BPTT windows (never shuffled)."""

    def __init__(self, corpus: Corpus, cfg: TrainConfig) -> None:
        super().__init__()
        self.corpus, self.cfg = corpus, cfg
        self.train_data = batchify(prefix(corpus.train, cfg.train_fraction), cfg.batch_size)  # (S, B)
        self.eval_data = {
            s: batchify(prefix(corpus.split(s), cfg.eval_fraction), cfg.eval_batch_size)
            for s in ("valid", "test")
        }

    @property
    def train_tokens(self) -> int:
        return (self.train_data.size(0) - 1) * self.train_data.size(1)

    def _loader(self, data: Tensor) -> DataLoader:
        return DataLoader(BPTTWindows(data, self.cfg.bptt), batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_data)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_data["valid"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_data["test"])


class LanguageModelTask(pl.LightningModule):
    """Trains and evaluates a language model that maps (T, B) ids and a hidden state to (T, B, V) logits.

    The training loss is the NLL summed over the bptt steps and averaged over the batch, the scale for which
    Zaremba et al.'s lr 1 and clip 5 were tuned; logged losses are per token.
    """

    def __init__(self, model: nn.Module, lr_at: Callable[[int], float]) -> None:
        super().__init__()
        self.model = model
        self.lr_at = lr_at
        self.hidden = None
        self._sums: dict[str, list[float]] = {}

    def forward(self, x: Tensor, hidden=None):
        return self.model(x, hidden)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_at)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def _nll(self, batch, hidden):
        x, y = batch  # (T, B) each
        if hidden is None or hidden[0].size(1) != x.size(1):
            hidden = self.model.init_hidden(x.size(1))
        logits, hidden = self.model(x, hidden)  # (T, B, V)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        return nll, x.numel(), detach(hidden)

    def on_train_epoch_start(self) -> None:
        self.hidden = None

    def training_step(self, batch, batch_idx: int) -> Tensor:
        nll, tokens, self.hidden = self._nll(batch, self.hidden)
        if not torch.isfinite(nll):
            raise TrialDiverged(
                f"training loss became {nll.item()} at epoch {self.current_epoch + 1}, step {batch_idx}"
            )
        self.log("train_loss", nll / tokens, on_step=False, on_epoch=True, batch_size=tokens)
        return nll / batch[0].size(1)

    # Evaluation: exact corpus-level perplexity from summed NLL and token counts.
    def _eval_start(self, split: str) -> None:
        self._sums[split] = [0.0, 0]
        self._eval_hidden = None

    def _eval_step(self, split: str, batch) -> None:
        nll, tokens, self._eval_hidden = self._nll(batch, self._eval_hidden)
        self._sums[split][0] += nll.item()
        self._sums[split][1] += tokens

    def _eval_end(self, split: str) -> None:
        total, tokens = self._sums[split]
        loss = total / max(tokens, 1)
        if split == "val" and not loss < FLOAT32_MAX_LOG:  # NaN, or a perplexity fp32 cannot hold
            raise TrialDiverged(f"validation loss became {loss:.4g} at epoch {self.current_epoch + 1}")
        self.log(f"{split}_loss", loss)
        self.log(f"{split}_ppl", math.exp(min(loss, 700.0)))

    def on_validation_epoch_start(self) -> None:
        self._eval_start("val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    @torch.no_grad()
    def perplexity(self, loader: DataLoader) -> float:
        """Perplexity over a loader outside the Trainer (diagnostics such as 'val with D removed')."""
        was_training = self.model.training
        self.model.eval()
        total, count, hidden = 0.0, 0, None
        for x, y in loader:
            nll, tokens, hidden = self._nll((x.to(self.device), y.to(self.device)), hidden)
            total, count = total + nll.item(), count + tokens
        self.model.train(was_training)
        return math.exp(min(total / max(count, 1), 700.0))
