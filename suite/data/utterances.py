"""Batching of variable-length utterances: a Dataset of (features, labels), zero-padding collation, and a batch
sampler that groups utterances of similar length."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Sampler

from .fsdd import FSDD

Batch = tuple[Tensor, Tensor, Tensor, Tensor]
"""(features (B, T, 40) zero-padded, lengths (B,), labels (B, S) zero-padded, label lengths (B,))."""


class Utterances(Dataset):
    """The utterances of one split: (features (T, 40), labels (L,)) each."""

    def __init__(self, data: FSDD, split: str, fraction: float = 1.0) -> None:
        utts = data.utterances[split]
        self.data, self.utterances = data, utts[: max(1, math.ceil(fraction * len(utts)))]
        self.lengths = [data.frames(u) for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        utt = self.utterances[i]
        return self.data.utterance_features(utt), torch.tensor([d + 1 for d in utt.digits])


def collate(items: Sequence[tuple[Tensor, Tensor]]) -> Batch:
    feats, labels = zip(*items)
    return (
        pad_sequence(feats, batch_first=True),  # (B, T, 40), zeros past each length
        torch.tensor([f.size(0) for f in feats]),
        pad_sequence(labels, batch_first=True),  # (B, S)
        torch.tensor([y.size(0) for y in labels]),
    )


class LengthBuckets(Sampler[list[int]]):
    """Batches of utterances of similar length, so that little of a batch is padding.

    Training (``shuffle``): every epoch the utterances are shuffled, cut into pools of ``pool`` batches, each
    pool sorted by length and cut into batches, and the batches shuffled. The permutation is seeded from
    torch's global generator, as DataLoader's own shuffling is (so the run's seed fixes it). Evaluation: sorted
    by length, in order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, pool: int = 50) -> None:
        self.lengths = torch.tensor(list(lengths))
        self.batch_size, self.shuffle, self.pool = batch_size, shuffle, pool * batch_size

    def __len__(self) -> int:
        n, b = len(self.lengths), self.batch_size
        if not self.shuffle:
            return math.ceil(n / b)
        full, rest = divmod(n, self.pool)
        return full * math.ceil(self.pool / b) + math.ceil(rest / b)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            order = torch.argsort(self.lengths, stable=True).tolist()
            yield from (order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size))
            return
        g = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        perm = torch.randperm(len(self.lengths), generator=g)
        batches = []
        for start in range(0, len(perm), self.pool):
            chunk = perm[start : start + self.pool]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)].tolist()
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for k in torch.randperm(len(batches), generator=g).tolist():
            yield batches[k]
