"""Running a sweep: create or resume the study, run trials in one or several worker processes, export them."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from ..errors import ConfigError, DataError, SuiteError
from ..files import atomic
from ..publish import find_published
from ..record import Record
from ..store import record_path, run_folder
from ..train import train
from . import storage as st
from .build import Deferred, FitPruning, SettingHalving, make_pruner, make_sampler
from .devices import assign, describe
from .objectives import mean, objective_values
from .preflight import preflight
from .spec import SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def location(spec: SweepSpec, url: str | None = None) -> str:
    """The study's storage: ``url`` if given, else the journal file under results/sweeps/<name>/."""
    return url or str(Path(spec.set.get("results_dir", "results")) / "sweeps" / spec.name / "journal.log")


def open_study(spec: SweepSpec, where: str, create: bool = True, resume: bool = False) -> optuna.Study:
    """Create the study (first time: record the spec) or resume it. ``resume``: queue a retry of each failed
    trial that is to be retried (the start of a sweep command does this, its workers do not). A grid's points
    are queued one at a time by the workers (``queue_next``), so the retries run first. A study made from a
    different spec (anything but n_trials changed) is refused rather than mixed."""
    storage = st.open_storage(where, create=create)
    study_args = dict(
        study_name=spec.study_name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec)
    )
    if not create:
        try:
            return optuna.load_study(**study_args)
        except KeyError:
            raise st.NoStudy(
                f"no study {spec.study_name} in {st.describe(where)} yet; run the sweep first"
            ) from None
    lock = st.SlotLock(where, spec.study_name)
    try:
        lock.acquire()
        try:  # loaded, not created: a refused resume must write nothing (not even a create-study entry)
            study = optuna.load_study(**study_args)
        except KeyError:
            study = optuna.create_study(directions=spec.directions, load_if_exists=True, **study_args)
        made_from = study.user_attrs.get("fingerprint")
        if made_from is None:
            study.set_user_attr("spec", spec.identity())
            study.set_user_attr("fingerprint", spec.fingerprint())
        elif made_from != spec.fingerprint():
            old, new = study.user_attrs.get("spec", {}), spec.identity()
            changed = sorted(m for m, v in new["code"].items() if old.get("code", {}).get(m) != v)
            if changed and {**old, "code": None} == {**new, "code": None}:
                raise ConfigError(
                    f"study {spec.study_name} in {st.describe(where)} was made by older code of "
                    f"{', '.join(changed)} (its trials' runs are stale); delete its storage to rebuild it, or give "
                    "the sweep a new name"
                )
            raise ConfigError(
                f"study {spec.study_name} in {st.describe(where)} was made from a different spec (only n_trials "
                "may change when resuming); give the sweep a new name or delete its storage"
            )
        study.set_user_attr("n_trials", spec.n_trials)
        if resume:
            st.retry_failed(study)
    finally:
        lock.close()
    return study


