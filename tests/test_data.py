"""Corpora, vocabulary, caching and the BPTT layout."""

import dataclasses
import os
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from suite.data import BPTTWindows, batchify, load_corpus
from suite.data import corpus as corpus_mod
from suite.data.corpus import EOS, UNK, build_vocab
from suite.errors import DataError


def test_batchify_makes_contiguous_columns():
    data = batchify(torch.arange(23), 4)  # 23 // 4 = 5 rows, 3 tokens dropped
    assert data.shape == (5, 4)
    assert data[:, 0].tolist() == [0, 1, 2, 3, 4] and data[:, 1].tolist() == [5, 6, 7, 8, 9]


def test_bptt_windows_shift_targets_by_one_and_cover_the_stream():
    data = batchify(torch.arange(40), 4)  # (10, 4)
    windows = BPTTWindows(data, bptt=3)
    assert len(windows) == 3  # inputs rows 0..8 in windows of 3, the last target is row 9
    xs, ys = zip(*(windows[i] for i in range(len(windows))))
    assert [x.shape[0] for x in xs] == [3, 3, 3]
    assert torch.equal(torch.cat(xs), data[:-1]) and torch.equal(torch.cat(ys), data[1:])
    short = BPTTWindows(batchify(torch.arange(44), 4), bptt=3)  # 11 rows: last window has 1 step
    assert [short[i][0].shape[0] for i in range(len(short))] == [3, 3, 3, 1]
    with pytest.raises(IndexError):
        windows[3]


def test_vocab_eos_per_line_frequency_order_and_cap():
    text = pa.array([" a b a a ", "", "c a"])  # a: 4, <eos>: 3
    vocab = build_vocab(text)
    assert vocab[:2] == ["a", EOS] and set(vocab) == {"a", "b", "c", EOS, UNK}
    capped = build_vocab(text, max_size=3)
    assert capped == ["a", EOS, UNK]


def test_tiny_corpus_loads_with_eos_and_unk(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "train.txt").write_text(" the cat sat \n the dog \n")
    (root / "valid.txt").write_text(" the bird \n")
    (root / "test.txt").write_text(" cat \n\n")
    c = load_corpus({"path": str(root)})
    words = [c.vocab[i] for i in c.train.tolist()]
    assert words == ["the", "cat", "sat", EOS, "the", "dog", EOS]
    assert [c.vocab[i] for i in c.valid.tolist()] == ["the", UNK, EOS]  # unseen word -> <unk>
    assert [c.vocab[i] for i in c.test.tolist()] == ["cat", EOS, EOS]  # a blank line is one <eos>
    assert c.describe()["tokens"] == {"train": 7, "valid": 3, "test": 3}


@pytest.mark.parametrize("split", ["train", "valid", "test"])
@pytest.mark.parametrize("text", ["", "\n \n\n"], ids=["no-bytes", "blank-lines"])
def test_an_empty_split_is_refused_naming_its_file(corpus_dir, tmp_path, split, text):
    root = tmp_path / "c"
    root.mkdir()
    for name in ("train", "valid", "test"):
        (root / f"{name}.txt").write_bytes((corpus_dir / f"{name}.txt").read_bytes())
    (root / f"{split}.txt").write_text(text)
    with pytest.raises(
        DataError, match=rf"^{root / split}\.txt is empty: the {split} split has no text; restore"
    ):
        load_corpus({"path": str(root)})


def test_second_load_reads_the_cache_without_tokenizing(corpus_dir, monkeypatch):
    first = load_corpus({"path": str(corpus_dir)})
    calls = []
    original = corpus_mod.tokens
    monkeypatch.setattr(corpus_mod, "tokens", lambda text: calls.append(1) or original(text))
    second = load_corpus({"path": str(corpus_dir)})
    assert calls == []
    assert torch.equal(first.train, second.train) and first.vocab == second.vocab


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=rf"looked in {tmp_path}/ptb.*SUITE_DATA_DIR"):
        load_corpus("ptb")
    with pytest.raises(DataError, match="must hold train.txt"):
        load_corpus({"path": str(tmp_path / "nowhere")})


SHARED = os.environ.get("SUITE_DATA_DIR")


@pytest.mark.skipif(not SHARED or not (Path(SHARED) / "ptb").is_dir(), reason="SUITE_DATA_DIR has no ptb/")
def test_real_ptb_counts(monkeypatch):
    monkeypatch.setenv("SUITE_DATA_DIR", SHARED)
    c = load_corpus("ptb")
    assert len(c.vocab) == 10_000
    assert (c.train.numel(), c.valid.numel(), c.test.numel()) == (929_589, 73_760, 82_430)
    assert c.vocab.count(UNK) == 1 and UNK in c.vocab[:5]


def test_download_is_checked_by_sha256(tmp_path, monkeypatch):
    """Online path: files come through the datasets download manager and must match their sha256."""
    import datasets

    from suite.data import sources

    fake = {}
    for split in sources.SPLITS:
        fake[split] = tmp_path / f"{split}.txt"
        fake[split].write_text(" a b \n")
    good = {s: sources.sha256(fake[s]) for s in sources.SPLITS}
    original = datasets.DownloadManager.download

    def download(self, urls):  # our PTB URLs -> the fake files; anything else as usual
        if urls == sources.SOURCES["ptb"].urls:
            return {k: str(fake[k]) for k in urls}
        return original(self, urls)

    monkeypatch.setattr(datasets.DownloadManager, "download", download)
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("SUITE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="sha256"):
        load_corpus("ptb")
    monkeypatch.setitem(sources.SOURCES, "ptb", dataclasses.replace(sources.SOURCES["ptb"], sha256=good))
    for split in sources.SPLITS:  # the failed check removed the bad files; write them again
        fake[split].write_text(" a b \n")
    c = load_corpus("ptb")
    assert c.train.numel() == 3
