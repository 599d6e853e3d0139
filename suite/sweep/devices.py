"""Which device each sweep worker trains on: worker i gets its own GPU, round-robin over the visible CUDA
devices (or those ``--devices`` names), by running with CUDA_VISIBLE_DEVICES set to that one GPU.

A worker then sees its GPU as cuda:0 and train() needs no device setting of its own; the record names the
GPU in the machine's numbering (``provenance.device_info``). Without CUDA, workers run on the CPU.
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

CPU = "cpu"
"""``--devices cpu``: every worker on the CPU, even where there are GPUs."""


def visible() -> list[str]:
    """The CUDA devices this process sees, in torch's numbering (index i is cuda:i), each as the id to put in a
    worker's CUDA_VISIBLE_DEVICES (the machine's index, or whatever CUDA_VISIBLE_DEVICES already names)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = [t.strip() for t in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if t.strip()]
    return named[:count] if named else [str(i) for i in range(count)]


def parse(text: str | None) -> list[int] | str | None:
    """``--devices``: comma-separated indices of visible CUDA devices (``0,2``), or ``cpu``; None: not given."""
    if text is None:
        return None
    if text.strip().lower() == CPU:
        return CPU
    try:
        indices = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(
            f"--devices takes comma-separated CUDA device indices (0,1,...) or cpu, got {text!r}"
        ) from None
    if not indices or any(i < 0 for i in indices):
        raise ConfigError(f"--devices takes CUDA device indices >= 0 (0,1,...) or cpu, got {text!r}")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"--devices names a device twice ({text}); name each once")
    return indices


def assign(workers: int, devices: list[int] | str | None = None) -> list[str | None]:
    """Per worker, the value of its CUDA_VISIBLE_DEVICES: one GPU each, round-robin over ``devices`` (indices
    of the visible CUDA devices; None: all of them); "" for the CPU (``devices == "cpu"``); None (inherit the
    environment) where there is no GPU and none was asked for."""
    if devices == CPU:
        return [""] * workers
    gpus = visible()
    if devices is None:
        return [gpus[i % len(gpus)] for i in range(workers)] if gpus else [None] * workers
    if not gpus:
        raise ConfigError(
            f"--devices {','.join(map(str, devices))}: no CUDA device is visible here; leave --devices out "
            "(or --devices cpu)"
        )
    if missing := [i for i in devices if i >= len(gpus)]:
        raise ConfigError(
            f"--devices names CUDA device {missing[0]}, but this machine shows {len(gpus)} "
            f"({', '.join(f'cuda:{i}' for i in range(len(gpus)))}); choose among them"
        )
    return [gpus[devices[i % len(devices)]] for i in range(workers)]


def describe(value: str | None) -> str:
    """A worker's device (``assign``'s value) for people: ``cuda:1`` or ``cpu``."""
    return f"cuda:{value}" if value else CPU