class Objective:
    """One trial: draw settings, train each seed's run (pruning on the first), return the objective means."""

    def __init__(self, spec: SweepSpec, started) -> None:
        self.spec, self.started = spec, started
        self.number: int | None = None
        self.unexpected: Exception | None = None
        """An error that is not a SuiteError: its traceback is shown (a bug, or a fault of the machine)."""

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.number = trial.number
        trial.set_user_attr(st.OWNER, st.owner())
        self.started()  # the trial is RUNNING and owned: other workers may now count it
        try:
            return self.run(trial)
        except optuna.TrialPruned:
            raise
        except Deferred as e:  # its checkpoint is kept: a worker resumes it once its rivals have raced
            st.fail(trial, str(e), retry=True, deferred=True)
            raise
        except SuiteError as e:  # missing data may come back; a CF out of reach stays out of reach
            st.fail(trial, str(e), retry=isinstance(e, DataError))
            raise
        except Exception as e:
            st.fail(trial, f"{type(e).__name__}: {e}", retry=True)
            self.unexpected = e
            raise
        except KeyboardInterrupt:
            st.fail(trial, "interrupted", retry=True)
            raise

    def run(self, trial: optuna.Trial) -> float | list[float]:
        spec = self.spec
        params = spec.suggest(trial)
        records: list[Record] = []
        epochs = []
        for i, seed in enumerate(spec.seeds):
            cfg = spec.run_config(params, seed, study=spec.study_name, trial=trial.number)
            pruning = None
            if spec.monitor and i == 0:
                # rivals as the grid names them: by the trial's own settings (no method in a one-method grid)
                hold = (lambda: rivals(spec, trial.study, trial.params)) if race_epochs(spec) else None
                pruning = FitPruning(trial, spec.monitor, hold=hold, at=race_epochs(spec))
            if pruning is not None and pruning.hold is not None and cfg.profile == "paper":
                # A published run this race stopped before (on another machine, say) is not raced again.
                if (lost := find_published(cfg, status="pruned")) is not None:
                    for row in lost.epochs:
                        if spec.monitor in row:
                            trial.report(row[spec.monitor], step=row["epoch"] - 1)
                    self.note(trial, [*records, lost], [*epochs, len(lost.epochs)])
                    raise optuna.TrialPruned(f"published run {lost.run_id} lost its rate race")
            try:
                rec = train(cfg, callbacks=[pruning] if pruning else [], progress_bar=False)
            except optuna.TrialPruned:
                pruned = Record.load(record_path(run_folder(cfg)))
                self.note(trial, [*records, pruned], [*epochs, len(pruned.epochs)])
                raise
            if pruning is not None and pruning.reports == 0:  # found finished: give the pruner its curve
                for row in rec.epochs:
                    if spec.monitor in row:
                        trial.report(row[spec.monitor], step=row["epoch"] - 1)
            records.append(rec)
            epochs.append(len(rec.epochs))
            if rec.status != "ok":
                # A diverged run: pruned, so that the sampler learns the region is bad; the record says why.
                self.note(trial, records, epochs)
                trial.set_user_attr("reason", f"diverged: {rec.reason}")
                raise optuna.TrialPruned(f"run {rec.run_id} diverged: {rec.reason}")
        self.note(trial, records, epochs)
        values = objective_values(spec, records)
        return values[0] if len(values) == 1 else values

    @staticmethod
    def note(trial: optuna.Trial, records: list[Record], epochs: list[int]) -> None:
        """What the trial's runs were, as user attributes (the dashboard and the trials table show them)."""
        trial.set_user_attr("run_ids", [r.run_id for r in records])
        trial.set_user_attr("epochs", int(sum(epochs)))
        ok = [r for r in records if r.status == "ok"]
        if ok:
            metric = ok[0].metric
            trial.set_user_attr(f"val_{metric}", mean([r.val for r in ok]))
            trial.set_user_attr(f"test_{metric}", mean([r.test for r in ok]))  # reported, never searched on
            trial.set_user_attr("achieved_cf", mean([r.accounting["cf"] for r in ok]))


SETTLED = ("complete", "pruned", "failed")


def _point(t: optuna.trial.FrozenTrial) -> dict:
    """A trial's settings (a queued trial has only the ones it was queued with)."""
    return t.params or t.system_attrs.get("fixed_params", {})


def race_epochs(spec: SweepSpec) -> int | None:
    """The epochs after which a grid sweep's rate race defers its leaders (``SettingHalving``); None: no race."""
    if spec.sampler.name != "grid" or spec.pruner.name != "setting_halving":
        return None
    return make_pruner(spec).step + 1


def rivals(spec: SweepSpec, study: optuna.Study, params: dict) -> list[dict]:
    """The grid points of the configuration of a trial with settings ``params`` (all but the raced setting equal)
    that have not raced yet: none of their trials has reached the race's epoch or ended, and one may still."""
    pruner = study.pruner
    if race_epochs(spec) is None or not isinstance(pruner, SettingHalving):
        return []
    trials = study.get_trials(deepcopy=False)
    superseded = st.retried(trials)
    out = []
    for point in spec.grid()[: spec.n_trials]:
        if point == params or pruner.group(point) != pruner.group(params):
            continue
        mine = [t for t in trials if _point(t) == point]
        if not any(
            pruner.step in t.intermediate_values or st.standing(t, superseded) in SETTLED for t in mine
        ):
            out.append(point)
    return out


