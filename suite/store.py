"""Where records live: results/runs/[<store>/]<task>/<method>/<run-id>/record.json, the per-run lock, and the
lookup of a finished run (``find``). Every path to a record is built by ``record_path``.

A finished run is reused only on the data it was made on: each record keeps the fingerprint of its data files
(``data_fingerprint``), and a record of before keeps none and is judged by the fingerprint of the data the
published records were made with (results/published/data.json, ``publish.published_data``). The run-id names the
configuration, so it never changes with the data; where the data differs from the published data of its task,
the run's folder (and the ``run_id`` its record holds) is the run-id with ``-d`` and 8 hex digits of the data's
fingerprint appended (``data_suffix``), so that both runs stay. A task without published data keeps one folder per
run-id, and a run on changed data replaces the run of the data as it was."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError
from .files import ASIDE, aside_folders, make_dir, restore_aside
from .record import Record

if TYPE_CHECKING:
    from .config import RunConfig

RECORD = "record.json"
"""The record's file name in its run folder."""


def run_dir(results_dir: str | Path, task: str, method: str, run_id: str, store: str | None = None) -> Path:
    """results/runs/[<store>/]<task>/<method>/<run-id>: a store is the folder of one pipeline stage's runs."""
    root = Path(results_dir) / "runs"
    return (root / store if store else root) / task / method / run_id


def data_fingerprint(cfg: RunConfig) -> dict[str, str]:
    """The fingerprint of the data ``cfg``'s run reads, as it is now (``sources.fingerprint`` of the files its
    family names); a DataError, as loading it would raise, when it is missing."""
    from . import tasks
    from .data.sources import fingerprint

    return fingerprint(tasks.get(cfg.family).data_files(cfg.dataset, cfg.data_dir))


def data_suffix(cfg: RunConfig, data: dict[str, str]) -> str:
    """What the run's folder adds to its run-id for data ``data``: nothing on the data its task's published records
    were made with (or for a task without any), else ``-d`` and 8 hex digits of the data's fingerprint."""
    from .publish import published_data

    reference = published_data(cfg.task, cfg.results_dir)
    if not data or reference is None or reference == data:
        return ""
    return "-d" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def run_id(cfg: RunConfig, data: dict[str, str] | None = None) -> str:
    """The id of ``cfg``'s run on data ``data`` (default: its data as it is now): its folder's name."""
    return cfg.run_id + data_suffix(cfg, data_fingerprint(cfg) if data is None else data)


def run_folder(cfg: RunConfig, data: dict[str, str] | None = None) -> Path:
    """The folder of ``cfg``'s run on data ``data`` (default: its data as it is now) in its own store."""
    return run_dir(cfg.results_dir, cfg.task, cfg.method, run_id(cfg, data), cfg.store)


def made_on(record: Record, data: dict[str, str], results_dir: str | Path) -> bool:
    """Whether ``record`` was made on data ``data``: its own fingerprint, or for a record of before (none), the
    published data of its task; a record that says nothing of a task without published data is trusted."""
    from .publish import published_data

    made = record.data_fingerprint or published_data(record.task, results_dir)
    return made is None or made == data


def record_path(folder: str | Path) -> Path:
    """The record of run folder ``folder``; where a replacement of the folder was killed half-way, the record of
    the run it was replacing, which waits aside until the next run of that id puts it back."""
    folder = Path(folder)
    path = folder / RECORD
    if not folder.exists():
        for aside in aside_folders(folder):
            if (aside / RECORD).is_file():
                return aside / RECORD
    return path


def locate(
    results_dir: str | Path, task: str, method: str, run_id: str, store: str | None = None
) -> Path | None:
    """The folder holding this run's record: its own store first, then any store under results/runs."""
    own = record_path(run_dir(results_dir, task, method, run_id, store))
    if own.is_file():
        return own.parent
    for path in sorted((Path(results_dir) / "runs").glob(f"**/{task}/{method}/{run_id}/{RECORD}")):
        if not any(part.startswith(".") for part in path.parent.relative_to(results_dir).parts):
            return path.parent
    return None


def find(
    cfg: RunConfig, anywhere: bool = False, published: bool = True, data: dict[str, str] | None = None
) -> Record | None:
    """The finished record of this exact configuration (same run-id: config, seed and code version) made on data
    ``data`` (default: the run's data as it is now) in this run's store (``anywhere``: in any store under
    results/runs), if there is one; else (``published``) a published record of the same configuration, seed and
    data whose code behaves as the current code does (``suite.publish.find_published``). A pipeline stage reuses
    only its own runs, so that what it reports is its own output; the dense baseline a trained init starts from is
    looked up everywhere (the baselines stage made it), but never among published records, which keep no weights.
    A record file that cannot be read is a DataError naming it."""
    data = data_fingerprint(cfg) if data is None else data
    rid = run_id(cfg, data)
    folder = locate(cfg.results_dir, cfg.task, cfg.method, rid, cfg.store) if anywhere else None
    path = record_path(folder or run_dir(cfg.results_dir, cfg.task, cfg.method, rid, cfg.store))
    if path.is_file():
        try:
            rec = Record.load(path)
        except DataError as e:
            raise DataError(f"{e}; delete its folder, or redo the run with --force") from None
        if rec.status == "ok" and made_on(rec, data, cfg.results_dir):
            return rec
    if published and cfg.profile == "paper":
        from .publish import find_published

        return find_published(cfg, data)
    return None


@contextlib.contextmanager
def run_lock(
    results_dir: str | Path, task: str, method: str, run_id: str, store: str | None = None
) -> Iterator[None]:
    """Exclusive, per run-id, between processes on this machine; the system drops it when its holder dies.
    Taking it repairs what a killed replacement of the run's folder left (``files.restore_aside``)."""
    final = run_dir(results_dir, task, method, run_id, store)
    path = final.with_name(f".{run_id}.lock")
    for attempt in range(3):
        make_dir(path.parent, "results folder")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            break
        except FileNotFoundError:  # a failing run removed the (then empty) folder just now
            if attempt == 2:
                raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        restore_aside(final)
        yield
    finally:
        # Unlinked while held: a process already waiting gets the lock and then finds the record.
        path.unlink(missing_ok=True)
        os.close(fd)


def load_records(results_dir: str | Path, status: str | None = "ok") -> list[Record]:
    """Every record under results/runs, in any store, and under results/published (optionally only those with
    ``status``); a file that is not a record is left out with a note on stderr naming it."""
    root = Path(results_dir)
    folders = set()
    for path in [*root.glob(f"runs/**/{RECORD}"), *root.glob(f"published/**/{RECORD}")]:
        parts = path.parent.relative_to(root).parts
        if not any(part.startswith(".") for part in parts):
            folders.add(path.parent)
        elif ASIDE in parts[-1] and not any(part.startswith(".") for part in parts[:-1]):
            # A run whose replacement was killed half-way waits aside (a staging folder is left out).
            folders.add(path.parent.with_name(parts[-1][1:].rpartition(ASIDE)[0]))
    out = []
    for folder in sorted(folders):
        path = record_path(folder)
        try:
            rec = Record.load(path)
        except DataError as e:
            print(f"note: {e}; left out", file=sys.stderr)
            continue
        if status is None or rec.status == status:
            out.append(rec)
    return out
