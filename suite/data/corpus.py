"""Word-level corpora -> vocabulary -> id streams -> batchified columns for truncated BPTT.

Text is loaded and cached through ``datasets`` (one row per line); tokenizing is whitespace splitting with one
``<eos>`` per line, done in Arrow, and the encoded splits are cached by ``datasets`` under a fingerprint of the
source and the vocabulary, so a second run reads ids and never re-tokenizes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from ..files import write_text
from .sources import SPLITS, cache_dir, empty_split, locate

EOS, UNK = "<eos>", "<unk>"


@dataclass
class Corpus:
    """Token id streams for train/valid/test and the vocabulary (id -> word)."""

    name: str
    vocab: list[str]
    train: Tensor
    valid: Tensor
    test: Tensor
    origin: str = ""
    """Where the text came from: a local folder or a hub dataset id."""

    def describe(self) -> dict:
        return {
            "name": self.name,
            "origin": self.origin,
            "vocab": len(self.vocab),
            "tokens": {s: int(self.split(s).numel()) for s in ("train", "valid", "test")},
        }

    def split(self, name: str) -> Tensor:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def tokens(text: pa.Array) -> pa.ListArray:
    """Whitespace tokens of each line, plus one ``<eos>`` per line (blank lines give just ``<eos>``)."""
    return pc.utf8_split_whitespace(pc.utf8_trim_whitespace(pc.binary_join_element_wise(text, EOS, " ")))


def build_vocab(train_text: pa.Array, max_size: int | None = None) -> list[str]:
    """Words of train by frequency (ties alphabetical), capped at ``max_size`` with ``<unk>`` for the rest."""
    counts = pc.value_counts(tokens(train_text).flatten())
    freq = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    vocab = sorted(freq, key=lambda w: (-freq[w], w))
    if max_size is not None and len(vocab) > max_size:
        vocab = vocab[: max_size - (UNK not in vocab[:max_size])]
    if UNK not in vocab:
        vocab.append(UNK)
    return vocab


def _encoder(vocab: list[str]):
    value_set = pa.array(vocab)
    unk = vocab.index(UNK)

    def encode(batch: pa.Table) -> pa.Table:
        toks = tokens(batch.column("text").combine_chunks())
        ids = pc.fill_null(pc.index_in(toks.flatten(), value_set=value_set), unk).cast(pa.int32())
        return pa.table({"ids": pa.ListArray.from_arrays(toks.offsets, ids)})

    return encode


def _load_text(name: str, where) -> datasets.DatasetDict:  # noqa: F821
    import datasets

    datasets.disable_progress_bars()
    hf_cache = str(cache_dir() / "hf")
    try:
        if isinstance(where, tuple):  # hub dataset
            dd = datasets.load_dataset(where[0], where[1], cache_dir=hf_cache)
            return datasets.DatasetDict({"train": dd["train"], "valid": dd["validation"], "test": dd["test"]})
        files = {s: str(p) for s, p in where.items()}
        return datasets.load_dataset("text", data_files=files, cache_dir=hf_cache)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"could not load {name} ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None


def load_corpus(dataset: str | dict, data_dir: str | None = None, max_vocab: int | None = None) -> Corpus:
    """Load (or read from cache) a corpus; ``dataset`` is ``ptb``, ``wikitext2`` or ``{"path": folder}``."""
    name, where = locate(dataset, data_dir)
    if isinstance(dataset, dict):
        max_vocab = dataset.get("max_vocab", max_vocab)
    if isinstance(where, dict):
        for split, path in where.items():
            if path.stat().st_size == 0:  # datasets cannot even load it
                raise empty_split(path, split)
    dd = _load_text(name, where)
    vocab = _cached_vocab(dd["train"], max_vocab)
    digest = hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:16]
    encode = _encoder(vocab)
    eos = vocab.index(EOS) if EOS in vocab else -1
    streams = {}
    for split in SPLITS:
        ds = dd[split].with_format("arrow")
        enc = ds.map(
            encode,
            batched=True,
            batch_size=20_000,
            remove_columns=ds.column_names,
            new_fingerprint=f"{ds._fingerprint}-ids-{digest}",
            desc=f"encoding {name} {split}",
        )
        flat = enc.data.column("ids").combine_chunks().flatten()
        streams[split] = torch.from_numpy(flat.to_numpy(zero_copy_only=False).astype("int64"))
        if not (streams[split] != eos).any():  # blank lines only
            raise empty_split(
                where[split] if isinstance(where, dict) else f"{'/'.join(where)} {split}", split
            )
        if streams[split].numel() < 2:
            raise DataError(f"{name} {split} split has fewer than 2 tokens; check the corpus files")
    origin = "/".join(where) if isinstance(where, tuple) else str(Path(where["train"]).parent.resolve())
    return Corpus(name, vocab, streams["train"], streams["valid"], streams["test"], origin)


def _cached_vocab(train, max_vocab: int | None) -> list[str]:
    path = cache_dir() / "vocab" / f"{train._fingerprint}-{max_vocab}.json"
    if path.is_file():
        return json.loads(path.read_text())
    vocab = build_vocab(train.data.column("text").combine_chunks(), max_vocab)
    write_text(path, json.dumps(vocab), "vocabulary cache")
    return vocab


def batchify(stream: Tensor, batch: int) -> Tensor:
    """(N,) -> (N // B, B): B contiguous columns, the remainder dropped, as in Zaremba et al."""
    steps = stream.numel() // batch
    if steps < 2:
        raise DataError(f"a stream of {stream.numel()} tokens is too short for batch size {batch}")
    return stream[: steps * batch].view(batch, steps).t().contiguous()  # (S, B)


class BPTTWindows(Dataset):
    """Consecutive (input, target) windows of ``bptt`` steps over batchified columns (S, B).

    Window i covers rows [i T, i T + T) as input and the next rows as targets; the last window is shorter.
    Order matters (hidden state is carried across windows), so never shuffle.
    """

    def __init__(self, data: Tensor, bptt: int) -> None:
        self.data, self.bptt = data, bptt

    def __len__(self) -> int:
        return (self.data.size(0) - 1 + self.bptt - 1) // self.bptt

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.bptt
        length = min(self.bptt, self.data.size(0) - 1 - start)
        return self.data[start : start + length], self.data[start + 1 : start + 1 + length]  # (T, B) each


def prefix(stream: Tensor, fraction: float) -> Tensor:
    """The first ``fraction`` of a stream (smoke profiles train on a prefix)."""
    if fraction >= 1:
        return stream
    return stream[: max(2, int(stream.numel() * fraction))]