def resume_deferred(spec: SweepSpec, study: optuna.Study) -> None:
    """Queue the retry of every deferred trial whose rivals have all raced: it resumes its run from the race's
    checkpoint, and goes on only if it is still ahead. Call it holding the slot lock."""
    trials = study.get_trials(deepcopy=False)
    superseded = st.retried(trials)
    for t in trials:
        if (
            st.standing(t, superseded) == "deferred"
            and not rivals(spec, study, t.params)
            and st.retry_trial(study, t)
        ):
            print(
                f"[{study.study_name}] trial {t.number} {t.params}: its rivals have raced; resuming it",
                file=sys.stderr,
                flush=True,
            )


def queue_next(spec: SweepSpec, study: optuna.Study) -> bool:
    """Queue the grid's next point (within n_trials); whether there was one: a rival of a deferred trial that
    has no trial yet, else the first point that has none. Queuing one point at a time keeps a resumed sweep on
    the runs it had started (their retries, queued when the sweep resumes, are taken first) before it starts new
    ones."""
    trials = study.get_trials(deepcopy=False)
    superseded = st.retried(trials)
    have = [_point(t) for t in trials]
    deferred = [t for t in trials if st.standing(t, superseded) == "deferred"]
    waiting_for = [point for t in deferred for point in rivals(spec, study, t.params)]
    for point in waiting_for + spec.grid()[: spec.n_trials]:
        if point not in have:
            study.enqueue_trial(point)
            return True
    return False


def work(spec: SweepSpec, where: str) -> None:
    """One worker: while the budget allows, take a slot and run a trial (a queued retry first, then a grid's next
    point; a grid sweep runs its points only). A trial that fails does not stop the worker."""
    study = open_study(spec, where)
    lock = st.SlotLock(where, spec.study_name)
    try:
        while True:
            lock.acquire()
            try:
                st.fail_dead_trials(study)
                resume_deferred(spec, study)  # before the budget: a deferred trial's retry takes its place
                p = st.progress(study)
                if p.taken >= spec.n_trials:
                    break
                if spec.sampler.name == "grid" and p.waiting == 0 and not queue_next(spec, study):
                    break
                study.sampler = make_sampler(spec, offset=p.total)
                objective = Objective(spec, lock.release)
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            finally:
                lock.release()
            _echo(study, objective)
    finally:
        lock.close()


def _not_a_failed_trial(record: logging.LogRecord) -> bool:
    """Optuna logs each failed trial with a traceback; the worker says it in one line instead (``_echo``)."""
    msg = str(record.msg)
    return not (msg.startswith("Trial ") and " failed with " in msg)


logging.getLogger("optuna.study._optimize").addFilter(_not_a_failed_trial)


def _echo(study: optuna.Study, objective: Objective) -> None:
    """One line for the trial this worker just finished (and the traceback of an unexpected error)."""
    if objective.number is None:
        return
    t = study.get_trials(deepcopy=False)[objective.number]
    if t.state.is_finished():
        values = ", ".join(f"{v:.4g}" for v in t.values) if t.values else ""
        why = t.user_attrs.get("reason") or t.user_attrs.get(st.REASON) or ""
        if t.user_attrs.get(st.DEFERRED):
            why += " (resumed once they have)"
        elif t.state == TrialState.FAIL and t.user_attrs.get(st.RETRY):
            why += " (retried when the sweep runs again)"
        if objective.unexpected is not None:
            traceback.print_exception(objective.unexpected, file=sys.stderr)
        print(
            f"[{study.study_name}] trial {t.number} {t.state.name.lower()} {values} {t.params} {why}".rstrip(),
            file=sys.stderr,
            flush=True,
        )


