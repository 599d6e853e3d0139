"""Where a study lives and how its workers share it.

Storage: a journal file by default (JournalFileBackend: processes on one machine share it with no server), or
any Optuna RDB URL (``--storage postgresql://...``) for workers on several machines.

Slots: a worker starts a trial only while it holds the study's slot lock and fewer than n_trials trials are
finished or running; the new trial is RUNNING and owned before the lock is released, so the workers together
never start more than n_trials. The lock is an flock on a file beside a journal or SQLite file, and a
PostgreSQL advisory lock for PostgreSQL; both are released by the system when their holder dies.

Dead workers: every trial records its owner (host, pid, process start time). Under the lock a worker fails the
RUNNING trials whose owner is gone from this host (RDB heartbeats catch owners on other hosts) and queues a
retry of each with the same settings. The retry's runs find the records the dead worker finished (train()
returns a finished run instead of redoing it), so finished work is neither lost nor redone.

Failed trials: every one keeps its reason. One whose settings decide the failure (a CF the method cannot reach)
is done; one whose settings do not (its worker died, it was interrupted, its data went missing, an unexpected
error) keeps its place in the budget and is retried with the same settings the next time the sweep runs, at
most MAX_RETRY times. So a grid never loses a point to a failure, and never runs a point twice.

Deferred trials: a trial ahead in its rate race whose rivals have not raced yet stops, failed with DEFERRED set
and its checkpoint kept. It keeps its place in the budget, and a worker queues its retry (not counted among its
MAX_RETRY) once its rivals have raced (``runner.queue_next``); the retry resumes the run from its checkpoint.

Retries are Optuna's: ``RetryHeartbeatStaleTrialCallback`` queues the copy and keeps the bookkeeping (the
original trial and the retry history, as system attributes), for a stale RDB heartbeat and for the failures
above alike. What Optuna does not give is kept here: a journal file has no heartbeat, so a dead worker on this
host is found by its process (``fail_dead_trials``); the copy takes the failed trial's settings but not its user
attributes (its reason and runs stay with the failure); and a failure caught by the worker is retried only at
the next run of the sweep, so that a sweep command ends rather than retrying a broken setting in a loop.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import socket
import sys
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import psutil
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError, DataError
from ..files import check_file, make_dir

HEARTBEAT_S = 30
"""RDB storages: a running trial's worker writes a heartbeat this often ..."""
GRACE_S = 120
"""... and a trial without one for this long is failed and retried."""
MAX_RETRY = 3
"""A trial whose workers keep dying is retried at most this many times."""
OWNER = "worker"
REASON = "fail_reason"
RETRY = "retry"
"""User attribute of a failed trial: whether its settings did not decide the failure, so that it is retried."""
DEFERRED = "deferred"
"""User attribute of a failed trial: it was deferred, to be retried once its rivals have raced."""
DEFERRALS = "deferrals"
"""User attribute of a retry: how many of the trials it retries were deferrals (they are not failures)."""


with warnings.catch_warnings():  # experimental in Optuna, stable in use since 2.8
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    _RETRY = RetryHeartbeatStaleTrialCallback()  # MAX_RETRY is counted here, deferrals left out


def retry_history(t: FrozenTrial) -> list[int]:
    """The failed trials ``t`` retries, the original first (empty: ``t`` is no retry); Optuna's bookkeeping."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(t)


def failures(t: FrozenTrial) -> int:
    """How many failed trials ``t`` retries, deferrals left out."""
    return len(retry_history(t)) - int(t.user_attrs.get(DEFERRALS, 0))


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue a copy of a failed trial (its settings, not its user attributes but the count of deferrals), at most
    MAX_RETRY times per original for failures (a deferral is always resumed), with Optuna's retry callback;
    whether a copy was queued. Also RDBStorage's callback for trials whose heartbeat stopped."""
    deferred = bool(trial.user_attrs.get(DEFERRED))
    if not deferred and failures(trial) >= MAX_RETRY:
        return False
    bare = copy.deepcopy(trial)  # the callback extends the history list of the trial it is given
    bare.user_attrs = {DEFERRALS: int(trial.user_attrs.get(DEFERRALS, 0)) + deferred}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _RETRY(study, bare)
    return True


