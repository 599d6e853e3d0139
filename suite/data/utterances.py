"""Utterances for batching: a Dataset of (features, labels) and zero-padding collation (batches of similar
length come from ``suite.data.buckets.BucketBatchSampler``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

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
