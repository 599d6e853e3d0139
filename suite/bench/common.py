"""What every speed benchmark shares: the device check and the machine's caches."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError


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
