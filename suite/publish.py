"""Published results: full-scale records kept in git, next to the code that made them.

``suite publish RUN_DIR...`` copies finished full-scale runs into results/published/<task>/<method>/<run-id>/:
the record (record.json) and its per-epoch CSV log (metrics.csv); no weights, no W&B folder. Runs a sweep's rate
race stopped (status ``pruned``) are published too: the leaderboard counts the rates each choice was made among,
and they are never chosen. It refuses, with one line each, a run that failed or diverged, a smoke-scale run, a run
made from a dirty tree or a commit that is not on main, and a run already published. A published record carries, under ``published``:
- ``command``: the command that made it (``suite train ...``), with no path of the machine it ran on;
- ``behaviour``: the behaviour fingerprint of the code that made it (``suite.behaviour``): the exact results of a
  tiny fixed run of its family and method. The record stays current while the code keeps that behaviour
  (comments, docstrings, formatting, renames, moves) and is marked stale, with what changed, when it does not.
Paths are left out or made relative: the data folder becomes the dataset's name, the results folder ``results``.

results/published/data.json holds, per task, the fingerprint of the data its published records were made with
(``suite publish --data`` writes it from the data folder; publishing the first record of a task adds its own): a
record published before records kept their data's fingerprint is judged by it, and a run is never published on
other data than the published records of its task.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .files import write_text
from .record import Record, write_json
from .store import RECORD, data_fingerprint, load_records, made_on, record_path

PUBLISHED = "published"
DATA = "data.json"
"""Per task, the fingerprint of the data its published records were made with (``store.data_fingerprint``)."""


def published_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / PUBLISHED


#: The published records this checkout of the suite ships with (results/published beside the package), also
#: consulted by a run whose results folder is elsewhere (``--results /scratch/results``).
ROOT = Path(__file__).resolve().parent.parent
"""The checkout holding this package."""
SHIPPED = ROOT / "results" / PUBLISHED


def _roots(results_dir: str | Path) -> list[Path]:
    """The published folders a results folder sees: its own, and this checkout's (``SHIPPED``)."""
    roots = [published_dir(results_dir)]
    if SHIPPED.is_dir() and SHIPPED.resolve() != roots[0].resolve():
        roots.append(SHIPPED)
    return roots


def _read_data(path: Path) -> dict[str, dict[str, str]]:
    try:
        known = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path} cannot be read ({e}); restore it from git or rewrite it: suite publish --data"
        ) from None
    if not isinstance(known, dict) or not all(isinstance(v, dict) for v in known.values()):
        raise DataError(
            f"{path} is not a mapping of task -> data fingerprint; suite publish --data rewrites it"
        )
    return known


def published_data(task: str, results_dir: str | Path = "results") -> dict[str, str] | None:
    """The fingerprint of the data the published records of ``task`` were made with, from data.json of the
    results folder's published/, else of this checkout's; None: no published data for the task."""
    for root in _roots(results_dir):
        known = _read_data(root / DATA)
        if task in known:
            return known[task]
    return None


def record_data(
    results_dir: str | Path = "results", data_dir: str | None = None
) -> dict[str, dict[str, str]]:
    """Write results/published/data.json: for every task of the published records, the fingerprint of its data
    as the data folder (``data_dir``, else SUITE_DATA_DIR, else a checked download) holds it now. Run it where
    the data the published records were made with is."""
    from . import tasks
    from .data.sources import fingerprint

    path = published_dir(results_dir) / DATA
    known = _read_data(path)
    done: dict[str, dict[str, str]] = {}
    for rec_path in sorted(published_dir(results_dir).glob(f"*/*/*/{RECORD}")):
        rec = Record.load(rec_path)
        family, dataset = rec.family, rec.config.get("dataset")
        key = json.dumps([family, dataset], sort_keys=True)
        if key not in done:
            done[key] = fingerprint(tasks.get(family).data_files(dataset, data_dir))
        known[rec.task] = done[key]
    if not done:
        raise ConfigError(f"no published records under {published_dir(results_dir)}; nothing to fingerprint")
    write_json(path, dict(sorted(known.items())), "published data fingerprints")
    return known


def full_scale(record: Record) -> bool:
    """A paper-profile run over all of its data (no fraction of the training or evaluation splits)."""
    train = record.config.get("train") or {}
    return (
        record.config.get("profile") == "paper"
        and train.get("train_fraction", 1.0) == 1.0
        and train.get("eval_fraction", 1.0) == 1.0
    )


def on_main(sha: str, branch: str = "main") -> bool:
    """Whether commit ``sha`` is on ``branch`` of the repository holding this package."""
    git = ["git", "merge-base", "--is-ancestor", sha, branch]
    return subprocess.run(git, capture_output=True, text=True, cwd=ROOT, timeout=30).returncode == 0