def fail(trial: optuna.Trial, reason: str, retry: bool, deferred: bool = False) -> None:
    """Say why a running trial fails, and whether a later run of the sweep retries it (or, ``deferred``, a worker
    does once its rivals have raced)."""
    trial.set_user_attr(REASON, reason)
    trial.set_user_attr(RETRY, retry)
    if deferred:
        trial.set_user_attr(DEFERRED, True)


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that have a retry."""
    return {n for t in trials for n in retry_history(t)}


def standing(t: FrozenTrial, superseded: set[int]) -> str:
    """A trial's place in the budget, as ``Progress`` counts it: its state in lower case, except that a failed
    trial is ``retried`` (it is among ``superseded``, the failed trials that have a retry), ``to_retry`` (its
    settings did not decide its failure, and it has retries left), ``deferred`` (likewise, but waiting for its
    rivals) or ``failed`` (for good)."""
    if t.state != TrialState.FAIL:
        return t.state.name.lower()
    if t.number in superseded:
        return "retried"
    # A trial failed without a reason recorded (its worker died, or it was interrupted) is retried.
    if t.user_attrs.get(DEFERRED):
        return "deferred"
    retry = t.user_attrs.get(RETRY, REASON not in t.user_attrs)
    return "to_retry" if retry and failures(t) < MAX_RETRY else "failed"


def retry_failed(study: optuna.Study) -> None:
    """Queue a retry of every failed trial that is to be retried and has none yet (deferred trials wait for
    ``runner.queue_next``). Call it holding the slot lock."""
    trials = study.get_trials(deepcopy=False)
    done = retried(trials)
    for t in trials:
        if standing(t, done) == "to_retry" and retry_trial(study, t):
            why = t.user_attrs.get(REASON) or "no reason recorded"
            print(
                f"[{study.study_name}] trial {t.number} {t.params}: retrying it ({why})",
                file=sys.stderr,
                flush=True,
            )


def is_url(location: str) -> bool:
    return "://" in location


def describe(location: str) -> str:
    """The location for messages, without a password."""
    if not is_url(location):
        return f"journal {location}"
    from sqlalchemy.engine import make_url

    try:
        return make_url(location).render_as_string(hide_password=True)
    except Exception:
        return location.split("://")[0] + "://..."


class NoStudy(ConfigError):
    """The study asked for has not been created yet (its journal or its name in the database is not there)."""


def open_storage(location: str, create: bool = True) -> optuna.storages.BaseStorage:
    """A journal file path or an RDB URL -> an Optuna storage (RDB with heartbeats and retries of stale trials)."""
    if not is_url(location):
        path = Path(location)
        if not create and not path.is_file():
            raise NoStudy(f"no study has been run yet: {path} does not exist")
        check_file(path, "study journal")
        make_dir(path.parent, "study folder")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        check_journal(path)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except Exception as e:  # entries Optuna cannot replay
            what = f"{type(e).__name__}: {e}".strip(": ").splitlines()[0][:120]
            raise _damaged(path, f"an entry Optuna cannot replay, {what}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                location,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry_trial,
                engine_kwargs={"pool_pre_ping": True},
            )
        except Exception as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"cannot open storage {describe(location)} ({first}); check the URL and server"
            ) from None


def check_journal(path: Path) -> None:
    """Refuse a damaged journal: Optuna skips a last line cut short (a truncated copy, a full disk), which shows
    a wrong study, and stops with a traceback on bytes that are not JSON."""
    problem = _journal_problem(path)
    if problem is not None:  # perhaps a worker is writing that line just now: look again once it is done
        from optuna.storages.journal import JournalFileSymlinkLock

        lock = JournalFileSymlinkLock(str(path))
        lock.acquire()
        try:
            problem = _journal_problem(path)
        finally:
            lock.release()
    if problem is not None:
        raise _damaged(path, problem)


def _journal_problem(path: Path) -> str | None:
    if not path.is_file():
        return None
    for number, line in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        cut = not line.endswith(b"\n")
        try:
            entry = json.loads(line)
        except ValueError:  # not UTF-8, or not JSON
            entry = None
        if not ((isinstance(entry, dict) and "op_code" in entry) or (cut and line.startswith(b"{"))):
            return f"line {number} is not a journal entry"
        if cut:
            return f"line {number} is cut short"
    return None


def _damaged(path: Path, problem: str) -> DataError:
    return DataError(
        f"study journal {path} is damaged ({problem}); restore it from a copy, or delete it and run the sweep "
        "again (its finished runs are found, not redone)"
    )


class SlotLock:
    """The study's lock around "count the trials, then start one". ``release()`` may be called twice, and
    ``close()`` releases it."""

    def __init__(self, location: str, study_name: str) -> None:
        self._fd: int | None = None
        self._conn = None
        self._key = zlib.crc32(study_name.encode()) & 0x7FFFFFFF
        self._file: Path | None = None
        self._held = False
        if not is_url(location):
            self._file = Path(f"{location}.slots.lock")
        elif location.startswith("sqlite:///"):
            self._file = Path(f"{location[len('sqlite:///') :]}.slots.lock")
        elif location.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(location, poolclass=sqlalchemy.pool.NullPool)
            self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        else:
            print(
                f"note: {describe(location)} has no slot lock here; with several workers the study may end with "
                "up to one trial per worker beyond n_trials",
                file=sys.stderr,
            )

    def acquire(self) -> None:
        if self._file is not None:
            make_dir(self._file.parent, "study folder")
            self._fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        elif self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        elif self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})

    def close(self) -> None:
        self.release()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def owner() -> dict:
    """This process, as recorded on the trials it runs."""
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()}


def alive(who: dict) -> bool:
    """Whether a trial's owner process still runs (on this host; a reused pid has another start time; a killed
    worker stays a zombie until the command that started it, waiting on another worker, reaps it)."""
    try:
        proc = psutil.Process(int(who["pid"]))
        return abs(proc.create_time() - float(who["started"])) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return False


def gone(t: FrozenTrial) -> bool:
    """Whether a RUNNING trial's worker is known to be dead: it ran on this host and its process is gone (or
    the trial never recorded one: under the slot lock every live worker records itself at once)."""
    who = t.user_attrs.get(OWNER)
    return not who or (who.get("host") == socket.gethostname() and not alive(who))


def fail_dead_trials(study: optuna.Study) -> None:
    """Fail RUNNING trials whose owner died on this host (or that never got an owner: under the slot lock every
    live worker has recorded itself) and queue a retry of each. Call it holding the slot lock."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get(OWNER)
        if not gone(t):
            continue
        why = f"its worker {who['host']} pid {who['pid']} died" if who else "it never got a worker"
        study._storage.set_trial_user_attr(t._trial_id, REASON, why)
        study._storage.set_trial_user_attr(t._trial_id, RETRY, True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        frozen = study.get_trials(deepcopy=True)[t.number]
        if frozen.state == TrialState.FAIL:
            retry_trial(study, frozen)
            print(
                f"[{study.study_name}] trial {t.number}: its worker {who or '(unknown)'} is gone; retrying it",
                file=sys.stderr,
                flush=True,
            )
    with warnings.catch_warnings():  # RDB heartbeats (a no-op for storages without them)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@dataclass
class Progress:
    """Trial counts. ``done`` is what n_trials counts: complete, pruned, and failed for good (its settings
    decide the failure, or its retries are used up). A failed trial to be retried keeps its place in the budget
    (``taken``) until the next run of the sweep queues its retry, and a deferred one until a worker does; a failed
    trial with a retry counts no more."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    to_retry: int = 0
    deferred: int = 0
    retried: int = 0
    running: int = 0
    waiting: int = 0
    total: int = 0

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def taken(self) -> int:
        """Places of the budget that no new trial may take."""
        return self.done + self.to_retry + self.deferred + self.running


def progress(study: optuna.Study) -> Progress:
    trials = study.get_trials(deepcopy=False)
    superseded = retried(trials)
    return Progress(total=len(trials), **Counter(standing(t, superseded) for t in trials))
