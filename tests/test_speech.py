"""Speech family: connected digits from FSDD-like clips, log-mel features, the LSTM-CTC model, decoding, WER.

The tests write tiny synthetic wavs laid out as fsdd/recordings/; only the tests at the end read the real
FSDD, and they skip when SUITE_DATA_DIR is not set.
"""

from __future__ import annotations

import math
from pathlib import Path

import jiwer
import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile
import torch
import yaml
from torch import nn

from suite import tasks
from suite.compressors import account, available, make_config, registry
from suite.compressors.accounting import parametrized_tensors
from suite.config import load_run
from suite.data import audio, fsdd
from suite.data.buckets import BucketBatchSampler
from suite.data.fsdd import UtteranceSettings
from suite.data.utterances import collate
from suite.errors import ConfigError, DataError
from suite.models.acoustic import BLANK, build_acoustic, greedy_decode
from suite.settings import build
from suite.tasks.speech import (
    Speech,
    SpeechTask,
    SpeechTrain,
    ctc_losses,
    transcript,
    word_error_rate,
)
from suite.train import build_model, train

ROOT = Path(__file__).resolve().parents[1]
SPEAKERS = ("ann", "bob")
TAKES = 12  # 0-4 test, 5-9 validation, 10-11 train
SMALL = UtteranceSettings(train_utterances=40, val_utterances=12, test_utterances=12, max_digits=4)
TINY_MODEL = {"hidden": 8, "layers": 2, "bidirectional": True, "dropout": 0.0, "stack": 3, "features": 40}


def utterance_fields(settings: UtteranceSettings = SMALL) -> dict:
    """The speech family's train settings that build ``settings``' utterances."""
    return dict(vars(settings))


