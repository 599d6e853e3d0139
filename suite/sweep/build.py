"""Optuna parts of a sweep: its sampler, its pruner and the Lightning pruning callback."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna_integration import PyTorchLightningPruningCallback

from ..errors import ConfigError
from ..tracking import History

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


class SettingHalving(optuna.pruners.BasePruner):
    """Successive halving among the values of one setting (the learning rate) of each configuration.

    A trial that reaches epoch ``after_epochs`` is compared, on its validation metric at that epoch, with the trials
    whose other settings (method, CF, CMR, ...) are all equal to its own: it goes on only while fewer than
    ``keep`` of them are better there; otherwise it is pruned. A trial never competes with another
    configuration's, as Optuna's own pruners would have it do in a study over many methods.

    In a grid sweep, a trial ahead at that epoch while some of its configuration's values have not got there yet
    is deferred (``Deferred``): it stops with its checkpoint kept, its rivals race, and only then does the sweep
    resume it, to go on if it is still ahead. So each configuration's n values race for ``after_epochs`` epochs
    and only the winner trains on: a configuration costs 1 + (n - 1) after_epochs / epochs full runs, whichever
    value wins.
    """

    def __init__(self, param: str = "lr", after_epochs: int = 2, keep: int = 1) -> None:
        if not isinstance(param, str) or not param:
            raise ValueError(f"param must be a setting's name, got {param!r}")
        if not isinstance(after_epochs, int) or after_epochs < 1:
            raise ValueError(f"after_epochs must be a positive integer, got {after_epochs!r}")
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}")
        self.param, self.step, self.keep = param, after_epochs - 1, keep

    def group(self, params: dict) -> dict:
        """A trial's configuration: its settings but the raced one."""
        return {k: v for k, v in params.items() if k != self.param}

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.last_step != self.step or self.step not in trial.intermediate_values:
            return False
        mine = trial.intermediate_values[self.step]
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        group = self.group(trial.params)
        better = 0
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number or self.step not in other.intermediate_values:
                continue
            if other.params == trial.params:  # its own earlier trial (deferred, or whose worker died)
                continue
            if self.group(other.params) != group:
                continue
            better += sign * other.intermediate_values[self.step] < sign * mine
        return better >= self.keep


PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "setting_halving": SettingHalving,
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


class Deferred(Exception):
    """A trial ahead in its rate race whose rivals have not raced yet: it stops here, its checkpoint kept, and the
    sweep resumes it once they have (``SettingHalving``)."""


class FitPruning(PyTorchLightningPruningCallback):
    """optuna-integration's Lightning callback (it imports ``lightning.pytorch``), restricted to the validation
    epochs of ``fit``: train() validates once more after fitting, and that repeat must not prune a finished run.
    Counts its reports, so the caller knows whether training ran or a finished record was found. It reports
    after validation and asks the pruner before the next epoch, once the epoch is complete (its row in the
    record, its checkpoint): a stopped run's record ends with the epoch it was judged on.

    ``hold``: before each epoch after the first ``at`` (so only once the last epoch's checkpoint is written; a run
    resumed past them included), the callback asks it which rivals the trial waits for; if any, the run stops with
    ``Deferred``."""

    def __init__(
        self,
        trial: optuna.Trial,
        monitor: str,
        hold: Callable[[], list] | None = None,
        at: int | None = None,
    ) -> None:
        super().__init__(trial, monitor)
        self.reports = 0
        self.hold, self.at = hold, at

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # (before each epoch: a rival that reported meanwhile, on another worker, may be ahead now)
        if self.reports and self._trial.should_prune():
            raise optuna.TrialPruned(f"stopped by the pruner after epoch {trainer.current_epoch}")
        if self.hold is None or self.at is None or trainer.current_epoch < self.at:
            return
        if rivals := self.hold():
            shown = ", ".join(str(r) for r in rivals)
            raise Deferred(
                f"ahead after epoch {self.at} (now {trainer.current_epoch}); waits for {shown} to race"
            )

    def on_train_start(self, trainer, pl_module) -> None:
        """A run resumed from its checkpoint gives the trial the epochs it had before, so that the pruner compares
        its siblings with them (the trial that was interrupted is a new trial now, with no reports), and asks the
        pruner after each, as it would have while training: a run resumed past the race's epoch is still judged
        there, against the rivals that have raced since."""
        history = next((c for c in trainer.callbacks if isinstance(c, History)), None)
        rows = [row for row in (history.rows if history else []) if self.monitor in row]
        for row in rows:
            self._trial.report(row[self.monitor], step=row["epoch"] - 1)
            self.reports += 1
            if self._trial.should_prune():
                raise optuna.TrialPruned(f"stopped by the pruner after epoch {row['epoch']}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:  # as optuna-integration's callback: nothing to report
            warnings.warn(f"the pruner watches {self.monitor!r}, which the run does not log", stacklevel=1)
            return
        self._trial.report(score.item(), step=pl_module.current_epoch)
        self.reports += 1
