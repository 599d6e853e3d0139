"""Connected spoken digits built from the Free Spoken Digit Dataset (FSDD), with log-mel features.

FSDD holds clips ``{digit}_{speaker}_{take}.wav`` (8 kHz mono 16-bit; 6 speakers x 10 digits x 50 takes). Its
official split puts takes 0-4 in test and 5-49 in train. Here:

- Clips: takes 0-4 are test; takes 5 .. 4 + ``val_takes`` (default 5-9) are held out of the official training
  takes for validation; the rest (10-49) train. With ``held_out_speaker``, test is every take of that speaker
  and train/validation use the other speakers' takes as above; their takes 0-4 are then unused, so training
  never sees an official test recording either way.
- Utterances: 1-7 digits of one speaker, each digit one of that speaker's clips of the split (clips are drawn
  with replacement), with a silence before, between and after the digits of uniform length in
  [``min_silence``, ``max_silence``] seconds. Each split draws from its own seeded stream, so changing the
  number of training utterances leaves the validation and test utterances as they were.
- Features (``suite.data.audio``): 40 log-mel energies per 10 ms (25 ms Hann windows, librosa's mel
  filterbank on ``torch.stft``) of every clip, computed once and cached under ``cache_dir()/fsdd``, keyed by a
  hash of the feature settings and the clip list (names and byte sizes). An utterance is its clips' features
  joined with slices of the features of low-level white noise for its silences: the clips are trimmed to near
  silence, so joining features rather than waveforms only changes the frames at the joins. Its shape is
  (frames, 40), frames = the sum of its clips' frames (1 + samples // 80 each) and its silence frames. Every
  bin is normalized with the mean and standard deviation of the training utterances' frames.

A missing folder is downloaded (when online) from the official repository at a fixed commit and checked against
its SHA256SUMS; a corrupt, truncated or empty wav is a DataError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..files import atomic
from ..settings import Settings, setting
from .audio import HOP, N_MELS, SAMPLE_RATE, WIN, feature_settings, log_mel, one_thread, read_clip
from .sources import cache_dir, data_dir, fetch, sums_sha256

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_TAKES = 5
"""Takes 0-4 are FSDD's official test set."""
SPLITS = ("train", "valid", "test")

SILENCE_RMS = 1e-3
"""Level of the white noise whose features fill the silences (about -60 dBFS, below the clips' noise floor)."""
SILENCE_BANK = 2.0
"""Seconds of noise features the silences are cut from (a silence may not be longer)."""
SILENCE_SEED = 0

REPOSITORY = "https://github.com/Jakobovski/free-spoken-digit-dataset"
COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
ARCHIVE = f"{REPOSITORY}/archive/{COMMIT}.tar.gz"
MANIFEST_SHA256 = "1801eae019c063377d98f831d3f93574f259475df7332bb0e3d1b080fb5e6959"
"""sha256 of the dataset's SHA256SUMS (``<sha256>  <file name>`` per wav, sorted by name): checking it checks
every recording."""

_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class Clip:
    """One recording: ``{digit}_{speaker}_{take}.wav``."""

    name: str
    digit: int
    speaker: str
    take: int
    size: int
    """Bytes on disk (part of the feature cache key)."""


@dataclass
class UtteranceSettings(Settings):
    """How utterances are built from clips (the speech family's ``train`` settings inherit these fields)."""

    section = "train"

    train_utterances: int = setting(6000, ge=1)
    val_utterances: int = setting(500, ge=1)
    test_utterances: int = setting(1000, ge=1)
    min_digits: int = setting(1, ge=1)
    max_digits: int = setting(7, ge=1)
    min_silence: float = setting(0.05, ge=0, le=SILENCE_BANK)
    """Seconds of silence before, between and after digits: uniform in [min_silence, max_silence]."""
    max_silence: float = setting(0.3, ge=0, le=SILENCE_BANK)
    val_takes: int = setting(5, ge=1, le=50 - TEST_TAKES - 1, hint="it must leave training takes")
    """Takes 5 .. 4 + val_takes are validation clips; the training clips are the takes after them."""
    held_out_speaker: str | None = None
    """A speaker whose every clip is test and who is in neither train nor validation; None: the official split."""
    utterance_seed: int = 0
    """Seed of the utterance builder (the data stays the same across training seeds)."""

    def utterances(self) -> UtteranceSettings:
        """These settings alone (a subclass's other fields left out): what the data cache is keyed by."""
        return UtteranceSettings(**{f.name: getattr(self, f.name) for f in fields(UtteranceSettings)})

    def __post_init__(self) -> None:
        super().__post_init__()
        for low, high in (("min_digits", "max_digits"), ("min_silence", "max_silence")):
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(
                    f"train.{low} ({getattr(self, low)}) must not exceed {high} ({getattr(self, high)})"
                )

    def count(self, split: str) -> int:
        counts = {"train": self.train_utterances, "valid": self.val_utterances, "test": self.test_utterances}
        return counts[split]