def run_sweep(
    spec: SweepSpec,
    url: str | None = None,
    workers: int = 1,
    argv: list[str] | None = None,
    devices: list[int] | str | None = None,
) -> optuna.Study:
    """Run (or resume) a sweep to its n_trials. ``workers > 1`` (or ``devices`` given) spawns that many worker
    processes on this machine (``argv``: the command that runs one worker), sharing the study through its
    storage, each on its own GPU where there are GPUs (``devices``: indices of the visible CUDA devices to
    use, round-robin, or ``"cpu"``; ``sweep.devices``)."""
    gpus = assign(workers, devices)  # a device that is not here is refused before anything starts
    where = location(spec, url)
    preflight(spec, where)  # what every trial would hit is found before the study exists
    study = open_study(spec, where, resume=True)
    if workers <= 1 and devices is None:
        work(spec, where)
    elif bad := _spawn(workers, argv or [], gpus):
        ended = ", ".join(f"killed by signal {-c}" if c < 0 else f"exit {c}" for c in bad)
        p = st.progress(study)
        if p.running or p.waiting or p.to_retry or p.deferred or p.done < spec.n_trials:
            raise SuiteError(f"{len(bad)} of {workers} workers failed ({ended}); rerun the command to resume")
        # The other workers retried what the failed ones left: the study is as if none had failed.
        print(
            f"note: {len(bad)} of {workers} workers failed ({ended}); every trial was finished by the others",
            file=sys.stderr,
        )
    export(spec, study)
    return study


