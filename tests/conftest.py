"""Shared fixtures: a tiny corpus written by the tests, a private cache and results folder, W&B off."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
import torch

# An installed plugin package (tests/plugins: a module and its dist-info with a ``suite.methods`` entry point):
# its method joins the registry, and so every shared test, as a user's plugin would.
PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS))

# Test models are tiny: one thread avoids OpenMP spin-waiting against whatever else the machine runs.
torch.set_num_threads(1)

SHARED_DATA = Path(os.environ.get("SUITE_DATA_DIR", "")) if os.environ.get("SUITE_DATA_DIR") else None


@pytest.fixture(autouse=True)
def _isolated(tmp_path, tmp_path_factory, monkeypatch):
    """Every test runs in its own temporary folder (relative paths such as results/ land there, never in the
    working tree) with the session's private data cache and no W&B unless it asks for it."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("SUITE_CACHE_DIR", str(cache))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_corpus(
    root: Path, words: int = 60, lines: tuple[int, int, int] = (400, 60, 60), seed: int = 0
) -> Path:
    """A small word-level corpus with some structure (so a model can learn), as train/valid/test.txt."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(words)]
    root.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), lines):
        out = []
        for _ in range(n):
            start = rng.randrange(words)
            length = rng.randint(3, 12)
            out.append(" " + " ".join(vocab[(start + 3 * k) % words] for k in range(length)) + " ")
        (root / f"{split}.txt").write_text("\n".join(out) + "\n")
    return root


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


TINY_PRESET = """\
dataset: {{path: {path}}}
model: {{hidden: 16, layers: 2, dropout: 0.0, init: 0.1}}
train: {{epochs: 2, batch_size: 4, bptt: 8, lr: 1.0, lr_decay: 2.0, decay_after: 1, clip: 5.0, eval_batch_size: 4}}
profiles:
  smoke: {{epochs: 1, train_fraction: 0.5}}
"""


@pytest.fixture()
def tiny_preset(tmp_path, corpus_dir) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PRESET.format(path=corpus_dir))
    return path


@pytest.fixture()
def results(tmp_path) -> Path:
    return tmp_path / "results"
