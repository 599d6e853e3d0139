"""Batching by length: the batch sampler every family with variable-length examples shares (translation,
speech), and translation's sentence-pair dataset and padding (``<pad>``, id 0, masked downstream).

Training: the examples are shuffled, cut into large chunks, each chunk sorted by length and cut into batches,
and the batches shuffled; so a batch holds examples of similar length (little padding) while the epochs still
differ. The shuffling of epoch e draws from a generator seeded by the run's seed and e alone, never from torch's
global generator: methods whose initialisation or dropout consume that generator differently still see the
same batches in the same order, and a run resumed at epoch k draws epoch k's order. Evaluation: in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

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
    def bucket_key(self) -> Tensor:
        """(n,) what batches are bucketed by: the source length, ties broken by the target length."""
        src, tgt = self.src.lengths[: self.n], self.tgt.lengths[: self.n]
        return src * (int(tgt.max()) + 1) + tgt if self.n else src


class BucketBatchSampler(Sampler[list[int]]):
    """Index batches of examples of similar ``lengths`` (any integer sort key).

    Training (``shuffle``): epoch e's order is drawn from a generator seeded by ``seed + e``; every example
    appears exactly once per epoch. The epoch is ``epoch()``, read when a pass draws its first batch; the data
    modules pass the trainer's ``current_epoch`` (Lightning never calls ``set_epoch`` on a batch sampler, and a
    count of passes would restart at 0 in a resumed process). Reading it then, not when the iterator is made,
    matters: Lightning makes the first epoch's iterator before it brings a resumed run's ``current_epoch`` up to
    date, and draws the first batch after (the loaders have a length and no worker processes, so nothing is
    fetched ahead). Evaluation: consecutive batches in dataset order, or sorted by length with ``sort_eval``.
    """

    def __init__(
        self,
        lengths: Tensor | Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        chunk_batches: int = 100,
        sort_eval: bool = False,
    ) -> None:
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError("batch_size and chunk_batches must be positive")
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.chunk, self.sort_eval = batch_size * chunk_batches, sort_eval

    def __len__(self) -> int:
        n = self.lengths.numel()
        if not self.shuffle:
            return -(-n // self.batch_size)
        return sum(-(-min(self.chunk, n - s) // self.batch_size) for s in range(0, n, self.chunk))

    def __iter__(self) -> Iterator[list[int]]:
        n = self.lengths.numel()
        if not self.shuffle:
            order = torch.argsort(self.lengths, stable=True) if self.sort_eval else torch.arange(n)
            for s in range(0, n, self.batch_size):
                yield order[s : s + self.batch_size].tolist()
            return
        g = torch.Generator().manual_seed(self.seed + self.epoch())
        order = torch.randperm(n, generator=g)
        batches = []
        for s in range(0, n, self.chunk):
            chunk = order[s : s + self.chunk]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]  # stable: shuffled among ties
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
