"""Multi30k task 1, English -> German: parallel sentences -> word vocabularies -> id sequences.

Splits: train 29,000 / val 1,014 / test2016 (``test_2016_flickr``) 1,000 pairs, read from the official
lower-cased, punctuation-normalized, Moses-tokenized files (``tok/*.lc.norm.tok.{en,de}``) of
github.com/multi30k/dataset: <data_dir>/multi30k-en-de/tok/ when SUITE_DATA_DIR (or the config's data_dir) holds
them, else downloaded from the repository at a fixed commit and checked by sha256.

Word-level vocabularies, not a subword model: BLEU on this split is, by convention, corpus BLEU on this same
lower-cased tokenized text, so the model reads and writes exactly the tokens that are scored; there is no
detokenization round trip that could move the score, and the vocabularies (and hence the embedding and output
matrices that the compressors and GroupReduce see) are plain word tables with one row per word. At min_freq 2
they stay small (about 6k English and 8k German words).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError
from ..files import atomic
from ..settings import check
from .sources import TextSource, cache_dir, data_dir, empty_split, find, sha256

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIALS))

SRC, TGT = "en", "de"
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
"""Split name here -> file stem in the repository."""
FORMAT = 2
"""Version of the prepared (cached) form; bump when encoding changes (2: an empty split is refused, and a
cache of before may hold one)."""

_URL = "https://raw.githubusercontent.com/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/tok/{}"
_FILES = {
    f"{split}.{lang}": f"{stem}.lc.norm.tok.{lang}" for split, stem in SPLITS.items() for lang in (SRC, TGT)
}

MULTI30K = TextSource(
    name="multi30k",
    folder="multi30k-en-de/tok",
    files=_FILES,
    urls={key: _URL.format(name) for key, name in _FILES.items()},
    sha256={
        "train.en": "08925f8e0572bcd5a006702fc5fe20e2d77c6917d4eebd576fc20de6693c2119",
        "train.de": "cb5a23529b65ec2061f1dc446192a9c37382b63cc75f81a0be59d34894b3a505",
        "val.en": "46573ce391ae227f1c72f873392436a20ef18e0a6d518098cfbd70b77c8572ec",
        "val.de": "97232bd273eceb7207f689527386a97e4be2616b18ada47576bdaf96c8ae1f00",
        "test.en": "5b7f32627cf99eced828311b955dae9800bb52bc8b91cf8b6526829e605b29d2",
        "test.de": "c6a33d39d48f9f510de147651316cd9d918e09ad0219df734a2f16b6baccacc4",
    },
    license="Multi30k (Elliott et al., 2016), derived from Flickr30k; non-commercial research and education",
)


@dataclass(frozen=True)
class Vocab:
    """Id -> word: the specials ``<pad> <unk> <bos> <eos>`` (ids 0-3), then the words of train."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.words[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}")
        # Text that happens to spell a special other than <unk> is an unknown word, not that special.
        index = {w: i for i, w in enumerate(self.words) if i >= len(SPECIALS)}
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self._index.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids`` up to the first ``<eos>``; ``<pad>`` and ``<bos>`` are dropped, ``<unk>`` kept."""
        return [self.words[i] for i in takewhile(lambda i: i != EOS_ID, ids) if i not in (PAD_ID, BOS_ID)]


def build_vocab(sentences: Iterable[Sequence[str]], min_freq: int = 1) -> Vocab:
    """Words seen at least ``min_freq`` times, by frequency (ties alphabetical), after the specials."""
    counts = Counter(w for s in sentences for w in s)
    words = sorted(
        (w for w, n in counts.items() if n >= min_freq and w not in SPECIALS), key=lambda w: (-counts[w], w)
    )
    return Vocab(SPECIALS + tuple(words))


@dataclass
class Sequences:
    """Variable-length id sequences stored flat: sequence i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: Tensor  # (total,) int64
    offsets: Tensor  # (n + 1,) int64

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]]) -> Sequences:
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        offsets = torch.zeros(len(seqs) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        return cls(torch.tensor([i for s in seqs for i in s], dtype=torch.long), offsets)

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> Tensor:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> Tensor:
        return self.offsets.diff()


@dataclass
class ParallelCorpus:
    """Encoded sentence pairs per split, the vocabularies, the training counts and the BLEU references.

    A source sentence is its words then ``<eos>``; a target sentence is ``<bos>``, its words, ``<eos>`` (the
    decoder reads all but the last and predicts all but the first). ``references`` are the target lines as
    they are in the files (words outside the vocabulary included): BLEU is computed against them.
    """

    name: str
    src_vocab: Vocab
    tgt_vocab: Vocab
    src: dict[str, Sequences]
    tgt: dict[str, Sequences]
    references: dict[str, list[str]]
    min_freq: int
    origin: str = ""
    official: bool = True
    """Whether the files are byte-identical to the official ones (their sha256 match)."""

    def pairs(self, split: str) -> int:
        return len(self.src[split])

    @property
    def src_counts(self) -> Tensor:
        """(len(src_vocab),) occurrences of each source id in the encoded training split."""
        return torch.bincount(self.src["train"].ids, minlength=len(self.src_vocab)).float()

    @property
    def tgt_counts(self) -> Tensor:
        """(len(tgt_vocab),) occurrences of each target id (``<bos>`` and ``<eos>`` once per sentence)."""
        return torch.bincount(self.tgt["train"].ids, minlength=len(self.tgt_vocab)).float()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "origin": self.origin,
            "official_files": self.official,
            "direction": f"{SRC}-{TGT}",
            "min_freq": self.min_freq,
            "vocab": {SRC: len(self.src_vocab), TGT: len(self.tgt_vocab)},
            "pairs": {s: self.pairs(s) for s in SPLITS},
            "tokens": {
                s: {SRC: int(self.src[s].ids.numel()), TGT: int(self.tgt[s].ids.numel())} for s in SPLITS
            },
        }


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"cannot read {path}: {e}; replace the file or set SUITE_DATA_DIR to a good copy"
        ) from None