def command(record: Record) -> str:
    """The command that made the run, as a user would type it: the console script, the arguments as given, less
    the results folder (where it was written changes nothing)."""
    argv = list(record.provenance.get("argv") or [])[1:]
    sets = {i for i, arg in enumerate(argv[:-1]) if arg == "--set" and argv[i + 1].startswith("results_dir=")}
    out = ["suite"]
    for i, arg in enumerate(argv):
        if i in sets or i - 1 in sets:  # --set results_dir=...
            continue
        path = Path(arg)
        out.append(str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else arg)
    return shlex.join(out)


def _relative(value: Any) -> Any:
    """``value`` with every absolute path cut to its last two parts (``fsdd/recordings``: the dataset's own
    layout, without the folder it lay in on the machine that ran it)."""
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return str(Path(*Path(value).parts[-2:]))
    return value


def scrub(record: Record) -> dict[str, Any]:
    """The record as published: no path of the machine it ran on, no host name, the command written down."""
    d = record.to_dict()
    config = d["config"]
    config.update(results_dir="results", data_dir=None)
    data = config.get("data")
    if isinstance(data, dict):
        if "origin" in data:
            data["origin"] = data.get("name") or Path(str(data["origin"])).name
        config["data"] = _relative(data)
    d["provenance"] = {k: v for k, v in d["provenance"].items() if k not in ("host", "argv")}
    return d


def refusal(record: Record, dest: Path, results_dir: str | Path = "results") -> str | None:
    """Why ``record`` cannot be published into ``results_dir``'s published/ (None: it can)."""
    # A run the sweep's pruner stopped lost a rate race: published, it shows what the choice was made among.
    if record.status not in ("ok", "pruned"):
        return f"the run {record.status}" + (f" ({record.reason})" if record.reason else "")
    if not full_scale(record):
        return "a smoke-scale run (profile or data fractions): publish full-scale runs only"
    sha, dirty = record.provenance.get("git_sha"), record.provenance.get("git_dirty")
    if not sha:
        return "made outside a git checkout (no commit recorded)"
    if dirty is not False:
        return f"made from a tree with uncommitted changes at {sha[:7]}; rerun from a clean checkout of main"
    if not on_main(sha):
        return f"made at commit {sha[:7]}, which is not on main; rerun from main"
    if dest.exists():
        return f"already published ({dest})"
    return data_refusal(record, results_dir)


def data_refusal(record: Record, results_dir: str | Path = "results") -> str | None:
    """Why ``record`` cannot join the published records of its task for its data (None: it can): the published
    results of a task are of one data set."""
    reference = published_data(record.task, results_dir)
    if record.data_fingerprint and reference is not None and record.data_fingerprint != reference:
        return (
            f"made on other data than the published records of {record.task} (results/published/{DATA}); "
            "rerun it on their data"
        )
    return None


