"""What every speed benchmark shares: the device check, one thread while timing, the machine's caches and
the result file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.audio import one_thread  # noqa: F401  (the benchmarks' one torch thread)
from ..errors import ConfigError
from ..provenance import provenance
from ..record import write_json


def check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:<index>") from None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"bench runs on cpu or cuda, not {device!r}")
    if kind == "cuda":
        index = torch.device(device).index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(f"no CUDA device {device} here; use --device cpu")


def caches() -> dict[str, int]:
    """This CPU's data cache sizes in bytes by level (``L2``, ``L3``), from Linux's sysfs; empty elsewhere. A
    speed-up depends on which level holds a model's weights."""
    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind, level = (index / "type").read_text().strip(), (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction" and size[:-1].isdigit():
            out[f"L{level}"] = int(size[:-1]) * {"K": 1024, "M": 1024**2}.get(size[-1], 1)
    return out


def result(benchmark: str, fields: dict[str, Any], out: str | Path | None) -> dict:
    """A one-thread benchmark's result: its name, the caches, its ``fields`` and the provenance, written to
    ``out`` (a JSON file) unless None."""
    res = {"benchmark": benchmark, "threads": 1, "caches": caches(), **fields, "provenance": provenance()}
    if out is not None:
        write_json(Path(out), res)
    return res