def _spawn(workers: int, argv: list[str], gpus: list[str | None]) -> list[int]:
    """Run ``workers`` worker processes and wait for them (worker i sees only GPU ``gpus[i]``; "": none; None:
    whatever this process sees); the exit codes of those that failed."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    if any(g is not None for g in gpus):
        shown = ", ".join(f"worker {i + 1} on {describe(g)}" for i, g in enumerate(gpus))
        print(f"sweep: {shown}", file=sys.stderr, flush=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "suite.cli", *argv, "--as-worker"],
            env=env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": gpu},
        )
        for gpu in gpus
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    return [c for c in codes if c != 0]


TRIAL_ATTRS = ("number", "state", "values", "params", "user_attrs", "system_attrs", "duration")
"""What of each trial Optuna's ``trials_dataframe`` gives the trials table."""
COUNTS = ("number", "pid", "retry_of", "intermediate_steps", "epochs")
"""Columns of whole numbers (written without a decimal point where a trial has none)."""


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, from Optuna's ``trials_dataframe``: the study, number and state, the first objective
    (``objective``, ``direction``, ``value``) and every objective by its name, the settings, what the runs reached
    (user attributes: run ids, epochs, val and test metric, achieved CF, a reason), the worker's host and pid, the
    trial it retries, its standing (``storage.standing``: a failure retried or deferred is not failed for good),
    the number of pruner reports, and its seconds."""
    names = study.user_attrs.get("spec", {}).get("objectives") or []
    names = [o["name"] for o in names] or [f"value_{i}" for i in range(len(study.directions))]
    frame = study.trials_dataframe(attrs=TRIAL_ATTRS)  # columns number, values_0, params_<name>, ...
    if frame.empty:
        return pd.DataFrame(columns=["study", "number", "state"])

    def part(prefix: str) -> pd.DataFrame:
        return frame.filter(regex=f"^{prefix}").rename(columns=lambda c: c.removeprefix(prefix))

    attrs = part("user_attrs_").map(lambda v: " ".join(v) if isinstance(v, list) else v)
    who = attrs.pop(st.OWNER) if st.OWNER in attrs else pd.Series(None, index=frame.index, dtype=object)
    # A user attribute named as an objective (val_ppl: the mean over seeds either way) is listed once, as itself.
    values = part("values_").rename(columns=lambda i: names[int(i)])
    out = pd.DataFrame({"study": study.study_name, "number": frame["number"]})
    out["state"] = frame["state"].str.lower()
    out["objective"], out["direction"] = names[0], study.directions[0].name.lower()
    out["value"] = values[names[0]]
    out = out.join([values.drop(columns=[c for c in values if c in attrs]), part("params_"), attrs])
    out["host"] = who.map(lambda w: w.get("host") if isinstance(w, dict) else None)
    out["pid"] = who.map(lambda w: w.get("pid") if isinstance(w, dict) else None)
    out["retry_of"] = frame.get("system_attrs_failed_trial")
    trials = study.get_trials(deepcopy=False)
    superseded = st.retried(trials)
    out["standing"] = [st.standing(t, superseded) for t in trials]  # failed for good, retried, deferred, ...
    out["intermediate_steps"] = [len(t.intermediate_values) for t in trials]
    out["seconds"] = pd.to_timedelta(frame["duration"]).dt.total_seconds()
    for column in COUNTS:
        if column in out:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype("Int64")
    return out


def export(spec: SweepSpec, study: optuna.Study) -> Path:
    """Write results/sweeps/<name>/<study>.csv (the report collects these)."""
    out = Path(spec.set.get("results_dir", "results")) / "sweeps" / spec.name / f"{spec.study_name}.csv"
    with atomic(out, "trials table") as tmp:
        trials_table(study).to_csv(tmp, index=False)
    return out


def status(spec: SweepSpec, url: str | None = None, top: int = 5) -> str:
    """The study's progress, what is missing and why, and its best trials, as text."""
    where = location(spec, url)
    study = open_study(spec, where, create=False)
    p = st.progress(study)
    trials = study.get_trials(deepcopy=False)
    dead = {t.number for t in trials if t.state == TrialState.RUNNING and st.gone(t)}
    lines = [
        f"study {spec.study_name} ({st.describe(where)})",
        f"  {p.done}/{spec.n_trials} trials done: {p.complete} complete, {p.pruned} pruned, {p.failed} failed; "
        f"{p.running - len(dead)} running, {p.waiting} queued, {p.deferred} deferred; {p.to_retry + len(dead)} to "
        f"retry when the sweep runs again" + (f" ({p.retried} failed and retried)" if p.retried else ""),
    ]
    superseded = st.retried(trials)
    for t in trials:
        who = t.user_attrs.get(st.OWNER, {})
        why = t.user_attrs.get(st.REASON) or "no reason recorded"
        if t.number in dead:
            lines.append(f"  worker gone: trial {t.number} {t.params} (pid {who.get('pid')}); to retry")
        elif t.state == TrialState.RUNNING:
            lines.append(f"  running: trial {t.number} {t.params} on {who.get('host')} pid {who.get('pid')}")
        elif (kind := st.standing(t, superseded)) in ("to_retry", "deferred", "failed"):
            lines.append(f"  {kind.replace('_', ' ')}: trial {t.number} {t.params}: {why}")
    if spec.sampler.name == "grid":  # the points (within n_trials) that no trial has settled yet
        settled = [t.params for t in trials if st.standing(t, superseded) in SETTLED]
        if missing := [point for point in spec.grid()[: spec.n_trials] if point not in settled]:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            lines.append(f"  grid points without a result: {', '.join(map(str, missing[:5]))}{more}")
    names = [o.name for o in spec.objectives]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        if len(names) == 1:
            sign = 1 if spec.objectives[0].direction == "minimize" else -1
            best = sorted(complete, key=lambda t: sign * t.value)[:top]
            lines.append(f"  best by {names[0]} ({spec.objectives[0].direction}):")
        else:
            best = sorted(study.best_trials, key=lambda t: t.values)
            lines.append(f"  Pareto front of {', '.join(names)} ({len(best)} trials):")
        for t in best:
            values = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, t.values) if not math.isnan(v))
            shown = [k for k in t.user_attrs if k.startswith("test_")] + ["achieved_cf", "run_ids"]
            extra = {k: t.user_attrs[k] for k in shown if k in t.user_attrs}
            lines.append(f"    trial {t.number}: {values}  {t.params}  {extra}")
    lines.append(f"  dashboard: optuna-dashboard {where if st.is_url(where) else Path(where)}")
    return "\n".join(lines)
