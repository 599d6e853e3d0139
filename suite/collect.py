"""Merging the results trees of several machines into one: ``suite collect DIR... [--into OUT]``.

Every machine of a sweep (a SLURM array, say, sharing one PostgreSQL study) writes its runs to its own
results/runs. Collecting copies each run folder (runs/[<store>/]<task>/<method>/<run-id>/, record and logs) into
the target tree, in the same store:

- a run the target already holds, or that an earlier folder gave, with the same results (status and final
  metrics) is an identical duplicate: skipped, and counted in the summary;
- the same run-id with different final metrics (two finished runs that disagree) is refused with one line
  naming both records, before anything is written;
- a finished run wins over an unfinished (failed or pruned) copy of the same run;
- a partial copy (a run folder without its record, a record that cannot be read, a staging folder of a run
  still being written) is skipped with a note.

Each run is copied into a staging folder beside its place and renamed into it, so that a reader (or a crash)
never sees half a run; collecting again after an interruption copies the rest.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .errors import ConfigError, DataError
from .files import ASIDE, check_dir, make_dir, replace_dir
from .record import Record, format_metric
from .store import record_path, run_lock

RUN_ID = re.compile(r"[0-9a-f]{12}(-d[0-9a-f]{8})?")
"""A run folder's name (``config.RunConfig.run_id``, on other data than the published with ``store.data_suffix``):
what a folder without its record is recognised by."""


@dataclass
class Copy:
    """One run folder of one tree: where it is, where it goes (relative to the tree) and its record."""

    folder: Path
    rel: Path
    """runs/[<store>/]<task>/<method>/<run-id>."""
    record: Record
    placed: bool = False
    """Already in the target tree."""


@dataclass
class Collected:
    """What ``collect`` did: runs copied (new, and replacing an unfinished copy), duplicates skipped, notes."""

    into: Path
    copied: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)
    """(the copy skipped, the one kept)."""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.copied) + len(self.replaced)
        parts = [f"collected {n} run(s) into {self.into}"]
        if self.replaced:
            parts.append(f"{len(self.replaced)} of them replacing an unfinished copy")
        parts.append(f"{len(self.duplicates)} identical duplicate(s) skipped")
        if partial := sum("partial copy" in note for note in self.notes):
            parts.append(f"{partial} partial cop{'y' if partial == 1 else 'ies'} skipped")
        return "; ".join(parts)


def scan(root: Path, notes: list[str]) -> list[Copy]:
    """The run folders of the results tree ``root`` that hold a readable record; each other run folder (and
    each staging folder of a run still being written) is a note in ``notes``."""
    runs = root / "runs"
    found: list[Copy] = []
    for top, subdirs, _ in os.walk(runs):
        keep = []
        for name in sorted(subdirs):
            folder = Path(top) / name
            if name.startswith("."):  # staging folders and locks are not runs
                if ".tmp" in name:
                    notes.append(f"{folder}: a run still being written there (a partial copy); skipped")
                # A run whose replacement was cut short waits aside (files.replace_dir): it is the run.
                own = name[1:].rpartition(ASIDE)[0]
                if own and not (Path(top) / own).exists():
                    if copy := _run_folder(root, folder, notes, Path(top) / own):
                        found.append(copy)
                continue
            copy = _run_folder(root, folder, notes)
            if copy is None:
                keep.append(name)  # a store, task or method folder: look inside
            elif copy is not False:
                found.append(copy)
        subdirs[:] = keep  # never inside a run folder (its logs, W&B files)
    return found


def _run_folder(root: Path, folder: Path, notes: list[str], own: Path | None = None) -> Copy | bool | None:
    """The run in ``folder`` (False: a run folder that cannot be collected, with a note; None: not a run);
    ``own``: where the run belongs, when that is not ``folder``."""
    own = own or folder
    rel = own.relative_to(root)
    if not record_path(folder).is_file():
        if RUN_ID.fullmatch(folder.name) and len(rel.parts) >= 4:
            notes.append(f"{folder}: a run folder without record.json (a partial copy); skipped")
            return False
        return None
    if len(rel.parts) < 4:
        notes.append(f"{folder}: a record outside runs/<task>/<method>/<run-id>; skipped")
        return False
    try:
        record = Record.load(record_path(folder))
    except DataError as e:
        notes.append(f"{e} (a partial copy); skipped")
        return False
    if record.run_id != own.name:
        notes.append(f"{folder}: holds the record of run {record.run_id}, not its own; skipped")
        return False
    return Copy(folder, rel, record)


def _results(record: Record) -> str:
    shown = ", ".join(f"{k} {format_metric(v)}" for k, v in sorted(record.final.items()))
    return f"{record.status}" + (f", {shown}" if shown else "")


def plan(
    sources: list[Path], into: Path, notes: list[str]
) -> tuple[dict[Path, Copy], list[tuple[Copy, Copy]]]:
    """Which copy of each run goes where (by its place in the tree) and which copies are duplicates; a
    conflict (two finished runs of one run-id whose final metrics differ) is a DataError naming both."""
    chosen: dict[Path, Copy] = {}
    finished: dict[str, Copy] = {}  # the finished copy of each run-id seen, in any store
    duplicates: list[tuple[Copy, Copy]] = []
    existing = [Copy(c.folder, c.rel, c.record, placed=True) for c in scan(into, [])] if into.is_dir() else []
    seen = {into.resolve()} if into.is_dir() else set()
    trees = [existing]
    for source in sources:
        if source.resolve() not in seen:  # the target named as a source too: its runs are already there
            seen.add(source.resolve())
            trees.append(scan(source, notes))
    for copy in (c for tree in trees for c in tree):
        rec = copy.record
        if rec.status == "ok":
            other = finished.setdefault(rec.run_id, copy)
            if other.record.final != rec.final:
                raise DataError(
                    f"run {rec.run_id} has different results in {record_path(other.folder)} "
                    f"({_results(other.record)}) and in {record_path(copy.folder)} ({_results(rec)}); keep one of "
                    "them (delete the other's run folder) and collect again"
                )
        kept = chosen.get(copy.rel)
        if kept is None:
            chosen[copy.rel] = copy
        elif kept.record.status == rec.status and kept.record.final == rec.final:
            duplicates.append((copy, kept))
        elif rec.status == "ok" and kept.record.status != "ok":
            chosen[copy.rel] = copy
            if kept.placed:
                notes.append(
                    f"{into / copy.rel}: {kept.record.status} there, finished in {copy.folder}; replaced"
                )
        else:
            notes.append(
                f"{copy.folder}: {rec.status}, while {kept.folder} is {kept.record.status}; kept the latter"
            )
    return chosen, duplicates


def collect(sources: list[str | Path], into: str | Path = "results") -> Collected:
    """Merge the results trees ``sources`` into ``into`` (see the module's docstring); nothing is written when
    a source cannot be read or two finished runs of one run-id disagree."""
    if not sources:
        raise ConfigError("name the results folders to collect (suite collect DIR... --into OUT)")
    trees = list(map(Path, sources))
    for tree in trees:
        if not tree.is_dir():
            how = "is a file" if tree.exists() else "does not exist"
            raise ConfigError(f"results folder {tree} {how}; name results folders (each holding runs/)")
    for tree in trees:
        if not (tree / "runs").is_dir():
            raise ConfigError(
                f"{tree} holds no runs/ folder; name results folders (the ones holding runs/, "
                "e.g. machine-b/results)"
            )
    into = check_dir(into, "collect target (--into)")
    notes: list[str] = []
    chosen, duplicates = plan(trees, into, notes)
    out = Collected(into, duplicates=[(d.folder, k.folder) for d, k in duplicates], notes=notes)
    for copy in chosen.values():
        if copy.placed:
            continue
        final = into / copy.rel
        replacing = final.exists()
        _place(copy, final, into)
        (out.replaced if replacing else out.copied).append(final)
    return out


def _place(copy: Copy, final: Path, into: Path) -> None:
    """Copy one run folder to ``final`` through a staging folder beside it, under the run's lock."""
    *store, task, method, run_id = copy.rel.parts[1:]  # runs/[<store>/]<task>/<method>/<run-id>
    make_dir(final.parent, "collect target (--into)")
    staging = final.with_name(f".{final.name}.tmp{os.getpid()}")
    for left in final.parent.glob(f".{final.name}.tmp*"):  # of this process, or of a killed one
        pid = left.name.rpartition(".tmp")[2]
        if not (pid.isdigit() and int(pid) != os.getpid() and psutil.pid_exists(int(pid))):
            shutil.rmtree(left, ignore_errors=True)
    try:
        shutil.copytree(copy.folder, staging, ignore=shutil.ignore_patterns(".*.lock"))
        with run_lock(into, task, method, run_id, "/".join(store) or None):
            replace_dir(staging, final)  # an unfinished copy there waits aside until this one is in place
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
