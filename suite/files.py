"""Writing outputs so that a crash or a kill never leaves half of one: folders checked before work starts,
files written to a temporary name and renamed over the target, a run folder replaced by renaming the old one
aside and dropping it only once the new one is in place."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil

from .errors import ConfigError

ASIDE = ".old"
"""A replaced run folder ``<name>`` waits as ``.<name>.old<pid>`` until its successor is in place."""


def _why(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else type(e).__name__


def check_dir(path: str | Path, what: str = "output folder") -> Path:
    """Make sure files can be written in folder ``path`` (it exists as a writable folder, or it can be created
    there) without creating anything; a ConfigError names the path otherwise."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link cannot become a folder
            raise ConfigError(f"{what} {path}: {probe} is a broken symbolic link; choose another path")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == path else f"is under {probe}, which is"
        raise ConfigError(f"{what} {path} {where} a file, not a folder; choose another path")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {probe} is not writable; choose another path")
    return path


def check_file(path: str | Path, what: str = "output file") -> Path:
    """Make sure a file can be written at ``path`` (not a folder; its folder writable or creatable)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    check_dir(path.parent, f"{what} {path}: folder")
    return path


def make_dir(path: str | Path, what: str = "output folder") -> Path:
    """``mkdir -p``; a path that cannot be a folder is a ConfigError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        check_dir(path, what)
        raise ConfigError(f"{what} {path} cannot be created; choose another path") from None
    except OSError as e:
        check_dir(path, what)
        raise ConfigError(f"cannot create {what} {path} ({_why(e)}); choose another path") from None
    return path


@contextlib.contextmanager
def atomic(path: str | Path, what: str = "output file") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without error and
    removed otherwise, so readers see the old file or the new one, never half of one."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    make_dir(path.parent, "output folder")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM, errno.EISDIR, errno.ENOTDIR):
            raise ConfigError(f"cannot write {what} {path} ({_why(e)})") from None
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path: str | Path, text: str, what: str = "output file") -> Path:
    with atomic(path, what) as tmp:
        tmp.write_text(text)
    return Path(path)


def aside_folders(final: Path) -> list[Path]:
    """Folders a replacement of ``final`` renamed aside (``.<name>.old<pid>``), newest first."""
    found = list(final.parent.glob(f".{final.name}{ASIDE}*")) if final.parent.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _move_aside(final: Path) -> Path:
    aside = final.with_name(f".{final.name}{ASIDE}{os.getpid()}")
    os.replace(final, aside)
    return aside


def replace_dir(new: Path, final: Path) -> None:
    """Move folder ``new`` to ``final``. An existing ``final`` is renamed aside first and removed only once
    ``new`` is in place: a kill in between leaves the old folder aside, where readers find it and
    ``restore_aside`` puts it back."""
    aside = _move_aside(final) if final.exists() else None
    try:
        os.replace(new, final)
    except BaseException:
        if aside is not None:
            os.replace(aside, final)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def restore_aside(final: Path) -> None:
    """Repair what a killed ``replace_dir`` left: with ``final`` missing, its newest aside folder goes back
    in place; with ``final`` present, leftover aside folders are removed. Call it holding the folder's lock."""
    asides = aside_folders(final)
    if not final.exists() and asides:
        os.replace(asides.pop(0), final)
    for old in asides:
        pid = old.name.rpartition(ASIDE)[2]
        if pid.isdigit() and int(pid) != os.getpid() and psutil.pid_exists(int(pid)):
            continue  # its replacement is still under way
        shutil.rmtree(old, ignore_errors=True)


def remove_new_dirs(created: list[Path]) -> None:
    """Remove folders this process created, deepest first, where they are still empty."""
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def missing_dirs(path: Path) -> list[Path]:
    """The folders ``make_dir(path)`` would create (``path`` and its missing ancestors)."""
    out = []
    while not path.exists() and path.parent != path:
        out.append(path)
        path = path.parent
    return out
