"""train(cfg) -> Record: the one entry point of the CLI, the tests, the sweeps and the pipeline."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl
import psutil
import torch
from torch import nn

from .compressors import Accounting, account, registry
from .config import RunConfig
from .data import Corpus, load_corpus
from .errors import SuiteError, TrialDiverged
from .models.lm import build_lm
from .tasks.lm import LanguageModelData, LanguageModelTask, step_decay
from .track import History, Record, close_wandb, provenance, run_dir, run_lock, wandb_logger

MODEL_FILE = "model.pt"

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LightningModule.*that has .* parameters.*")
warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")


def baseline_config(cfg: RunConfig) -> RunConfig:
    """The dense run that methods with ``init=trained`` start from: same task, data, model, training, seed."""
    return cfg.replace(method="dense", compress={}, study=None, trial=None)


def build_model(
    model_cfg: dict, method_name: str, mcfg: registry.CompressorConfig, state: dict | None = None
) -> tuple[nn.Module, nn.Module | None]:
    """Build the task model, load ``state`` (trained dense weights) if given, and compress it in place.

    Returns the model and, for methods that change the architecture itself, the dense reference (on the meta
    device) that the accounting compares against; None when the model's own dense shapes are the reference.
    """
    method = registry.get(method_name)
    reference = None
    if method.resize is not None:
        with torch.device("meta"):
            reference = build_lm(model_cfg)
        model_cfg = method.resize(model_cfg, mcfg, build_lm)
    model = build_lm(model_cfg)
    model.config = model_cfg
    if state is not None:
        model.load_state_dict(state)
    method.apply(model, mcfg)
    return model, reference


def _remove_stale_staging(final_dir: Path) -> None:
    """Remove staging folders of this run left by processes that no longer exist (killed runs)."""
    for folder in final_dir.parent.glob(f".{final_dir.name}.tmp*"):
        pid = folder.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and psutil.pid_exists(int(pid)):
            continue  # another live process is building this very run
        shutil.rmtree(folder, ignore_errors=True)


def find(cfg: RunConfig) -> Record | None:
    """The finished record of this exact configuration, if there is one."""
    path = run_dir(cfg.results_dir, cfg.task, cfg.method, cfg.run_id) / "record.json"
    if path.is_file():
        rec = Record.load(path)
        if rec.status == "ok":
            return rec
    return None


def train(
    cfg: RunConfig,
    *,
    force: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    progress_bar: bool | None = None,
) -> Record:
    """Train, evaluate and record one run; a finished run with the same run-id is returned, not redone.

    Everything that can be wrong with the inputs (method, settings, data, reachable CF) is checked before
    anything is written. The run is built in a staging folder and moved into place with its record, so a
    killed run leaves no half-written results. A run that diverges or is pruned is recorded with that status.
    Processes asking for the same run at once (sweep workers) take turns: the second finds the first's record.
    """
    if not force and (done := find(cfg)) is not None:
        return done
    setup = _setup(cfg, progress_bar)  # every input check; writes nothing of this run
    with run_lock(cfg.results_dir, cfg.task, cfg.method, cfg.run_id):
        if not force and (done := find(cfg)) is not None:
            return done
        return _run(cfg, setup, callbacks, progress_bar)


@dataclasses.dataclass
class _Setup:
    """A run ready to train: data, compressed model, its accounting, the epochs and learning rates."""

    t_start: float
    corpus: Corpus
    model: nn.Module
    model_cfg: dict
    reference: nn.Module | None
    accounting: Accounting
    epochs: int
    lr_at: Callable[[int], float]


def _setup(cfg: RunConfig, progress_bar: bool | None) -> _Setup:
    t_start = time.perf_counter()
    registry.get(cfg.method)  # an unknown method fails here, before any work
    mcfg = cfg.method_config
    corpus = load_corpus(cfg.dataset, cfg.data_dir, cfg.train.max_vocab)
    model_cfg = {**cfg.model, "vocab": len(corpus.vocab)}
    epochs, lr_at = cfg.train.epochs, step_decay(cfg.train)
    state = None
    if mcfg.init == "trained":
        # Fail on an unreachable CF or bad targets now, not after training the baseline.
        dry = copy.copy(mcfg)
        dry.init = "scratch"
        build_model(model_cfg, cfg.method, dry)
        base = train(baseline_config(cfg), callbacks=(), progress_bar=progress_bar)
        if base.status != "ok":
            raise SuiteError(f"the dense baseline {base.run_id} did not finish ({base.reason})")
        state = torch.load(run_dir(cfg.results_dir, base.task, "dense", base.run_id) / MODEL_FILE)
        if mcfg.finetune_epochs is not None:
            epochs = mcfg.finetune_epochs
        final_lr = mcfg.finetune_lr or step_decay(cfg.train)(cfg.train.epochs - 1)
        lr_at = lambda e: final_lr  # noqa: E731
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model, reference = build_model(model_cfg, cfg.method, mcfg, state)
    model_cfg = model.config
    accounting = account(model, mcfg.targets, reference=reference, method=cfg.method)
    return _Setup(t_start, corpus, model, model_cfg, reference, accounting, epochs, lr_at)


def _run(
    cfg: RunConfig, setup: _Setup, callbacks: Sequence[pl.Callback], progress_bar: bool | None
) -> Record:
    method, mcfg = registry.get(cfg.method), cfg.method_config
    t_start, corpus, model, model_cfg = setup.t_start, setup.corpus, setup.model, setup.model_cfg
    reference, accounting, epochs, lr_at = setup.reference, setup.accounting, setup.epochs, setup.lr_at
    final_dir = run_dir(cfg.results_dir, cfg.task, cfg.method, cfg.run_id)
    staging = final_dir.with_name(f".{cfg.run_id}.tmp{os.getpid()}")
    _remove_stale_staging(final_dir)
    staging.mkdir(parents=True)
    record = Record(
        run_id=cfg.run_id,
        task=cfg.task,
        method=cfg.method,
        seed=cfg.seed,
        status="failed",
        config={
            **cfg.to_dict(),
            "model_resolved": model_cfg,
            "epochs_run": epochs,
            "data": corpus.describe(),
        },
        accounting=accounting.to_dict(),
        provenance=provenance(),
    )
    data = LanguageModelData(corpus, cfg.train)
    task = LanguageModelTask(model, lr_at)
    label = (
        f"{cfg.task} {cfg.method}"
        + (f" CF {mcfg.factor:g}" if mcfg.factor != 1 else "")
        + f" seed {cfg.seed}"
    )
    history = History(label, epochs, data.train_tokens)
    wandb = wandb_logger(
        cfg.wandb,
        staging,
        group=cfg.study or cfg.task,
        job_type=cfg.method,
        name=f"{cfg.method}-{cfg.run_id}",
        # Method settings also at the top level (factor, cmr, ...), so charts can group and plot by them.
        config={
            **{k: v for k, v in cfg.compress.items() if k not in record.config},
            **record.config,
            "achieved_cf": accounting.cf,
            "model_cf": accounting.model_cf,
        },
        tags=[cfg.task, cfg.method, cfg.profile, *([cfg.study] if cfg.study else [])],
    )
    loggers = [pl.loggers.CSVLogger(str(staging), name="csv", version="")] + ([wandb] if wandb else [])
    extra = list(method.callbacks(mcfg) if method.callbacks else [])
    interactive = sys.stderr.isatty() if progress_bar is None else progress_bar
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=loggers,
        callbacks=[*extra, *callbacks, history],
        gradient_clip_val=cfg.train.clip,
        gradient_clip_algorithm="norm",
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=interactive,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    exit_code, raise_after = 1, None
    try:
        if epochs > 0:
            trainer.fit(task, datamodule=data)
        val = trainer.validate(task, datamodule=data, verbose=False)[0]
        test = trainer.test(task, datamodule=data, verbose=False)[0]
        record.final = {"val_ppl": val["val_ppl"], "test_ppl": test["test_ppl"]}
        if not all(math.isfinite(v) for v in record.final.values()):
            raise TrialDiverged(f"non-finite perplexity {record.final}")
        record.status, exit_code = "ok", 0
        record.accounting = account(model, mcfg.targets, reference=reference, method=cfg.method).to_dict()
        if cfg.method == "dense" or cfg.checkpoint:
            torch.save(model.state_dict(), staging / MODEL_FILE)
    except TrialDiverged as e:
        record.reason = str(e)
    except BaseException as e:
        if type(e).__name__ == "TrialPruned":  # optuna's, without importing optuna here
            record.status, record.reason = "pruned", str(e) or "pruned by the sweep's pruner"
        else:
            record.reason = f"{type(e).__name__}: {e}"
            close_wandb(wandb, exit_code=1)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        raise_after = e
    finally:
        record.epochs = history.rows
        wall = time.perf_counter() - t_start
        record.timings = {
            "wall_s": wall,
            "train_s": history.train_seconds,
            "train_tokens_per_s": (data.train_tokens * len(history.rows) / history.train_seconds)
            if history.train_seconds
            else None,
        }
    summary = {"final": record.final, "cf": record.accounting["cf"], "status": record.status}
    final_cf = {"achieved_cf": record.accounting["cf"], "model_cf": record.accounting["model_cf"]}
    close_wandb(wandb, summary, exit_code, final_cf)  # the final accounting: a doped D is annealed only now
    record.save(staging / "record.json")
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(staging, final_dir)
    if raise_after is not None:
        raise raise_after
    return record