@dataclass(frozen=True)
class Utterance:
    """Digits of one speaker joined by silences; everything needed to assemble its features."""

    speaker: str
    digits: tuple[int, ...]
    clips: tuple[int, ...]
    """Index into ``FSDD.clips`` of the clip of each digit."""
    silences: tuple[int, ...]
    """Frames of silence before each digit and after the last (``len(digits) + 1`` entries)."""
    offsets: tuple[int, ...]
    """Where each silence starts in the silence bank."""

    @property
    def words(self) -> str:
        return " ".join(DIGIT_WORDS[d] for d in self.digits)


# Feature cache -------------------------------------------------------------------------------------------


def feature_key(clips: Sequence[Clip]) -> str:
    """Hash of the feature settings and the clip list: the name of the cache file."""
    spec = {"features": feature_settings(), "clips": [[c.name, c.size] for c in clips]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def clip_features(folder: Path, clips: Sequence[Clip], key: str | None = None) -> list[Tensor]:
    """Log-mel features (frames, 40) of every clip, from the cache or computed (and cached) now.

    The cache is written only after every clip was read, and atomically, so a bad file leaves nothing behind.
    """
    path = cache_dir() / "fsdd" / f"logmel-{key or feature_key(clips)}.pt"
    names = [c.name for c in clips]
    if path.is_file():
        try:
            cached = torch.load(path)
            if cached["names"] == names:
                return list(torch.split(cached["features"], cached["lengths"]))
        except Exception:  # an unreadable cache is recomputed
            pass
    with one_thread():
        features = [log_mel(read_clip(folder / c.name)) for c in clips]
    lengths = [f.size(0) for f in features]
    with atomic(path, "feature cache") as tmp:
        torch.save({"names": names, "lengths": lengths, "features": torch.cat(features)}, tmp)
    return features


def silence_bank() -> Tensor:
    """(frames, 40) features of seeded low-level white noise; the silences of utterances are slices of it."""
    rng = np.random.default_rng(SILENCE_SEED)
    noise = rng.normal(0.0, SILENCE_RMS, int(SILENCE_BANK * SAMPLE_RATE) + WIN).astype(np.float32)
    with one_thread():
        return log_mel(noise)


# Clips, splits and utterances -----------------------------------------------------------------------------


def list_clips(folder: Path) -> list[Clip]:
    """Every ``{digit}_{speaker}_{take}.wav`` in ``folder``, sorted by name."""
    folder = Path(folder)
    clips = []
    for path in sorted(folder.glob("*.wav")):
        m = _NAME.match(path.name)
        if m is None:
            raise DataError(f"{path}: not named {{digit}}_{{speaker}}_{{take}}.wav as FSDD clips are")
        clips.append(Clip(path.name, int(m.group(1)), m.group(2), int(m.group(3)), path.stat().st_size))
    if not clips:
        raise DataError(f"{folder} holds no .wav files; it should hold FSDD's recordings")
    return clips


def split_of(clip: Clip, settings: UtteranceSettings) -> str | None:
    """The split a clip belongs to (None: unused)."""
    if settings.held_out_speaker is not None:
        if clip.speaker == settings.held_out_speaker:
            return "test"
        if clip.take < TEST_TAKES:
            return None
    elif clip.take < TEST_TAKES:
        return "test"
    return "valid" if clip.take < TEST_TAKES + settings.val_takes else "train"


def split_clips(clips: Sequence[Clip], settings: UtteranceSettings, folder: Path) -> dict[str, list[int]]:
    """Split name -> indices of its clips (of ``folder``); every split must have some."""
    speakers = sorted({c.speaker for c in clips})
    if settings.held_out_speaker is not None and settings.held_out_speaker not in speakers:
        raise ConfigError(
            f"train.held_out_speaker {settings.held_out_speaker!r} is not an FSDD speaker; "
            f"speakers: {', '.join(speakers)}"
        )
    members: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, clip in enumerate(clips):
        split = split_of(clip, settings)
        if split is not None:
            members[split].append(i)
    first = TEST_TAKES + settings.val_takes
    takes = {
        "test": f"takes 0-{TEST_TAKES - 1}",
        "valid": f"takes {TEST_TAKES}-{first - 1}",
        "train": f"takes {first} and up",
    }
    if settings.held_out_speaker is not None:
        takes["test"] = f"every clip of speaker {settings.held_out_speaker}"
    for split, idx in members.items():
        if not idx:
            raise DataError(
                f"{folder} holds no clip of the {split} split ({takes[split]}); add those recordings or point "
                "SUITE_DATA_DIR at a complete FSDD, or change train.val_takes or train.held_out_speaker"
            )
    return members


def build_utterances(
    clips: Sequence[Clip], members: Sequence[int], count: int, settings: UtteranceSettings, split: str
) -> list[Utterance]:
    """``count`` utterances from the clips ``members``, drawn from the split's own seeded stream."""
    rng = np.random.default_rng([settings.utterance_seed, SPLITS.index(split)])
    pools: dict[str, dict[int, list[int]]] = {}
    for i in members:
        pools.setdefault(clips[i].speaker, {}).setdefault(clips[i].digit, []).append(i)
    speakers = sorted(pools)
    lo, hi = round(settings.min_silence * SAMPLE_RATE / HOP), round(settings.max_silence * SAMPLE_RATE / HOP)
    bank = int(SILENCE_BANK * SAMPLE_RATE) // HOP
    out = []
    for _ in range(count):
        speaker = speakers[rng.integers(len(speakers))]
        digits_here = sorted(pools[speaker])
        n = int(rng.integers(settings.min_digits, settings.max_digits + 1))
        digits = tuple(digits_here[k] for k in rng.integers(len(digits_here), size=n))
        chosen = tuple(pools[speaker][d][rng.integers(len(pools[speaker][d]))] for d in digits)
        silences = rng.integers(lo, hi + 1, size=n + 1)
        offsets = rng.integers(0, bank - silences + 1)
        out.append(Utterance(speaker, digits, chosen, tuple(silences.tolist()), tuple(offsets.tolist())))
    return out


# The dataset ----------------------------------------------------------------------------------------------


@dataclass
class FSDD:
    """Clips, their normalized features, and the utterances of every split."""

    folder: Path
    clips: list[Clip]
    settings: UtteranceSettings
    features: list[Tensor]
    """Normalized (frames, 40) features of each clip."""
    silence: Tensor
    """Normalized (frames, 40) silence bank."""
    utterances: dict[str, list[Utterance]]
    mean: Tensor
    std: Tensor
    cache_key: str = ""
    clip_splits: dict[str, list[int]] = field(default_factory=dict)
    """Split name -> indices of its clips."""
    n_mels: int = N_MELS

    def frames(self, utt: Utterance) -> int:
        return sum(self.features[c].size(0) for c in utt.clips) + sum(utt.silences)

    def utterance_features(self, utt: Utterance) -> Tensor:
        """(frames, 40): silence, digit, silence, ..., digit, silence."""
        parts = []
        for k, clip in enumerate(utt.clips):
            parts.append(self.silence[utt.offsets[k] : utt.offsets[k] + utt.silences[k]])
            parts.append(self.features[clip])
        parts.append(self.silence[utt.offsets[-1] : utt.offsets[-1] + utt.silences[-1]])
        return torch.cat(parts)

    def describe(self) -> dict:
        return {
            "dataset": "fsdd",
            "source": f"{REPOSITORY} at {COMMIT}",
            "folder": str(self.folder),
            "clips": {s: len(v) for s, v in self.clip_splits.items()},
            "speakers": sorted({c.speaker for c in self.clips}),
            "utterances": {s: len(v) for s, v in self.utterances.items()},
            "frames": {s: sum(self.frames(u) for u in v) for s, v in self.utterances.items()},
            "settings": asdict(self.settings.utterances()),
            "features": f"log-mel {N_MELS} bins, {WIN * 1000 // SAMPLE_RATE} ms window, {HOP * 1000 // SAMPLE_RATE} ms hop",
            "feature_cache": self.cache_key,
        }


def normalizer(
    features: Sequence[Tensor], silence: Tensor, utterances: Sequence[Utterance]
) -> tuple[Tensor, Tensor]:
    """Per-bin mean and standard deviation over every frame of ``utterances`` (computed from per-clip sums and
    the silence bank's cumulative sums, without assembling the utterances)."""
    uses = torch.zeros(len(features), dtype=torch.float64)
    for utt in utterances:
        for c in utt.clips:
            uses[c] += 1
    total = torch.zeros(N_MELS, dtype=torch.float64)
    square = torch.zeros(N_MELS, dtype=torch.float64)
    frames = 0.0
    for c in torch.nonzero(uses).flatten().tolist():
        f = features[c].double()
        total += uses[c] * f.sum(0)
        square += uses[c] * f.square().sum(0)
        frames += uses[c].item() * f.size(0)
    zero = torch.zeros(1, N_MELS, dtype=torch.float64)
    c1 = torch.cat([zero, silence.double().cumsum(0)])  # (bank + 1, 40)
    c2 = torch.cat([zero, silence.double().square().cumsum(0)])
    for utt in utterances:
        for s, o in zip(utt.silences, utt.offsets):
            total += c1[o + s] - c1[o]
            square += c2[o + s] - c2[o]
            frames += s
    mean = total / frames
    std = (square / frames - mean.square()).clamp_min(1e-10).sqrt()
    return mean.float(), std.float()


def locate_fsdd(configured_dir: str | None = None) -> Path:
    """The folder of FSDD's wavs: ``<data_dir>/fsdd/recordings``, else a checked download."""
    root = data_dir(configured_dir)
    looked = None
    if root is not None:
        folder = root / "fsdd" / "recordings"
        if folder.is_dir() and any(folder.glob("*.wav")):
            return folder
        looked = f"{folder}/ ({{digit}}_{{speaker}}_{{take}}.wav)"
    return fetch("fsdd", looked, "fsdd/recordings/", download_fsdd)


def manifest_sha256(folder: Path) -> str:
    """sha256 of the SHA256SUMS file that ``folder``'s wavs would have (``<sha256>  <name>`` lines by name)."""
    return sums_sha256(Path(folder).glob("*.wav"))


def download_fsdd() -> Path:
    """Fetch the repository's archive at ``COMMIT`` into the download cache; check every wav against
    SHA256SUMS (through the sha256 of that file)."""
    from datasets import DownloadConfig, DownloadManager

    dl = DownloadManager(download_config=DownloadConfig(cache_dir=str(cache_dir() / "downloads")))
    root = Path(dl.download_and_extract(ARCHIVE))
    found = sorted(root.glob("*/recordings")) or sorted(root.glob("recordings"))
    if not found:
        raise DataError(f"{ARCHIVE} unpacked to {root} has no recordings/ folder; set SUITE_DATA_DIR instead")
    folder = found[0]
    digest = manifest_sha256(folder)
    if digest != MANIFEST_SHA256:
        raise DataError(
            f"{folder}: the recordings do not match FSDD's SHA256SUMS at {COMMIT[:12]} (manifest sha256 {digest[:16]}..."
            f", expected {MANIFEST_SHA256[:16]}...); delete it and retry, or set SUITE_DATA_DIR"
        )
    return folder


def load_fsdd(configured_dir: str | None, settings: UtteranceSettings) -> FSDD:
    """Clips, cached features, the utterances of every split and the training split's normalization."""
    folder = locate_fsdd(configured_dir)
    clips = list_clips(folder)
    members = split_clips(clips, settings, folder)
    key = feature_key(clips)
    raw = clip_features(folder, clips, key)
    bank = silence_bank()
    utterances = {s: build_utterances(clips, members[s], settings.count(s), settings, s) for s in SPLITS}
    mean, std = normalizer(raw, bank, utterances["train"])
    return FSDD(
        folder=folder,
        clips=clips,
        settings=settings,
        features=[(f - mean) / std for f in raw],
        silence=(bank - mean) / std,
        utterances=utterances,
        mean=mean,
        std=std,
        cache_key=key,
        clip_splits=members,
    )


__all__ = [
    "DIGIT_WORDS",
    "FSDD",
    "Clip",
    "Utterance",
    "UtteranceSettings",
    "build_utterances",
    "clip_features",
    "list_clips",
    "load_fsdd",
    "split_clips",
]