def prepare(paths: dict[str, Path], min_freq: int, origin: str = "", official: bool = True) -> ParallelCorpus:
    """Read the six files (``train.en`` ... ``test.de`` -> path), build the vocabularies from train and encode."""
    text = {key: _read_lines(path) for key, path in paths.items()}
    for key, lines in text.items():
        if not any(line.strip() for line in lines):
            raise empty_split(paths[key], key.partition(".")[0])
    for split in SPLITS:
        n_src, n_tgt = len(text[f"{split}.{SRC}"]), len(text[f"{split}.{TGT}"])
        if n_src != n_tgt:
            raise DataError(
                f"{paths[f'{split}.{SRC}']} has {n_src} lines but {paths[f'{split}.{TGT}']} has {n_tgt}; "
                "the files are not parallel: replace them or set SUITE_DATA_DIR to a good copy"
            )
    tokens = {key: [line.split() for line in lines] for key, lines in text.items()}
    src_vocab = build_vocab(tokens[f"train.{SRC}"], min_freq)
    tgt_vocab = build_vocab(tokens[f"train.{TGT}"], min_freq)
    src, tgt = {}, {}
    for split in SPLITS:
        src[split] = Sequences.from_lists([src_vocab.encode(s) + [EOS_ID] for s in tokens[f"{split}.{SRC}"]])
        tgt[split] = Sequences.from_lists(
            [[BOS_ID, *tgt_vocab.encode(s), EOS_ID] for s in tokens[f"{split}.{TGT}"]]
        )
    references = {split: [" ".join(s) for s in tokens[f"{split}.{TGT}"]] for split in SPLITS}
    return ParallelCorpus("multi30k", src_vocab, tgt_vocab, src, tgt, references, min_freq, origin, official)


def _to_state(c: ParallelCorpus) -> dict:
    return {
        "format": FORMAT,
        "src_vocab": list(c.src_vocab.words),
        "tgt_vocab": list(c.tgt_vocab.words),
        "src": {s: (q.ids, q.offsets) for s, q in c.src.items()},
        "tgt": {s: (q.ids, q.offsets) for s, q in c.tgt.items()},
        "references": c.references,
        "min_freq": c.min_freq,
    }


def _from_state(state: dict, origin: str, official: bool) -> ParallelCorpus:
    return ParallelCorpus(
        "multi30k",
        Vocab(tuple(state["src_vocab"])),
        Vocab(tuple(state["tgt_vocab"])),
        {s: Sequences(*v) for s, v in state["src"].items()},
        {s: Sequences(*v) for s, v in state["tgt"].items()},
        state["references"],
        state["min_freq"],
        origin,
        official,
    )


def load_multi30k(configured: str | None = None, min_freq: int = 2) -> ParallelCorpus:
    """Multi30k en-de from the ``configured`` folder, else SUITE_DATA_DIR, else a download (sha256-checked).

    The prepared form is cached under the suite's cache folder, keyed by the files' contents and ``min_freq``.
    Raises DataError (what to do: set SUITE_DATA_DIR or go online) when the files are missing or unreadable.
    """
    check("min_freq", min_freq, int, ge=1)
    paths = find(MULTI30K, configured)  # file key -> path (this source has no hub id)
    digests = {key: sha256(path) for key, path in sorted(paths.items())}
    official = digests == dict(sorted(MULTI30K.sha256.items()))
    local = data_dir(configured)
    if local is not None and Path(paths["train.en"]).parent == local / MULTI30K.folder:
        origin = str(local / MULTI30K.folder)
    else:
        origin = f"{_URL.format('')} (downloaded)"
    key = hashlib.sha256(json.dumps({"format": FORMAT, "min_freq": min_freq, "files": digests}).encode())
    cached = cache_dir() / "multi30k" / f"{key.hexdigest()[:16]}.pt"
    if cached.is_file():
        try:
            return _from_state(torch.load(cached, weights_only=True), origin, official)
        except Exception:  # a cache from an interrupted or other version: rebuild it
            cached.unlink(missing_ok=True)
    corpus = prepare(paths, min_freq, origin, official)
    with atomic(cached, "corpus cache") as tmp:
        torch.save(_to_state(corpus), tmp)
    return corpus
