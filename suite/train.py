"""train(cfg) -> Record: the one entry point of the CLI, the tests, the sweeps and the pipeline."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl
import psutil
import torch
from torch import nn

from . import api, checkpoints, plugins, tasks, tracking
from .compressors import Accounting, account, registry
from .config import RunConfig
from .context import DataContext
from .errors import ConfigError, SuiteError, TrialDiverged
from .files import check_dir, make_dir, missing_dirs, remove_new_dirs, replace_dir
from .provenance import device_info, provenance
from .record import Record
from .store import data_fingerprint, find, locate, record_path, run_folder, run_lock
from .tasks.base import Family

MODEL_FILE = "model.pt"
LIGHTNING_PRECISION = {"32": "32-true"}
"""``train.precision`` as Lightning's Trainer spells it, where the two differ."""

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LightningModule.*that has .* parameters.*")
warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # a resume


def baseline_config(cfg: RunConfig) -> RunConfig:
    """The dense run that methods with ``init=trained`` start from: same task, data, model, training, seed."""
    return cfg.replace(method="dense", compress={}, study=None, trial=None, seeds=None)


def build_model(
    family: Family,
    model_cfg: dict,
    method_name: str,
    mcfg: registry.CompressorConfig,
    state: dict | None = None,
    ctx: DataContext | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """Build the task model, load ``state`` (trained dense weights) if given, and compress it in place.

    Returns the model and, for methods that change the architecture itself, the dense reference (on the meta
    device) that the accounting compares against; None when the model's own dense shapes are the reference.
    """
    method = registry.get(method_name)
    reference = None
    if method.resize is not None:
        with torch.device("meta"):
            reference = family.build_model(model_cfg)
        model_cfg = method.resize(model_cfg, mcfg, family.build_model)
    model = family.build_model(model_cfg)
    model.config = model_cfg
    if state is not None:
        model.load_state_dict(state)
    api.apply(model, method_name, mcfg, ctx if ctx is not None else DataContext())
    return model, reference


def resolve_model(family: Family, model: dict, data: object) -> dict:
    """The model settings plus what the data fixes (vocabulary sizes, feature dimension); a setting the data
    fixes is refused when given (it would name another run with the very same result)."""
    for key, value in model.items():
        if value is not None and family.resolve_model({**model, key: None}, data).get(key) is not None:
            raise ConfigError(
                f"model.{key} comes from the data; remove it from the preset and --set (got {value!r})"
            )
    return family.resolve_model(model, data)


def _remove_stale_staging(final_dir: Path) -> None:
    """Remove staging folders of this run left by processes that no longer exist (killed runs)."""
    for folder in final_dir.parent.glob(f".{final_dir.name}.tmp*"):
        pid = folder.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and psutil.pid_exists(int(pid)):
            continue  # another live process is building this very run
        shutil.rmtree(folder, ignore_errors=True)


def train(
    cfg: RunConfig,
    *,
    force: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    progress_bar: bool | None = None,
) -> Record:
    """Train, evaluate and record one run; a finished run with the same run-id, made on the same data (its
    fingerprint: ``store.data_fingerprint``), is returned, not redone.

    Everything that can be wrong with the inputs (method, settings, data, reachable CF) is checked before
    anything is written. The run is built in a staging folder and moved into place with its record, so a
    killed run leaves no half-written results. A run that diverges or is pruned is recorded with that status.
    Processes asking for the same run at once (sweep workers) take turns: the second finds the first's record.
    """
    check_dir(cfg.results_dir, "results folder")
    # The data as it is now: what this run reads, or what the run found was made on.
    fingerprint = data_fingerprint(cfg)
    if not force and (done := find(cfg, data=fingerprint)) is not None:
        return done
    setup = _setup(cfg, progress_bar, fingerprint)  # every input check; writes nothing of this run
    folder = run_folder(cfg, fingerprint)
    created = missing_dirs(folder.parent)
    try:
        with run_lock(cfg.results_dir, cfg.task, cfg.method, folder.name, cfg.store):
            if not force and (done := find(cfg, data=fingerprint)) is not None:
                return done
            return _run(cfg, setup, callbacks, progress_bar)
    except BaseException:
        remove_new_dirs(created)  # an interrupted or crashed run leaves no empty folders behind
        raise


def check(cfg: RunConfig, data: object | None = None) -> object:
    """The checks ``train(cfg)`` makes before it writes anything, without training (not even the dense baseline
    of a trained init): the method and its settings, the data (``data``: already loaded for this config's
    dataset), its batches, the model and whether its compression reaches the CF. Returns the data."""
    check_dir(cfg.results_dir, "results folder")
    family, data, _, model_cfg, ctx = _load(cfg, data)
    _check_compression(cfg, family, model_cfg, ctx)
    return data


def _load(
    cfg: RunConfig, data: object | None = None
) -> tuple[Family, object, pl.LightningDataModule, dict, DataContext]:
    """The run's family, data (loaded unless given), data module, resolved model settings and what its method
    needs of the data; every check of these inputs fails here, before any work."""
    family = tasks.get(cfg.family)
    registry.get(cfg.method)  # an unknown method is refused before the data is read
    check_precision(cfg)
    if data is None:
        data = family.load_data(cfg.dataset, cfg.data_dir, cfg.train)
    datamodule = family.datamodule(data, cfg.train)
    model_cfg = resolve_model(family, cfg.model, data)
    return family, data, datamodule, model_cfg, method_context(cfg, family, data, datamodule)


def method_context(cfg: RunConfig, family: Family, data, datamodule) -> DataContext:
    """What the run's method needs of the task's data; a task that cannot give it means the method does not
    apply."""
    try:
        return family.context(data, datamodule, registry.get(cfg.method).needs)
    except ConfigError as e:
        raise ConfigError(
            f"{cfg.method} does not apply to task {cfg.task} ({e}); choose another method (suite methods -v)"
        ) from None


def _check_compression(cfg: RunConfig, family: Family, model_cfg: dict, ctx: DataContext) -> None:
    """Compress a fresh model as the run will: an unreachable CF or bad targets fail now."""
    dry = copy.copy(cfg.method_config)
    dry.init = "scratch"
    build_model(family, model_cfg, cfg.method, dry, ctx=ctx)


def check_precision(cfg: RunConfig) -> None:
    """A precision this machine cannot train in (fp16 autocast on CPU, bf16 on a GPU without it) is refused
    before anything runs."""
    if cfg.train.precision == "16-mixed" and not torch.cuda.is_available():
        raise ConfigError(
            "train.precision 16-mixed needs a CUDA device and there is none here; use bf16-mixed or 32"
        )
    if (
        cfg.train.precision == "bf16-mixed"
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        raise ConfigError(
            f"train.precision bf16-mixed: {torch.cuda.get_device_name(0)} has no bf16; use 16-mixed or 32"
        )


@dataclasses.dataclass
class _Setup:
    """A run ready to train: data, compressed model, its accounting, the epochs and learning rates."""

    t_start: float
    fingerprint: dict[str, str]
    """The fingerprint of the data (``store.data_fingerprint``), taken before it was read."""
    family: Family
    data: object
    datamodule: pl.LightningDataModule
    model: nn.Module
    """Its resolved settings (as the method resized them) are ``model.config``."""
    reference: nn.Module | None
    accounting: Accounting
    epochs: int
    lr_at: Callable[[int], float]
    baseline_s: float | None = None
    """Wall time of training the dense baseline a trained init started from (None: it was found)."""


def _setup(cfg: RunConfig, progress_bar: bool | None, fingerprint: dict[str, str]) -> _Setup:
    t0 = time.perf_counter()
    family, data, datamodule, model_cfg, ctx = _load(cfg)
    mcfg = cfg.method_config
    epochs, lr_at = cfg.train.epochs, family.lr_at(cfg.train)
    state, baseline_s = None, None
    if mcfg.init == "trained":
        _check_compression(cfg, family, model_cfg, ctx)  # now, not after training the baseline
        t_base = time.perf_counter()
        found = find(baseline_config(cfg), anywhere=True, published=False, data=fingerprint)
        base = found or train(baseline_config(cfg), callbacks=(), progress_bar=progress_bar)
        if base.status != "ok":
            raise SuiteError(f"the dense baseline {base.run_id} did not finish ({base.reason})")
        baseline_s = None if found else time.perf_counter() - t_base
        state = torch.load(locate(cfg.results_dir, base.task, "dense", base.run_id, cfg.store) / MODEL_FILE)
        if mcfg.finetune_epochs is not None:
            epochs = mcfg.finetune_epochs
        final_lr = mcfg.finetune_lr or lr_at(cfg.train.epochs - 1)
        lr_at = lambda e: final_lr  # noqa: E731
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model, reference = build_model(family, model_cfg, cfg.method, mcfg, state, ctx)
    accounting = account(model, mcfg.targets, reference=reference, method=cfg.method)
    return _Setup(
        t0, fingerprint, family, data, datamodule, model, reference, accounting, epochs, lr_at, baseline_s
    )


class CtrlC(pl.Callback):
    """Ctrl-C stops the run even where Python drops it: a KeyboardInterrupt raised while the garbage collector runs
    a weak reference's callback or a finalizer cannot propagate (Python would print it as ignored and training
    would go on), so ``arm`` notes the press, keeps the dropped one quiet, and the next batch raises it again."""

    def __init__(self) -> None:
        self.pressed = False

    def arm(self) -> None:
        """Take over Ctrl-C (the caller restores the handler and ``sys.unraisablehook``)."""
        hook = sys.unraisablehook

        def unraisable(unraised) -> None:
            if not (self.pressed and isinstance(unraised.exc_value, KeyboardInterrupt)):
                hook(unraised)

        def handler(signum, frame) -> None:
            self.pressed = True
            raise KeyboardInterrupt

        sys.unraisablehook = unraisable
        signal.signal(signal.SIGINT, handler)

    def on_train_batch_start(self, *args) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    on_validation_batch_start = on_test_batch_start = on_train_batch_start


def _run(
    cfg: RunConfig, setup: _Setup, callbacks: Sequence[pl.Callback], progress_bar: bool | None
) -> Record:
    mcfg, family = cfg.method_config, setup.family
    model, data, reference = setup.model, setup.datamodule, setup.reference
    final_dir = run_folder(cfg, setup.fingerprint)  # <run-id>, or <run-id>-d<data> on other data (store.py)
    staging = final_dir.with_name(f".{final_dir.name}.tmp{os.getpid()}")
    _remove_stale_staging(final_dir)
    make_dir(staging, "run folder")
    metric = family.metric
    record = Record(
        run_id=final_dir.name,
        task=cfg.task,
        method=cfg.method,
        seed=cfg.seed,
        status="failed",
        metric=metric.name,
        direction=metric.direction,
        code_version=cfg.code_version,
        config={
            **cfg.to_dict(),
            "model_resolved": model.config,
            "epochs_run": setup.epochs,
            "data": setup.data.describe(),
        },
        accounting=setup.accounting.to_dict(),
        provenance=provenance(),
        data_fingerprint=setup.fingerprint,
    )
    used = {"method": plugins.origin("methods", cfg.method), "family": plugins.origin("families", cfg.family)}
    if any(used.values()):  # a plugin's name and version (its code is in the code version)
        record.provenance["plugins"] = {k: v for k, v in used.items() if v}
    task = family.task(model, cfg.train, setup.lr_at)
    cf = f" CF {mcfg.factor:g}" if mcfg.factor != 1 else ""
    label = f"{cfg.task} {cfg.method}{cf} seed {cfg.seed}"
    units = family.train_units(data)
    history = tracking.History(label, setup.epochs, units, metric=metric.val, unit=family.units)
    wandb = tracking.start(record, staging)
    # The checkpoint folder outlives this process: a killed run resumes from its last epoch, CSV log included.
    # A run on other data than the published (its folder's suffix) has a checkpoint of its own.
    suffix = final_dir.name.removeprefix(cfg.run_id)
    ckpt_dir = checkpoints.checkpoint_dir(cfg.results_dir, cfg.run_key + suffix)
    resume_from = checkpoints.resumable(
        ckpt_dir, cfg, echo=lambda m: print(m, file=sys.stderr), data=setup.fingerprint
    )
    state = checkpoints.RunState(setup.t_start)
    csv_log = checkpoints.csv_logger(ckpt_dir)
    new_ckpt_dirs = missing_dirs(Path(csv_log.log_dir))
    checkpoints.claim(ckpt_dir, cfg, record.provenance, setup.fingerprint)
    loggers = [csv_log] + ([wandb] if wandb else [])
    compressed = api.Compressed(model, cfg.method, mcfg)  # what suite.compress returns a library user
    extra = compressed.callbacks()
    ctrl_c = CtrlC()
    main_thread = threading.current_thread() is threading.main_thread()
    interactive = sys.stderr.isatty() if progress_bar is None else progress_bar
    trainer = pl.Trainer(
        max_epochs=setup.epochs,
        accelerator="auto",
        devices=1,  # the first GPU this process sees: a sweep worker sees its own (CUDA_VISIBLE_DEVICES)
        precision=LIGHTNING_PRECISION.get(cfg.train.precision, cfg.train.precision),
        logger=loggers,
        callbacks=[*extra, *callbacks, history, state, checkpoints.epoch_checkpoints(ckpt_dir), ctrl_c],
        gradient_clip_val=cfg.train.clip,
        gradient_clip_algorithm="norm",
        enable_model_summary=False,
        enable_progress_bar=interactive,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    record.provenance.update(device_info(trainer.strategy.root_device))
    exit_code, raise_after = 1, None
    sigint, unraisable = signal.getsignal(signal.SIGINT), sys.unraisablehook
    if main_thread and sigint is signal.default_int_handler:
        ctrl_c.arm()
    try:
        if setup.epochs > 0:
            if resume_from is not None:
                print(f"[{label}] resuming from {resume_from}", file=sys.stderr, flush=True)
            trainer.fit(task, datamodule=data, ckpt_path=resume_from)
        compressed.finalize()
        val = trainer.validate(task, datamodule=data, verbose=False)[0]
        test = trainer.test(task, datamodule=data, verbose=False)[0]
        record.final = {metric.val: val[metric.val], metric.test: test[metric.test]}
        if task.metric_detail:
            record.metric_detail = dict(task.metric_detail)
        if problem := record.final_problem():
            raise TrialDiverged(problem)
        if ctrl_c.pressed:  # dropped after the last batch
            raise KeyboardInterrupt
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
            tracking.close(wandb, exit_code=1)
            shutil.rmtree(staging, ignore_errors=True)
            if checkpoints.last_checkpoint(ckpt_dir) is None:  # else the same command resumes from it
                shutil.rmtree(csv_log.log_dir, ignore_errors=True)
                (ckpt_dir / checkpoints.OWNER).unlink(missing_ok=True)
                remove_new_dirs(new_ckpt_dirs)
            if isinstance(e, SystemExit) and trainer.interrupted:
                raise KeyboardInterrupt from None  # Lightning turns Ctrl-C into exit(1); callers need to know
            raise
        raise_after = e
    finally:
        sys.unraisablehook = unraisable
        if sigint is not None and main_thread:
            signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C after the first one
        record.epochs = history.rows
        record.resumed = state.resumes
        record.timings = {
            "wall_s": state.wall_s - (setup.baseline_s or 0.0),
            "baseline_s": setup.baseline_s,
            "train_s": history.train_seconds,
            f"train_{family.units}_per_s": (units * len(history.rows) / history.train_seconds)
            if history.train_seconds
            else None,
        }
    tracking.close(wandb, record, exit_code)
    try:
        checkpoints.join_csv(ckpt_dir, staging / "csv")
        record.save(record_path(staging))
        # A finished run this one replaces (--force) is dropped only once this one is in place.
        replace_dir(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk, say: nothing half-written stays
        raise
    checkpoints.remove(ckpt_dir)  # the run has its record: nothing to resume
    if raise_after is not None:
        raise raise_after
    return record
