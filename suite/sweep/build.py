"""Optuna parts of a sweep: its sampler, its pruner and the Lightning pruning callback."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna_integration import PyTorchLightningPruningCallback

from ..errors import ConfigError

if TYPE_CHECKING:
    from .spec import SweepSpec


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.RandomSampler,  # the grid's points are queued as trials
    "nsgaii": optuna.samplers.NSGAIISampler,
    "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler,
}
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
}


def _construct(kind: str, classes: dict, name: str, given: dict, **kwargs):
    """``classes[name](**kwargs)``; an unknown name or options the class refuses are a ConfigError."""
    if name not in classes:
        raise ConfigError(f"unknown {kind} {name!r}; known: {', '.join(classes)}")
    try:
        return classes[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{kind} {name}: bad options {given} ({e})") from None


def make_sampler(spec: SweepSpec, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with seed + ``offset``. Workers make a sampler for each trial with the number of
    trials so far as the offset: two workers, or a resumed worker, never replay one random sequence, and a sweep
    run by one worker from the start is reproducible. A grid sweep's points are queued; its sampler draws nothing."""
    options = dict(spec.sampler.options)
    seed = options.pop("seed", 0)
    seed = None if seed is None else int(seed) + offset
    if spec.sampler.name == "grid" and options:
        raise ConfigError(f"sampler grid takes no options besides seed, got {', '.join(options)}")
    return _construct("sampler", SAMPLERS, spec.sampler.name, spec.sampler.options, seed=seed, **options)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    return _construct("pruner", PRUNERS, spec.pruner.name, spec.pruner.options, **spec.pruner.options)


class FitPruning(PyTorchLightningPruningCallback):
    """optuna-integration's Lightning callback (it imports ``lightning.pytorch``), restricted to the validation
    epochs of ``fit``: train() validates once more after fitting, and that repeat must not prune a finished run.
    Counts its reports, so the caller knows whether training ran or a finished record was found."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__(trial, monitor)
        self.reports = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        self.reports += 1
        super().on_validation_end(trainer, pl_module)
