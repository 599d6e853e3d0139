"""Provenance of a run: the commit and state of the checkout, package versions, the device it computed on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGE = Path(__file__).resolve().parent
"""The package's folder; the checkout that holds it is its parent."""


def _git(*args: str) -> str | None:
    """git in the checkout that holds this package (wherever the command was started from)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=PACKAGE.parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Where and with what a run was made: git sha and dirty flag, package versions, device."""
    versions = {}
    for pkg in ("suite", "torch", "lightning", "numpy", "datasets", "optuna", "wandb"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    sha = _git("rev-parse", "HEAD")
    # Uncommitted changes, or a file of the package git does not know yet (a new method module decides results).
    dirty = None
    if sha is not None:
        dirty = bool(
            _git("status", "--porcelain", "--untracked-files=no")
            or _git("ls-files", "--others", "--exclude-standard", "--", PACKAGE.name)
        )
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        **device_info(device),
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
    }


def device_info(device: torch.device) -> dict[str, str]:
    """The device a run computes on, in this machine's numbering: ``cuda:1`` or ``cpu`` (``device``), and its
    name (``device_name``). A process that sees some GPUs only (a sweep worker, a SLURM job) numbers them from
    0; CUDA_VISIBLE_DEVICES says which of the machine's they are."""
    if device.type != "cuda":
        return {"device": device.type, "device_name": platform.processor() or platform.machine()}
    index = device.index or 0
    visible = [t.strip() for t in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if t.strip()]
    which = visible[index] if index < len(visible) else str(index)
    return {"device": f"cuda:{which}", "device_name": torch.cuda.get_device_name(index)}
