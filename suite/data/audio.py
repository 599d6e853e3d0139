"""Audio for the speech tasks: reading 8 kHz mono wavs (a damaged file is a DataError naming it) and log-mel
features: 40 mel bins per 10 ms (25 ms Hann windows, 256-point FFT, librosa's Slaney mel filterbank on
``torch.stft``), shape (1 + samples // 80, 40) per clip."""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

SAMPLE_RATE = 8000
N_MELS = 40
WIN = 200
"""25 ms analysis window (samples)."""
HOP = 80
"""10 ms hop (samples): one feature frame per 10 ms."""
N_FFT = 256
LOG_FLOOR = 1e-10
"""Mel energies are clamped to this before the log (digital silence would be -inf)."""
FEATURE_VERSION = 1
"""Bumped whenever the feature computation changes, so stale caches are never read."""


def _check_wav_complete(path: Path) -> None:
    """Refuse a file that is not RIFF/WAVE or whose data chunk is cut short (libsndfile reads such a file
    without complaint, returning only the samples that are there)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise DataError(f"{path}: not a RIFF/WAVE file ({size} bytes); replace it with a good copy")
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                if length != 0xFFFFFFFF and pos + 8 + length > size:
                    raise DataError(
                        f"{path}: truncated ({size} bytes, its header promises {pos + 8 + length}); replace it with a good copy"
                    )
                return
            pos += 8 + length + (length & 1)
    raise DataError(f"{path}: has no audio data chunk; replace it with a good copy")


def read_clip(path: Path) -> np.ndarray:
    """The samples of one 8 kHz mono wav as float32 in [-1, 1]; a DataError naming the file when it cannot be used."""
    import soundfile

    path = Path(path)
    _check_wav_complete(path)
    try:
        wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: unreadable wav ({reason}); replace it with a good copy") from None
    if rate != SAMPLE_RATE or wave.shape[1] != 1:
        raise DataError(f"{path}: {rate} Hz, {wave.shape[1]} channel(s); expected {SAMPLE_RATE} Hz mono")
    if wave.shape[0] < WIN:
        raise DataError(f"{path}: empty or shorter than one 25 ms window ({wave.shape[0]} samples)")
    return np.ascontiguousarray(wave[:, 0])


# Features -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _filterbank() -> Tensor:
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS))  # (40, 129)


def log_mel(wave: np.ndarray | Tensor) -> Tensor:
    """(samples,) waveform at 8 kHz -> (1 + samples // 80, 40) log-mel energies (frames centred every 10 ms)."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    spec = torch.stft(
        x,
        N_FFT,
        hop_length=HOP,
        win_length=WIN,
        window=torch.hann_window(WIN),
        center=True,
        return_complex=True,
    )  # (129, frames)
    mel = _filterbank() @ spec.abs().square()  # (40, frames)
    return mel.clamp_min(LOG_FLOOR).log().T.contiguous()  # (frames, 40)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside (restored after). The per-clip transforms are tiny: more threads
    only add synchronization, which on a busy machine made extracting FSDD's features ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def feature_settings() -> dict:
    import librosa

    return {
        "version": FEATURE_VERSION,
        "sample_rate": SAMPLE_RATE,
        "n_mels": N_MELS,
        "win": WIN,
        "hop": HOP,
        "n_fft": N_FFT,
        "log_floor": LOG_FLOOR,
        "librosa": librosa.__version__,
    }


def expected_frames(samples: int) -> int:
    """Feature frames of a clip of ``samples`` samples."""
    return 1 + samples // HOP
