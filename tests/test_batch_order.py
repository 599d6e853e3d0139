"""Batch order: a family's training batches follow the run's seed and the epoch alone, never torch's global
generator (which model initialisation and dropout consume differently per method) nor a count of passes.

- Every registered method, at one seed, sees the very same training batches in the same order, in every family.
- A run resumed from a Lightning checkpoint at epoch k (a fresh data module and task, the global generator in
  another state) draws epoch k's batches, as the uninterrupted run did.
- The shared bucketing sampler gives epoch k's order to a fresh object asked for epoch k.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import write_corpus
from test_speech import utterance_fields, write_fsdd
from test_translation import write_multi30k

from suite import tasks
from suite.compressors import available
from suite.config import load_run
from suite.data.buckets import BucketBatchSampler
from suite.errors import ConfigError
from suite.train import resolve_model, train

EPOCHS = 2
PRESETS = {
    "lm": {
        "dataset": {"path": "{root}/corpus"},
        "model": {"hidden": 8, "layers": 1, "dropout": 0.0, "init": 0.1},
        "train": {"batch_size": 4, "bptt": 8, "eval_batch_size": 4, "train_fraction": 0.3},
    },
    "translation": {
        "family": "translation",
        "dataset": "multi30k",
        "model": {"hidden": 8, "emb_size": 8, "dropout": 0.1},
        "train": {"batch_size": 16, "eval_batch_size": 40, "beam": 1, "min_freq": 1, "train_fraction": 0.4},
    },
    "speech": {
        "family": "speech",
        "dataset": "fsdd",
        "model": {"hidden": 8, "layers": 1, "stack": 3, "dropout": 0.1},
        "train": {"batch_size": 8, "eval_batch_size": 12, **utterance_fields()},
    },
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The data of every family (tiny) and a preset per family."""
    root = tmp_path_factory.mktemp("order")
    write_corpus(root / "corpus", lines=(200, 20, 20))
    write_multi30k(root, lines=(100, 20, 20))
    write_fsdd(root)
    for family, preset in PRESETS.items():
        text = yaml.safe_dump({**preset, "train": {**preset["train"], "epochs": EPOCHS}})
        (root / f"{family}.yaml").write_text(text.replace("{root}", str(root)))
    return root


def digest(batch) -> str:
    """A short hash of every tensor of a batch (a tensor, or a tuple, list or dict of them), in order."""
    h = hashlib.sha1()

    def feed(item) -> None:
        if isinstance(item, torch.Tensor):
            h.update(str(tuple(item.shape)).encode())
            h.update(item.detach().cpu().contiguous().numpy().tobytes())
        else:
            for x in item.values() if isinstance(item, dict) else item:
                feed(x)

    feed(batch)
    return h.hexdigest()[:16]


class Batches(pl.Callback):
    """Records (epoch, digest) of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, digest(batch)))


def run_config(root: Path, family: str, method: str = "dense", seed: int = 0, **sets):
    if family not in PRESETS:
        pytest.fail(f"no tiny preset for task family {family}: add one to PRESETS")
    sets = {"results_dir": str(root / "results"), "wandb": "disabled", "data_dir": str(root), **sets}
    return load_run(root / f"{family}.yaml", method, seed=seed, sets=sets)


def batches_of(cfg) -> list[tuple[int, str]]:
    """The training batches ``train(cfg)`` feeds, redone even if the run exists."""
    seen = Batches()
    record = train(cfg, force=True, callbacks=[seen], progress_bar=False)
    assert record.status == "ok", record.reason
    return seen.seen


@pytest.fixture(scope="module", params=tasks.available())
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def dense(root, family) -> list[tuple[int, str]]:
    """The dense run's batches (also the baseline that methods with a trained init start from)."""
    seen = batches_of(run_config(root, family))
    assert sorted({e for e, _ in seen}) == list(range(EPOCHS))
    return seen


@pytest.mark.parametrize("method", available())
def test_every_method_sees_the_dense_runs_batches_in_its_order(root, family, method, dense):
    sets = {"finetune_epochs": EPOCHS}  # a trained init fine-tunes as many epochs as dense trains
    try:
        seen = batches_of(run_config(root, family, method, **sets))
    except ConfigError as first:
        # As the shared method matrix: a method for vocabulary matrices is tried on one of them.
        vocab = list(tasks.get(family).example().context.row_frequencies)
        if not vocab:
            pytest.skip(f"{method} does not apply to {family}: {first}")
        seen = batches_of(run_config(root, family, method, targets=vocab[-1:], **sets))
    assert seen == dense


def test_the_order_follows_the_seed(root, family, dense):
    other = batches_of(run_config(root, family, seed=1))
    # Another order where the family shuffles; the LM reads consecutive windows whatever the seed.
    assert (other == dense) == (family == "lm")


@pytest.mark.parametrize("family_name", tasks.available())
def test_a_resumed_run_draws_the_order_of_its_epoch(root, tmp_path, family_name):
    cfg = run_config(root, family_name)
    fam = tasks.get(family_name)
    data = fam.load_data(cfg.dataset, cfg.data_dir, cfg.train)
    model_cfg = resolve_model(fam, cfg.model, data)

    def fit(epochs: int, ckpt_path: str | None = None) -> list[tuple[int, str]]:
        pl.seed_everything(cfg.seed, verbose=False)
        if ckpt_path:
            torch.rand(1000)  # another process: the global generator in another state
        task = fam.task(fam.build_model(model_cfg), cfg.train, fam.lr_at(cfg.train))
        seen = Batches()
        every_epoch = [] if ckpt_path else [pl.callbacks.ModelCheckpoint(tmp_path, "{epoch}", save_top_k=-1)]
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            logger=False,
            callbacks=[seen, *every_epoch],
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=1,
        )
        trainer.fit(task, datamodule=fam.datamodule(data, cfg.train), ckpt_path=ckpt_path)
        return seen.seen

    whole = fit(3)
    resumed = fit(3, str(tmp_path / "epoch=0.ckpt"))
    assert resumed[0][0] == 1 and resumed == [b for b in whole if b[0] >= 1]


def test_a_fresh_sampler_at_epoch_k_draws_the_kth_pass_of_a_running_one():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (203,), generator=g)
    epoch = 0
    running = BucketBatchSampler(lengths, 8, shuffle=True, seed=3, epoch=lambda: epoch, chunk_batches=5)
    state = torch.random.get_rng_state()
    passes = []
    for epoch in range(4):  # noqa: B007 (the sampler reads ``epoch``)
        passes.append(list(running))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is never drawn from
    assert all(sorted(i for b in p for i in b) == list(range(203)) for p in passes)
    assert len({str(p) for p in passes}) == 4  # every epoch has its own order
    for k in range(4):
        torch.manual_seed(k)  # whatever the global generator's state
        fresh = BucketBatchSampler(lengths, 8, shuffle=True, seed=3, epoch=lambda k=k: k, chunk_batches=5)
        assert list(fresh) == passes[k] and len(fresh) == len(passes[k])
    other_seed = BucketBatchSampler(lengths, 8, shuffle=True, seed=4, epoch=lambda: 0, chunk_batches=5)
    assert list(other_seed) != passes[0]