def write_fsdd(root: Path, speakers=SPEAKERS, takes: int = TAKES, seed: int = 0) -> Path:
    """Synthetic FSDD: digit d is a tone at 300 + 150 d Hz (a speaker adds its own harmonic), 0.15-0.25 s."""
    rng = np.random.default_rng(seed)
    folder = root / "fsdd" / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    for s, speaker in enumerate(speakers):
        for digit in range(10):
            for take in range(takes):
                t = np.arange(int(rng.uniform(0.15, 0.25) * 8000)) / 8000
                f = 300 + 150 * digit
                wave = 0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(2 * np.pi * (2 + s) * f * t)
                wave += rng.normal(0, 0.003, t.size)
                soundfile.write(folder / f"{digit}_{speaker}_{take}.wav", wave, 8000, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_fsdd(tmp_path_factory.mktemp("data"))


@pytest.fixture()
def data(data_root):
    return fsdd.load_fsdd(str(data_root), SMALL)


# Utterances and splits ------------------------------------------------------------------------------------


def test_utterances_are_deterministic_and_never_mix_splits(data_root, data):
    again = fsdd.load_fsdd(str(data_root), SMALL)
    assert again.utterances == data.utterances
    takes = {"train": range(10, TAKES), "valid": range(5, 10), "test": range(0, 5)}
    for split, utts in data.utterances.items():
        assert len(utts) == SMALL.count(split)
        for u in utts:
            clips = [data.clips[c] for c in u.clips]
            assert all(c.take in takes[split] for c in clips), split
            assert {c.speaker for c in clips} == {u.speaker}
            assert [c.digit for c in clips] == list(u.digits)
            assert 1 <= len(u.digits) <= 4 and len(u.silences) == len(u.offsets) == len(u.digits) + 1
            assert all(5 <= s <= 30 for s in u.silences)  # 0.05-0.3 s in 10 ms frames
    # Each split has its own stream: more training utterances leave validation and test as they were.
    more = fsdd.load_fsdd(str(data_root), UtteranceSettings(**{**vars(SMALL), "train_utterances": 60}))
    assert more.utterances["train"][:40] == data.utterances["train"]
    assert (
        more.utterances["valid"] == data.utterances["valid"]
        and more.utterances["test"] == data.utterances["test"]
    )
    other = fsdd.load_fsdd(str(data_root), UtteranceSettings(**{**vars(SMALL), "utterance_seed": 1}))
    assert other.utterances["train"] != data.utterances["train"]


def test_speaker_held_out_is_heard_only_in_test(data_root):
    held = fsdd.load_fsdd(str(data_root), UtteranceSettings(**{**vars(SMALL), "held_out_speaker": "bob"}))
    assert {u.speaker for u in held.utterances["test"]} == {"bob"}
    for split in ("train", "valid"):
        assert {u.speaker for u in held.utterances[split]} == {"ann"}
    test_takes = {held.clips[c].take for c in held.clip_splits["test"]}
    assert test_takes == set(range(TAKES))  # every take of the held-out speaker
    assert all(held.clips[c].take >= 10 for c in held.clip_splits["train"])
    with pytest.raises(ConfigError, match="'carol' is not an FSDD speaker; speakers: ann, bob"):
        fsdd.load_fsdd(str(data_root), UtteranceSettings(held_out_speaker="carol"))


@pytest.mark.parametrize("split, takes", [("train", (10, 11)), ("valid", range(5, 10)), ("test", range(5))])
def test_an_empty_split_is_refused_naming_the_folder(tmp_path, split, takes):
    folder = write_fsdd(tmp_path, speakers=("ann",)) / "fsdd" / "recordings"
    for take in takes:
        for clip in folder.glob(f"*_ann_{take}.wav"):
            clip.unlink()
    with pytest.raises(DataError, match=rf"^{folder} holds no clip of the {split} split \(takes"):
        fsdd.load_fsdd(str(tmp_path), SMALL)


# Features -------------------------------------------------------------------------------------------------


def test_features_have_the_documented_shape_and_training_statistics(data):
    wave = audio.read_clip(data.folder / data.clips[0].name)
    assert audio.log_mel(wave).shape == (1 + wave.size // 80, 40) == (audio.expected_frames(wave.size), 40)
    u = data.utterances["train"][0]
    x = data.utterance_features(u)
    clip_frames = sum(
        audio.expected_frames(audio.read_clip(data.folder / data.clips[c].name).size) for c in u.clips
    )
    assert x.shape == (clip_frames + sum(u.silences), 40) and x.shape[0] == data.frames(u)
    train = torch.cat([data.utterance_features(v) for v in data.utterances["train"]])
    torch.testing.assert_close(train.mean(0), torch.zeros(40), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(40), atol=1e-3, rtol=0)


def test_second_load_reads_the_feature_cache(data_root, data, monkeypatch):
    cached = list((fsdd.cache_dir() / "fsdd").iterdir())
    assert [p.name for p in cached] == [f"logmel-{data.cache_key}.pt"]  # no temporary file left

    def no_reading(path):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(fsdd, "read_clip", no_reading)
    again = fsdd.load_fsdd(str(data_root), SMALL)
    for a, b in zip(again.features, data.features):
        assert torch.equal(a, b)


@pytest.mark.parametrize("damage", ["corrupt", "empty", "truncated", "no samples"])
def test_a_damaged_wav_is_refused_with_its_name_and_nothing_cached(tmp_path, damage, monkeypatch):
    monkeypatch.setenv("SUITE_CACHE_DIR", str(tmp_path / "cache"))
    root = write_fsdd(tmp_path / "d", takes=11)
    bad = root / "fsdd" / "recordings" / "3_bob_7.wav"
    content = bad.read_bytes()
    if damage == "no samples":  # a well-formed wav holding no audio
        soundfile.write(bad, np.zeros(0), 8000, subtype="PCM_16")
    else:
        bad.write_bytes(
            {
                "corrupt": b"RIFF" + bytes(range(256)) * 4,
                "empty": b"",
                "truncated": content[: len(content) // 2],
            }[damage]
        )
    with pytest.raises(DataError, match="3_bob_7.wav") as err:
        fsdd.load_fsdd(str(root), SMALL)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))


def test_missing_data_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_OFFLINE", "1")
    with pytest.raises(DataError, match="offline mode is set; set SUITE_DATA_DIR"):
        fsdd.load_fsdd(str(tmp_path), SMALL)


def test_download_is_checked_against_sha256sums(tmp_path, monkeypatch):
    import datasets

    unpacked = tmp_path / "unpacked"
    write_fsdd(unpacked, takes=11)
    (unpacked / "fsdd").rename(unpacked / f"free-spoken-digit-dataset-{fsdd.COMMIT}")
    asked = []
    monkeypatch.setattr(
        datasets.DownloadManager, "download_and_extract", lambda self, url: asked.append(url) or str(unpacked)
    )
    with pytest.raises(DataError, match="do not match FSDD's SHA256SUMS"):
        fsdd.download_fsdd()
    folder = unpacked / f"free-spoken-digit-dataset-{fsdd.COMMIT}" / "recordings"
    monkeypatch.setattr(fsdd, "MANIFEST_SHA256", fsdd.manifest_sha256(folder))
    assert fsdd.download_fsdd() == folder
    assert asked == [fsdd.ARCHIVE] * 2


# Decoding and the metric ----------------------------------------------------------------------------------


def test_greedy_decoding_collapses_repeats_and_removes_blanks():
    paths = [[1, 1, 0, 1, 2, 2, 0, 0, 3], [0, 0, 0, 0, 0, 0, 0, 0, 0], [5, 0, 5, 5, 7, 7, 7, 7, 7]]
    scores = torch.full((3, 9, 11), -5.0)
    for b, path in enumerate(paths):
        scores[b, torch.arange(9), torch.tensor(path)] = 5.0
    assert greedy_decode(scores, torch.tensor([9, 9, 4])) == [[1, 1, 2, 3], [], [5, 5]]
    assert BLANK == 0 and transcript([1, 10, 4]) == "zero nine three"


def test_word_error_rate_equals_jiwer():
    refs = ["one two three", "four", "five five six", "seven eight nine zero"]
    hyps = ["one three", "four five", "", "seven eight nine zero"]
    # 1 deletion + 1 insertion + 3 deletions over 11 reference words
    assert word_error_rate(refs, hyps) == pytest.approx(5 / 11)
    assert word_error_rate(refs, hyps) == jiwer.wer(refs, hyps)
    assert word_error_rate(["two"], ["three"]) == 1.0 and word_error_rate(["two one"], ["two one"]) == 0.0


# The model ------------------------------------------------------------------------------------------------


def _batch(seed: int = 0, lengths=(31, 20, 9)):
    g = torch.Generator().manual_seed(seed)
    items = [
        (torch.randn(n, 40, generator=g), torch.randint(1, 11, (max(1, n // 12),), generator=g))
        for n in lengths
    ]
    return collate(items)


def test_padding_never_changes_the_outputs_of_valid_frames():
    torch.manual_seed(0)
    model = build_acoustic({**TINY_MODEL, "hidden": 12}).eval()
    x, lengths, _, _ = _batch()
    x[1, lengths[1] :] = 7.0  # garbage in the padding
    with torch.no_grad():
        logits, out_lengths = model(x, lengths)
        assert logits.shape == (3, 11, 11) and out_lengths.tolist() == [11, 7, 3]
        for b in range(3):
            alone, _ = model(x[b : b + 1, : lengths[b]], lengths[b : b + 1])
            torch.testing.assert_close(logits[b, : out_lengths[b]], alone[0], rtol=1e-5, atol=1e-6)


def test_forward_backward_and_state_dict_round_trip():
    torch.manual_seed(0)
    model = build_acoustic(TINY_MODEL)
    names = {n for n, _ in model.named_parameters()}
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l1", "lstm.weight_ih_l1_reverse", "head.weight"} <= names
    batch = _batch()
    ctc_losses(model(*batch[:2]), *batch[2:]).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    other = build_acoustic(TINY_MODEL)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    assert torch.equal(model(*batch[:2])[0], other(*batch[:2])[0])


def _compressed(method: str, seed: int = 0):
    """A small acoustic model compressed at CF 2 (dense: CF 1) as train() does, in its deployed state."""
    family = tasks.get("speech")
    torch.manual_seed(seed)
    cfg = make_config(method, {"factor": 1 if method == "dense" else 2})
    model_cfg = {**family.check_model({"hidden": 16}), "features": 40}
    model, reference = build_model(family, model_cfg, method, cfg, ctx=family.example().context)
    finalize = registry.get(method).finalize
    if finalize is not None:  # e.g. doping's sparse part pruned to its final sparsity
        finalize(model, cfg)
    return model, reference, cfg


@pytest.mark.parametrize("method", available())
def test_every_compressor_applies_to_the_acoustic_model(method):
    if "row_frequencies" in registry.get(method).needs:
        pytest.skip(f"{method} compresses vocabulary matrices; the acoustic model has none")
    model, reference, cfg = _compressed(method)
    assert isinstance(model.lstm, nn.LSTM)
    task = SpeechTask(model, lambda e: 1e-3)  # forward evaluates each parametrization once (cached)
    batch = _batch()
    loss = ctc_losses(task(*batch[:2]), *batch[2:]).mean()
    loss.backward()
    assert torch.isfinite(loss)
    compressed = {q for q, *_ in parametrized_tensors(model)}
    if method not in ("dense", "small_dense"):
        assert {"lstm.weight_ih_l0_reverse", "lstm.weight_hh_l0_reverse", "lstm.weight_ih_l1"} <= compressed
    assert account(model, cfg.targets, reference, method).cf >= cfg.factor * (1 - 1e-9)
    task.eval()
    other, _, _ = _compressed(method, seed=1)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(task(*batch[:2])[0], SpeechTask(other.eval(), lambda e: 1e-3)(*batch[:2])[0])


# Settings, presets, batching and a smoke fit --------------------------------------------------------------


def test_family_is_registered_with_its_metric_and_settings():
    family = tasks.get("speech")
    assert isinstance(family, Speech) and family.datasets == ("fsdd",) and family.units == "frames"
    assert family.metric.name == "wer" and family.metric.direction == "minimize"
    with pytest.raises(ConfigError, match="min_digits"):
        SpeechTrain(min_digits=3, max_digits=2)
    with pytest.raises(ConfigError, match="max_silence"):
        SpeechTrain(max_silence=-0.1)
    with pytest.raises(ConfigError, match="train has no setting bptt"):
        build(SpeechTrain, {"bptt": 20}, "train")
    with pytest.raises(ConfigError, match="model.dropout"):
        family.check_model({"dropout": 1.0})
    with pytest.raises(ConfigError, match="model has no setting vocab"):
        family.check_model({"vocab": 10})
    assert family.check_model({})["stack"] == 3


@pytest.mark.parametrize("preset", ["fsdd-digits.yaml", "fsdd-digits-speaker.yaml"])
def test_presets_resolve_with_and_without_their_smoke_profile(preset):
    full = load_run(ROOT / "tasks" / preset, "dense")
    smoke = load_run(ROOT / "tasks" / preset, "dense", sets={"profile": "smoke"})
    assert full.family == smoke.family == "speech" and full.dataset == "fsdd"
    assert isinstance(full.train, SpeechTrain) and full.model["bidirectional"] is True
    assert (
        smoke.train.train_utterances < full.train.train_utterances and smoke.train.epochs < full.train.epochs
    )
    assert smoke.model["hidden"] < full.model["hidden"]
    assert (full.train.held_out_speaker is None) == (preset == "fsdd-digits.yaml")


def _digits_preset(tmp_path) -> Path:
    preset = tmp_path / "digits.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "family": "speech",
                "dataset": "fsdd",
                "model": {"hidden": 8, "layers": 1, "stack": 3},
                "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8, **utterance_fields()},
                "profiles": {"smoke": {"epochs": 1}},
            }
        )
    )
    return preset


def test_train_runs_the_speech_family_end_to_end(data_root, tmp_path):
    sets = {"results_dir": str(tmp_path / "results"), "wandb": "disabled", "data_dir": str(data_root)}
    record = train(load_run(_digits_preset(tmp_path), "lmf", 2, sets=sets), progress_bar=False)
    assert record.status == "ok" and record.metric == "wer" and record.direction == "minimize"
    assert set(record.final) == {"val_wer", "test_wer"} and 0 <= record.test
    assert {m["name"] for m in record.accounting["matrices"]} == {
        f"lstm.weight_{k}_l0{d}" for k in ("ih", "hh") for d in ("", "_reverse")
    }


def test_a_method_needing_word_frequencies_does_not_apply_and_says_so(data_root, tmp_path):
    sets = {"results_dir": str(tmp_path / "results"), "wandb": "disabled", "data_dir": str(data_root)}
    with pytest.raises(ConfigError, match=r"groupreduce does not apply to task digits .*another method"):
        train(load_run(_digits_preset(tmp_path), "groupreduce", 2, sets=sets), progress_bar=False)
    assert not (tmp_path / "results").exists()


def test_length_buckets_cover_every_utterance_once():
    lengths = [int(n) for n in torch.randint(10, 500, (203,), generator=torch.Generator().manual_seed(0))]
    train = BucketBatchSampler(lengths, 8, shuffle=True, chunk_batches=5)
    batches = list(train)
    assert len(batches) == len(train) and all(len(b) <= 8 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(203))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 100  # similar lengths in a batch (random batches would spread over ~400)
    evaluation = list(BucketBatchSampler(lengths, 8, shuffle=False, sort_eval=True))
    flat = [lengths[i] for b in evaluation for i in b]
    assert flat == sorted(lengths) and len(evaluation) == math.ceil(203 / 8)


def test_smoke_fit_logs_val_and_test_wer(data_root):
    torch.manual_seed(0)
    family = tasks.get("speech")
    cfg = SpeechTrain(epochs=1, batch_size=8, eval_batch_size=8, **utterance_fields())
    data = family.load_data("fsdd", str(data_root), cfg)
    dm = family.datamodule(data, cfg)
    model = family.build_model(family.resolve_model(family.check_model(TINY_MODEL), data))
    task = family.task(model, cfg, family.lr_at(cfg))
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        gradient_clip_val=cfg.clip,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=dm)
    assert {"val_loss", "val_wer", "train_loss"} <= set(trainer.callback_metrics)
    (test,) = trainer.test(task, datamodule=dm, verbose=False)
    assert 0 <= test["test_wer"] and math.isfinite(test["test_loss"])
    assert task.evaluate(dm.test_dataloader()) == pytest.approx(test["test_wer"])
    assert family.train_units(dm) == sum(data.frames(u) for u in data.utterances["train"])
    ctx = family.context(data, dm, frozenset({"calibration"}))
    assert len(ctx.calibration) == 4 and torch.isfinite(ctx.loss(model, ctx.calibration[0]))
    task.run_batch(ctx.calibration[0])
    with pytest.raises(ConfigError, match="row_frequencies"):
        family.context(data, dm, frozenset({"row_frequencies"}))


# The real FSDD (SUITE_DATA_DIR) ---------------------------------------------------------------------------

real = pytest.mark.skipif(not fsdd.data_dir(), reason="SUITE_DATA_DIR is not set")


@real
def test_real_fsdd_matches_its_sha256sums_and_the_official_split():
    folder = fsdd.locate_fsdd()
    assert fsdd.manifest_sha256(folder) == fsdd.MANIFEST_SHA256
    data = fsdd.load_fsdd(None, UtteranceSettings(train_utterances=50, val_utterances=20, test_utterances=20))
    assert len(data.clips) == 3000
    assert data.describe()["clips"] == {"train": 2400, "valid": 300, "test": 300}
    assert all(data.clips[c].take < 5 for c in data.clip_splits["test"])
    u = data.utterances["test"][0]
    assert data.utterance_features(u).shape == (data.frames(u), 40)
