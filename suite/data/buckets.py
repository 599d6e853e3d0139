"""Batches of sentence pairs bucketed by length, padded with ``<pad>`` (id 0) and masked downstream.

Training: the examples are shuffled with a per-epoch seed, cut into large chunks, each chunk sorted by length and
cut into batches, and the batches shuffled; so a batch holds sentences of similar length (little padding) while
the epochs still differ. Evaluation: consecutive examples in file order, so hypotheses line up with references.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .multi30k import PAD_ID, Sequences, Vocab


class PairDataset(Dataset):
    """Example i: (i, source ids, target ids) of the first ``n`` pairs of a split. Evaluation sets also hold
    the target vocabulary and the reference text of each example (BLEU)."""

    def __init__(
        self,
        src: Sequences,
        tgt: Sequences,
        n: int | None = None,
        references: list[str] | None = None,
        tgt_vocab: Vocab | None = None,
    ) -> None:
        self.src, self.tgt = src, tgt
        self.n = len(src) if n is None else min(n, len(src))
        self.references, self.tgt_vocab = references, tgt_vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, Tensor, Tensor]:
        return i, self.src[i], self.tgt[i]

    @property
    def lengths(self) -> Tensor:
        """(n,) source lengths, the bucketing key (the target length breaks ties)."""
        return self.src.lengths[: self.n]


class BucketBatchSampler(Sampler[list[int]]):
    """Index batches of similar source length; ``shuffle=False`` gives consecutive batches in order.

    With ``shuffle``, epoch e draws its order from ``seed + e``: every example appears exactly once per epoch,
    and a rerun with the same seed sees the same batches. Each pass counts as the next epoch, unless
    ``set_epoch`` says which (Lightning calls ``set_epoch`` on samplers only, never on a batch sampler).
    """

    def __init__(
        self,
        src_lengths: Tensor,
        tgt_lengths: Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        chunk_batches: int = 100,
    ) -> None:
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError("batch_size and chunk_batches must be positive")
        self.src_lengths, self.tgt_lengths = src_lengths, tgt_lengths
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.chunk = batch_size * chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.src_lengths.numel()
        if not self.shuffle:
            return -(-n // self.batch_size)
        return sum(-(-min(self.chunk, n - s) // self.batch_size) for s in range(0, n, self.chunk))

    def __iter__(self) -> Iterator[list[int]]:
        n = self.src_lengths.numel()
        if not self.shuffle:
            for s in range(0, n, self.batch_size):
                yield list(range(s, min(s + self.batch_size, n)))
            return
        epoch, self.epoch = self.epoch, self.epoch + 1
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(n, generator=g)
        # Sort key: source length, then target length; the stable sort keeps the shuffled order among ties.
        key = (
            self.src_lengths * (int(self.tgt_lengths.max()) + 1) + self.tgt_lengths if n else self.src_lengths
        )
        batches = []
        for s in range(0, n, self.chunk):
            chunk = order[s : s + self.chunk]
            chunk = chunk[torch.sort(key[chunk], stable=True).indices]
            batches.extend(
                chunk[b : b + self.batch_size].tolist() for b in range(0, chunk.numel(), self.batch_size)
            )
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]


def pad(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(B, T) ids padded with ``<pad>`` and (B,) lengths."""
    lengths = torch.tensor([s.numel() for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : s.numel()] = s
    return out, lengths


def collate(examples: list[tuple[int, Tensor, Tensor]]) -> dict[str, Tensor]:
    """A batch: ``src`` (B, S) and ``src_len`` (B,); ``tgt_in`` / ``tgt_out`` (B, T), the target without its
    last / first token (pads where shorter); ``index`` (B,) the examples' positions in their split."""
    index = torch.tensor([e[0] for e in examples], dtype=torch.long)
    src, src_len = pad([e[1] for e in examples])
    tgt, _ = pad([e[2] for e in examples])  # (B, T + 1): <bos> words <eos> <pad>...
    return {"index": index, "src": src, "src_len": src_len, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}