def publish(
    run_dirs: list[str | Path],
    results_dir: str | Path = "results",
    fingerprint: Callable[[Record], dict] | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[list[Path], list[str]]:
    """Copy the finished full-scale runs of ``run_dirs`` into results/published; returns the folders written and
    one line per run refused. ``fingerprint(record)``: the behaviour fingerprint of the code that made it."""
    written, refused = [], []
    record_fingerprints = fingerprint is None
    for folder in map(Path, run_dirs):
        try:
            rec = Record.load(record_path(folder))
        except DataError as e:
            refused.append(f"{folder}: {e}")
            continue
        dest = published_dir(results_dir) / rec.task / rec.method / rec.run_id
        why = refusal(rec, dest, results_dir)
        if why is not None:
            refused.append(f"{folder}: refused: {why}")
            continue
        if fingerprint is None:
            from .behaviour import of_record as fingerprint
        d = scrub(rec)
        d["published"] = {
            "command": command(rec),
            "behaviour": fingerprint(rec),
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        staging = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            write_json(record_path(staging), d, "published record")
            csv = folder / "csv" / "metrics.csv"
            if csv.is_file():
                write_text(staging / "metrics.csv", csv.read_text(), "published CSV log")
            staging.rename(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        written.append(dest)
        if rec.data_fingerprint and published_data(rec.task, results_dir) is None:
            path = published_dir(results_dir) / DATA  # the first record of its task: its data
            known = {**_read_data(path), rec.task: rec.data_fingerprint}
            write_json(path, dict(sorted(known.items())), "published data fingerprints")
        if record_fingerprints:
            from .behaviour import publish as keep_fingerprints

            keep_fingerprints([behaviour_key(rec)])  # a fresh clone then needs no tiny run to judge it
        echo(
            f"published {rec.task} {rec.method} {rec.run_id} (commit {d['provenance']['git_sha'][:7]}) -> {dest}"
        )
    return written, refused


BENCHMARKS = {
    "lstm_step_batch1": "infer.json",
    "lm_generate_batch1": "generate.json",
    "decode_batch1": "decode.json",
}


def bench_dir(results_dir: str | Path) -> Path:
    return published_dir(results_dir) / "bench"


def publish_bench(path: str | Path, results_dir: str | Path = "results") -> tuple[Path | None, str | None]:
    """Copy a speed benchmark's JSON (``suite bench infer|generate``) into results/published/bench/, replacing
    the one published before; refused (None, why) when it was not made from a clean tree at a commit of main."""
    try:
        result = json.loads(Path(path).read_text())
        name = BENCHMARKS[result["benchmark"]]
        prov = result["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{path}: not a benchmark written by `suite bench infer`, `generate` or `decode`"
    sha = prov.get("git_sha")
    if not sha or prov.get("git_dirty") is not False:
        return (
            None,
            f"{path}: refused: made from a tree with uncommitted changes; rerun from a clean checkout of main",
        )
    if not on_main(sha):
        return None, f"{path}: refused: made at commit {sha[:7]}, which is not on main; rerun from main"
    dest = bench_dir(results_dir) / name
    write_json(
        dest, {**result, "published": {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    )
    return dest, None


def bench_file(results_dir: str | Path, name: str) -> Path | None:
    """The file of a published benchmark (``infer.json``, ``generate.json``) of ``results_dir`` or of this
    checkout."""
    return next((d / name for d in (bench_dir(results_dir), SHIPPED / "bench") if (d / name).is_file()), None)


def published_bench(results_dir: str | Path, name: str) -> dict | None:
    """A published benchmark of ``results_dir`` or of this checkout (``bench_file``), read."""
    path = bench_file(results_dir, name)
    return None if path is None else json.loads(path.read_text())


# Staleness and reuse of published records ---------------------------------------------------------------------


def behaviour_key(record: Record) -> tuple[str, str, str]:
    """(family, method, variant): what a published record's behaviour fingerprint is the fingerprint of."""
    from .behaviour import variant

    return (record.family, record.method, variant(record.config))


def stale_reasons(records: list[Record]) -> dict[str, str | None]:
    """Per published record (by run-id): None while the code keeps the behaviour that made it, else what
    changed. The current fingerprints come from results/published/behaviour.json or the local cache, and are
    computed (one tiny run each, all in one process) only for code that neither knows."""
    from .behaviour import current, stale_reason

    keys = {r.run_id: behaviour_key(r) for r in records}
    now = current(set(keys.values()))
    return {r.run_id: stale_reason(r.published.get("behaviour"), now[keys[r.run_id]]) for r in records}


def stale_published(results_dir: str | Path = "results") -> list[tuple[Record, str]]:
    """The published records whose code no longer behaves as the current code does, each with what changed."""
    records = [r for r in load_records(results_dir) if r.published]
    reasons = stale_reasons(records)
    return [(r, reasons[r.run_id]) for r in records if reasons[r.run_id] is not None]


def refresh_fingerprints(results_dir: str | Path = "results") -> set:
    """Write the current code's fingerprints of every published record's (family, method, variant) into
    results/published/behaviour.json, so that a fresh clone judges the records without a tiny run."""
    from .behaviour import publish as keep

    keys = {behaviour_key(r) for r in load_records(results_dir) if r.published}
    keep(keys, replace=True)
    return keys


def _what(config: dict) -> str:
    """A configuration without where it lives or which code ran it: what a published record and a run share."""
    from .tasks.base import train_identity

    keys = ("task", "family", "dataset", "model", "train", "method", "compress", "seed")
    what = {k: config.get(k) for k in keys}
    what["train"] = train_identity(what["train"] or {})
    return json.dumps(_by_value(what), sort_keys=True, default=str)


def _by_value(value):
    """``value`` with its whole numbers as floats: a setting given as 0 (``--set cmr=0``) and as 0.0 (a sweep's
    grid) is one setting."""
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def find_published(cfg, data: dict[str, str] | None = None, status: str = "ok") -> Record | None:
    """A published record of this very configuration and seed, made on data ``data`` (default: the run's data as
    it is now), whose code still behaves as the current code does: a run that need not be redone (after a
    refactor, say) although its run-id (code version) differs. Looked up in the results folder's published/ and
    in the checkout's own (``SHIPPED``). ``status="pruned"``: a run a rate race stopped, for the race's sweep."""
    data = data_fingerprint(cfg) if data is None else data
    want = _what({**cfg.to_dict(), "train": dataclasses.asdict(cfg.train)})
    for root in _roots(cfg.results_dir):
        for path in sorted((root / cfg.task / cfg.method).glob(f"*/{RECORD}")):
            try:
                rec = Record.load(path)
            except DataError:
                continue
            same = rec.status == status and _what(rec.config) == want and made_on(rec, data, cfg.results_dir)
            if same and stale_reasons([rec])[rec.run_id] is None:
                return rec
    return None
