"""Translation: Multi30k data, bucketing, padding, BLEU, decoding, compressors on the seq2seq model, a smoke fit."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import lightning.pytorch as pl
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from suite import tasks
from suite.compressors import available, make_config, registry
from suite.compressors.accounting import parametrized_tensors
from suite.data import multi30k
from suite.data.buckets import BucketBatchSampler, PairDataset, collate
from suite.data.multi30k import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    UNK,
    UNK_ID,
    Vocab,
    build_vocab,
    load_multi30k,
)
from suite.errors import ConfigError, DataError
from suite.models.seq2seq import beam_search, build_seq2seq, greedy, length_limit
from suite.tasks.translation import TranslationModel, TranslationTrain, bleu, corpus_bleu, token_nll

FAMILY = tasks.get("translation")
MODEL = {"hidden": 16, "emb_size": 12, "layers": 2, "bidirectional": True, "dropout": 0.0, "init": 0.1}
RULE = {f"s{i}": f"t{(7 * i) % 20}" for i in range(20)}  # source word -> target word


def write_multi30k(root: Path, lines=(300, 40, 40), seed: int = 0) -> Path:
    """A learnable toy parallel corpus in the Multi30k layout: each target is the word-by-word image of its
    source, reversed, then ``.``; val and test also use words never seen in train."""
    rng = random.Random(seed)
    folder = root / "multi30k-en-de" / "tok"
    folder.mkdir(parents=True, exist_ok=True)
    for (split, stem), n in zip(multi30k.SPLITS.items(), lines):
        src, tgt = [], []
        for _ in range(n):
            words = [f"s{rng.randrange(20)}" for _ in range(rng.randint(2, 7))]
            if split != "train" and rng.random() < 0.2:
                words.append("unseen")
            src.append(" ".join(words))
            tgt.append(" ".join([RULE.get(w, "neu") for w in reversed(words)] + ["."]))
        (folder / f"{stem}.lc.norm.tok.en").write_text("\n".join(src) + "\n")
        (folder / f"{stem}.lc.norm.tok.de").write_text("\n".join(tgt) + "\n")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_multi30k(tmp_path_factory.mktemp("m30k"))


@pytest.fixture()
def corpus(data_root):
    return load_multi30k(str(data_root), min_freq=1)


def tiny_model(corpus, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = FAMILY.resolve_model(FAMILY.check_model({**MODEL, **overrides}), corpus)
    return build_seq2seq(cfg)


def eval_batch(corpus, split: str = "val", n: int = 9) -> dict:
    ds = PairDataset(corpus.src[split], corpus.tgt[split])
    return collate([ds[i] for i in range(n)])


# Data


def test_vocab_is_from_train_only_frequency_sorted_with_specials_first():
    vocab = build_vocab([["b", "a", "c"], ["a", "c", "d"], ["a"]], min_freq=1)
    assert vocab.words == (*SPECIALS, "a", "c", "b", "d")  # a: 3, c: 2, then b and d alphabetical
    assert build_vocab([["b", "a", "c"], ["a", "c", "d"], ["a"]], min_freq=2).words == (*SPECIALS, "a", "c")
    assert vocab.encode(["a", "zzz", "<eos>"]) == [4, UNK_ID, UNK_ID]  # text spelling a special is a word
    assert vocab.decode([BOS_ID, 4, UNK_ID, 5, EOS_ID, 6]) == ["a", UNK, "c"]


def test_corpus_vocabularies_and_counts_come_from_train(corpus):
    assert "unseen" not in corpus.src_vocab.words and "neu" not in corpus.tgt_vocab.words
    val_src = [corpus.src_vocab.words[i] for i in corpus.src["val"].ids.tolist()]
    assert UNK in val_src  # words seen only outside train are <unk>
    assert "neu" in " ".join(corpus.references["val"])  # references keep the text as it is
    n = corpus.pairs("train")
    assert corpus.tgt_counts[BOS_ID] == corpus.tgt_counts[EOS_ID] == n == corpus.src_counts[EOS_ID]
    assert corpus.src_counts.sum() == corpus.src["train"].ids.numel()
    assert corpus.src_counts.shape == (len(corpus.src_vocab),) and corpus.tgt_counts[PAD_ID] == 0
    first = corpus.tgt["train"][0].tolist()
    assert first[0] == BOS_ID and first[-1] == EOS_ID and corpus.src["train"][0].tolist()[-1] == EOS_ID
    d = corpus.describe()
    assert d["pairs"] == {"train": 300, "val": 40, "test": 40} and not d["official_files"]
    assert d["vocab"] == {"en": len(corpus.src_vocab), "de": len(corpus.tgt_vocab)}


def test_data_building_is_deterministic_and_cached(data_root, monkeypatch, tmp_path):
    a = load_multi30k(str(data_root), min_freq=2)
    calls = []
    original = multi30k.prepare
    monkeypatch.setattr(multi30k, "prepare", lambda *args: calls.append(1) or original(*args))
    b = load_multi30k(str(data_root), min_freq=2)  # from the cache
    monkeypatch.setenv("SUITE_CACHE_DIR", str(tmp_path / "fresh"))
    c = load_multi30k(str(data_root), min_freq=2)  # built again
    assert len(calls) == 1
    for other in (b, c):
        assert other.src_vocab == a.src_vocab and other.tgt_vocab == a.tgt_vocab
        for split in multi30k.SPLITS:
            assert torch.equal(other.src[split].ids, a.src[split].ids)
            assert torch.equal(other.tgt[split].offsets, a.tgt[split].offsets)
        assert other.references == a.references


def test_missing_or_broken_data_is_a_data_error(tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("SUITE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"looked in .*multi30k-en-de/tok/.*set SUITE_DATA_DIR.*go online"):
        load_multi30k()
    broken = write_multi30k(tmp_path / "broken")
    test_de = broken / "multi30k-en-de" / "tok" / "test_2016_flickr.lc.norm.tok.de"
    test_de.write_text("\n".join(test_de.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match="not parallel"):
        load_multi30k(str(broken))


@pytest.mark.parametrize("key", ["train.en", "val.de", "test.en"])
def test_an_empty_split_is_refused_before_training_naming_its_file(tmp_path, key):
    """Before: an empty val or test split trained an epoch and then failed with an IndexError, an empty train
    split made a finished run."""
    root = write_multi30k(tmp_path / "data", lines=(30, 8, 8))
    split, lang = key.split(".")
    empty = root / "multi30k-en-de" / "tok" / f"{multi30k.SPLITS[split]}.lc.norm.tok.{lang}"
    empty.write_text("" if split == "train" else "\n" * 8)  # no bytes, or only blank lines
    with pytest.raises(DataError, match=rf"^{empty} is empty: the {split} split has no text; restore"):
        load_multi30k(str(root), min_freq=1)


def test_download_is_checked_by_sha256(tmp_path, monkeypatch, data_root):
    import datasets

    folder = data_root / "multi30k-en-de" / "tok"
    fake = {key: folder / name for key, name in multi30k.MULTI30K.files.items()}
    copies = {}

    def download(self, urls):  # the Multi30k URLs -> copies of the toy files
        assert urls == multi30k.MULTI30K.urls
        for key, path in fake.items():
            copies[key] = tmp_path / f"dl.{key}"
            copies[key].write_bytes(path.read_bytes())
        return {k: str(copies[k]) for k in urls}

    monkeypatch.setattr(datasets.DownloadManager, "download", download)
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("SUITE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="sha256"):
        load_multi30k()
    good = {key: multi30k.sha256(path) for key, path in fake.items()}
    monkeypatch.setattr(multi30k, "MULTI30K", dataclasses.replace(multi30k.MULTI30K, sha256=good))
    c = load_multi30k(min_freq=1)
    assert (
        c.pairs("train") == 300 and c.describe()["official_files"] and "downloaded" in c.describe()["origin"]
    )


# Batching


def test_bucketing_keeps_every_example_once_per_epoch_and_reshuffles():
    key = torch.randint(1, 30, (1003,), generator=torch.Generator().manual_seed(0))
    epoch = 0
    sampler = BucketBatchSampler(
        key, batch_size=16, shuffle=True, seed=3, epoch=lambda: epoch, chunk_batches=10
    )
    orders = []
    for epoch in (0, 1, 0):  # noqa: B007 (the sampler reads ``epoch``)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1003))
        assert all(1 <= len(b) <= 16 for b in batches)
        orders.append(flat)
        # Sorted within chunks: a batch's keys are close.
        spread = sum(int(key[b].max() - key[b].min()) for b in batches) / len(batches)
        assert spread < 5
    assert orders[0] != orders[1] and orders[0] == orders[2]
    other_seed = BucketBatchSampler(key, batch_size=16, shuffle=True, seed=4, chunk_batches=10)
    assert [i for b in other_seed for i in b] != orders[0]
    ordered = BucketBatchSampler(key, batch_size=16, shuffle=False)
    assert [i for b in ordered for i in b] == list(range(1003)) and len(list(ordered)) == len(ordered) == 63


def test_pairs_are_bucketed_by_source_length_then_target_length(corpus):
    ds = PairDataset(corpus.src["train"], corpus.tgt["train"], 120)
    pairs = [(ds[i][1].numel(), ds[i][2].numel()) for i in range(len(ds))]
    by_key = torch.argsort(ds.bucket_key, stable=True).tolist()
    assert [pairs[i] for i in by_key] == sorted(pairs)


def test_collate_pads_and_shifts_the_target(corpus):
    batch = eval_batch(corpus, n=5)
    lengths = [len(corpus.src["val"][i]) for i in range(5)]
    assert batch["src_len"].tolist() == lengths and batch["src"].shape == (5, max(lengths))
    for i in range(5):
        tgt = corpus.tgt["val"][i]
        n = len(tgt) - 1
        assert torch.equal(batch["tgt_in"][i, :n], tgt[:-1]) and torch.equal(batch["tgt_out"][i, :n], tgt[1:])
        assert (batch["tgt_out"][i, n:] == PAD_ID).all() and (batch["src"][i, lengths[i] :] == PAD_ID).all()


# Padding never counts


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, src, src_len, tgt_in):
        return self.logits


def test_logits_at_padding_do_not_change_the_loss(corpus):
    batch = eval_batch(corpus)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*batch["tgt_out"].shape, len(corpus.tgt_vocab), generator=g)
    pads = batch["tgt_out"] == PAD_ID
    assert pads.any()
    changed = logits.clone()
    changed[pads] = 100 * torch.randn(int(pads.sum()), logits.size(-1), generator=g)
    for smoothing in (0.0, 0.1):
        a, n = token_nll(FixedLogits(logits), batch, smoothing)
        b, m = token_nll(FixedLogits(changed), batch, smoothing)
        assert n == m == int((~pads).sum()) and torch.equal(a, b)


def test_appending_padding_leaves_the_loss_and_attention_unchanged(corpus):
    model = tiny_model(corpus).eval()
    batch = eval_batch(corpus)
    padded = dict(batch)
    for key, extra in (("src", 4), ("tgt_in", 3), ("tgt_out", 3)):
        padded[key] = F.pad(batch[key], (0, extra), value=PAD_ID)
    for smoothing in (0.0, 0.1):
        a, n = token_nll(model, batch, smoothing)
        b, m = token_nll(model, padded, smoothing)
        assert n == m and torch.allclose(a, b, atol=1e-5)
    memory, state = model.encode(padded["src"], padded["src_len"])
    out, _ = model.decoder.lstm(model.decoder.embedding(padded["tgt_in"]), state)
    _, weights = model.decoder.attention(out, memory)  # (B, T, S)
    beyond = torch.arange(padded["src"].size(1)) >= padded["src_len"][:, None]  # (B, S)
    assert (weights.masked_select(beyond[:, None, :].expand_as(weights)) == 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]))


# BLEU


def test_bleu_equals_sacrebleu_on_tokenized_text():
    hyps = ["ein mann fährt fahrrad .", "zwei hunde spielen im schnee", "eine frau &apos; s hut .", ""]
    refs = [
        "ein mann fährt ein fahrrad .",
        "zwei hunde spielen im schnee .",
        "der hut einer frau .",
        "ein kind .",
    ]
    score, signature = bleu(hyps, refs)
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", lowercase=True)
    assert score == pytest.approx(expected.score, abs=1e-12) and 0 < score < 100
    assert (
        "tok:none" in signature
        and "case:lc" in signature
        and "nrefs:1" in signature
        and sacrebleu.__version__ in signature
    )
    assert bleu(refs, refs)[0] == pytest.approx(100.0)
    # Pre-tokenized text is not tokenized again: 13a would split "&apos;" and score differently.
    assert score != pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a", lowercase=True).score)


def test_corpus_bleu_decodes_ids_against_the_references(corpus):
    ds = PairDataset(corpus.src["val"], corpus.tgt["val"], 6, corpus.references["val"][:6], corpus.tgt_vocab)
    hyps = {i: corpus.tgt["val"][i][1:-1].tolist() for i in (4, 0, 2)}  # any order, a subset
    refs = [corpus.references["val"][i] for i in (0, 2, 4)]
    decoded = [" ".join(corpus.tgt_vocab.decode(hyps[i])) for i in (0, 2, 4)]
    assert corpus_bleu(ds, hyps)[0] == pytest.approx(
        sacrebleu.corpus_bleu(decoded, [refs], tokenize="none", lowercase=True).score
    )


# Model and decoding


def test_forward_backward_and_state_dict_round_trip(corpus):
    model = tiny_model(corpus)
    batch = eval_batch(corpus)
    logits = model(batch["src"], batch["src_len"], batch["tgt_in"])
    assert logits.shape == (*batch["tgt_in"].shape, len(corpus.tgt_vocab)) and torch.isfinite(logits).all()
    loss, tokens = token_nll(model, batch)
    (loss / tokens).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    other = tiny_model(corpus, seed=1)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    assert torch.equal(
        model(batch["src"], batch["src_len"], batch["tgt_in"]),
        other(batch["src"], batch["src_len"], batch["tgt_in"]),
    )
    names = dict(model.named_parameters())
    for name in ("encoder.lstm.weight_ih_l1_reverse", "decoder.lstm.weight_hh_l1", "decoder.output.weight"):
        assert name in names


@pytest.mark.parametrize("bidirectional", [True, False])
def test_greedy_equals_beam_search_of_width_one(corpus, bidirectional):
    batch = eval_batch(corpus, "test", n=12)
    for seed in range(3):
        model = tiny_model(corpus, seed=seed, bidirectional=bidirectional, init=0.5).eval()
        src, src_len = batch["src"], batch["src_len"]
        g = greedy(model, src, src_len, 1.0, 2)
        assert g == beam_search(model, src, src_len, beam=1, max_len_a=1.0, max_len_b=2)
        limit = length_limit(src_len, 1.0, 2)
        wide = beam_search(model, src, src_len, beam=4, max_len_a=1.0, max_len_b=2)
        assert len(wide) == len(g) == 12
        assert all(len(h) <= int(n) for h, n in zip(g + wide, limit.tolist() * 2))
        assert all(i not in (PAD_ID, BOS_ID, EOS_ID) for h in g + wide for i in h)


def test_decoders_reproduce_a_learnt_rule(corpus):
    """On a model that has learnt the toy rule, both decoders reproduce the references."""
    task = fit(corpus, epochs=8, model_cfg={"hidden": 32}, lr=3e-2)
    ds = PairDataset(corpus.src["val"], corpus.tgt["val"], None, corpus.references["val"], corpus.tgt_vocab)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=BucketBatchSampler(ds.bucket_key, 16, shuffle=False),
        collate_fn=collate,
    )
    greedy_bleu = task.evaluate(loader)  # as validation decodes: greedy
    task.cfg = dataclasses.replace(task.cfg, beam=4)
    beam_bleu = task.evaluate(loader, split="test")  # as the test split decodes: the preset's beam
    assert greedy_bleu > 50 and beam_bleu > 50


# Compressors on the seq2seq model


def compressed(corpus, method: str):
    mcfg = make_config(method, {"factor": 1.0 if method == "dense" else 2.0})
    cfg = FAMILY.resolve_model(FAMILY.check_model(dict(MODEL)), corpus)
    entry = registry.get(method)
    if entry.resize is not None:
        cfg = entry.resize(cfg, mcfg, build_seq2seq)
    torch.manual_seed(0)
    model = build_seq2seq(cfg)
    entry.apply(model, mcfg)
    return model


@pytest.mark.parametrize("method", available())
def test_every_compressor_applies_to_the_seq2seq_model(corpus, method):
    if registry.get(method).needs:
        pytest.skip(f"{method} needs the task's data: the shared matrix (test_methods.py) gives it a context")
    model = compressed(corpus, method)
    names = {q for q, *_ in parametrized_tensors(model)}
    if registry.get(method).resize is None and method != "dense":
        assert "encoder.lstm.weight_hh_l0_reverse" in names and "decoder.lstm.weight_ih_l1" in names
        assert all(".lstm." in n for n in names)
    assert isinstance(model.encoder.lstm, torch.nn.LSTM) and isinstance(model.decoder.lstm, torch.nn.LSTM)
    batch = eval_batch(corpus)
    with parametrize.cached():
        loss, tokens = token_nll(model, batch)
    (loss / tokens).backward()
    assert torch.isfinite(loss)
    model.eval()
    with parametrize.cached():
        assert len(beam_search(model, batch["src"], batch["src_len"], beam=3)) == batch["src"].size(0)


# The family


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="model.attention dot needs bidirectional: false"):
        FAMILY.check_model({"attention": "dot"})
    with pytest.raises(ConfigError, match="model.attention must be one of"):
        FAMILY.check_model({"attention": "additive"})
    with pytest.raises(ConfigError, match="model has no setting hiden"):
        FAMILY.check_model({"hiden": 3})
    with pytest.raises(ConfigError, match="model.dropout"):
        FAMILY.check_model({"dropout": 1.0})
    assert FAMILY.check_model({"attention": "dot", "bidirectional": False})["attention"] == "dot"
    for bad in ({"beam": 0}, {"label_smoothing": 1.0}, {"lr_decay": 0.5}, {"min_freq": 0}, {"max_len_a": 0}):
        with pytest.raises(ConfigError, match=f"train.{next(iter(bad))}"):
            TranslationTrain(**bad)
    with pytest.raises(ConfigError, match="reads dataset"):
        FAMILY.load_data("ptb", None, TranslationTrain())
    assert FAMILY.metric.name == "bleu" and FAMILY.metric.direction == "maximize"
    assert tasks.get("translation") is FAMILY and dataclasses.is_dataclass(TranslationModel)


def test_schedule_units_and_context(corpus):
    train = TranslationTrain(lr=1e-3, lr_decay=2.0, decay_after=2, batch_size=32, train_fraction=0.5)
    lr = FAMILY.lr_at(train)
    assert [lr(e) for e in range(4)] == [1e-3, 1e-3, 5e-4, 2.5e-4]
    dm = FAMILY.datamodule(corpus, train)
    assert len(dm.train_set) == 150 and FAMILY.train_units(dm) == int(
        sum(len(corpus.tgt["train"][i]) - 1 for i in range(150))
    )
    ctx = FAMILY.context(corpus, dm, frozenset({"row_frequencies", "calibration"}))
    model = tiny_model(corpus)
    params = dict(model.named_parameters())
    assert set(ctx.row_frequencies) == {
        "encoder.embedding.weight",
        "decoder.embedding.weight",
        "decoder.output.weight",
    }
    for name, counts in ctx.row_frequencies.items():
        assert counts.shape == (params[name].shape[0],)
    assert len(ctx.calibration) == 4 and torch.isfinite(ctx.loss(model, ctx.calibration[0]))
    assert FAMILY.context(corpus, dm, frozenset()) == type(ctx)()


# A smoke fit


class SeenBatches(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[list[int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.epochs[-1].extend(batch["index"].tolist())


def fit(corpus, epochs: int = 1, model_cfg: dict | None = None, **train):
    cfg = TranslationTrain(
        **{"epochs": epochs, "batch_size": 16, "lr": 1e-2, "eval_batch_size": 16, "beam": 3, **train}
    )
    torch.manual_seed(0)
    model = FAMILY.build_model(
        FAMILY.resolve_model(FAMILY.check_model({**MODEL, "layers": 1, **(model_cfg or {})}), corpus)
    )
    task = FAMILY.task(model, cfg, FAMILY.lr_at(cfg))
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=cfg.clip,
        callbacks=[seen := SeenBatches()],
    )
    dm = FAMILY.datamodule(corpus, cfg)
    trainer.fit(task, datamodule=dm)
    task.fit_metrics, task.seen = dict(trainer.callback_metrics), seen.epochs
    task.test_metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    return task


def test_smoke_fit_logs_val_and_test_bleu_and_reshuffles_every_epoch(corpus):
    task = fit(corpus, epochs=2, train_fraction=0.5)
    assert {"val_bleu", "val_loss", "train_loss"} <= set(task.fit_metrics)
    first, second = task.seen
    assert sorted(first) == sorted(second) == list(range(150)) and first != second
    key = PairDataset(corpus.src["train"], corpus.tgt["train"], 150).bucket_key
    expected = [BucketBatchSampler(key, 16, True, seed=0, epoch=lambda e=e: e) for e in range(2)]
    assert [[i for b in sampler for i in b] for sampler in expected] == [first, second]
    assert 0 <= float(task.fit_metrics["val_bleu"]) <= 100 and "test_bleu" in task.test_metrics
    assert "tok:none" in task.metric_detail["bleu_signature"]


SHARED = os.environ.get("SUITE_DATA_DIR")


@pytest.mark.skipif(
    not SHARED or not (Path(SHARED) / "multi30k-en-de" / "tok").is_dir(),
    reason="SUITE_DATA_DIR has no multi30k",
)
def test_real_multi30k_counts():
    c = load_multi30k(min_freq=2)
    d = c.describe()
    assert d["pairs"] == {"train": 29_000, "val": 1_014, "test": 1_000} and d["official_files"]
    assert d["vocab"] == {"en": 5_921, "de": 7_859}
    words = {s: sum(len(r.split()) for r in c.references[s]) for s in multi30k.SPLITS}
    assert words == {"train": 360_706, "val": 12_828, "test": 12_103}  # SOURCE.md's German word counts
    assert c.src["train"].ids.numel() == 377_534 + 29_000  # English words plus one <eos> each
    assert isinstance(c.tgt_vocab, Vocab)
