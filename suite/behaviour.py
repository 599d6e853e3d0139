"""Whether a code change can change a run's result: source versions and behaviour fingerprints.

``suite.version`` names the code deciding a run by the text of its files, so a comment edit makes every record
stale. Two finer answers per (task family, method):

- ``source_version``: the modules ``version.code_version`` follows, each hashed by its syntax tree without
  docstrings (any bare string statement), comments and formatting. Equal: the same program.
- a fingerprint: the numbers of a tiny fixed run on tiny data written in the real datasets' layouts, through
  learning-rate decay, doping annealing with CMR, finalize and the accounting. Codes with equal fingerprints
  (``same``) decide the same numbers there, so a record of one stays current under the other (a rename, a move).

The tiny runs happen in a subprocess that runs this very file as a script with whatever ``suite`` its
PYTHONPATH names, so that ``fingerprint_at`` can run an older commit's code: the script part imports only
long-stable APIs of the package (``config.load_run``, ``train.train``, the Record's fields). ``current`` finds
a fingerprint by (family, method, source version, recipe) in the committed file, then in the local cache, and
computes only what neither holds. RECIPE hashes the tiny run's own definitions: when they change, fingerprints
made before are not compared with new ones (recompute a record's with ``fingerprint_at`` its commit).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import math
import os
import random
import struct
import subprocess
import sys
import tarfile
import tempfile
import wave
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = Path("results/published/behaviour.json")
"""The committed fingerprints, relative to the repository root."""
Pair = tuple[str, ...]
"""(family, method) or (family, method, variant): ``variant`` (``variant(config)``) names the random settings of
a record that the tiny run takes over (dropout, co-matrix dropout), so that a record is judged by the code paths
its own configuration takes: a change in how dropout draws its numbers leaves a run without dropout current."""

# The tiny run (what RECIPE_PARTS names) -------------------------------------------------------------------

FACTOR = 4.0
SEED = 0
PRESETS = {
    "lm": {
        "dataset": "ptb",
        "model": {"hidden": 32, "layers": 2, "dropout": 0.1, "init": 0.3},
        "train": {"epochs": 3, "batch_size": 4, "bptt": 8, "lr": 1.0, "lr_decay": 2.0, "decay_after": 1},
    },
    "translation": {
        "family": "translation",
        "dataset": "multi30k",
        "model": {"hidden": 32, "emb_size": 32, "layers": 1, "dropout": 0.1, "init": 0.1},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.02, "lr_decay": 2.0, "decay_after": 1,
                  "eval_batch_size": 16, "beam": 2, "min_freq": 1},
    },
    "speech": {
        "family": "speech",
        "dataset": "fsdd",
        "model": {"hidden": 32, "layers": 1, "dropout": 0.1, "stack": 3},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "lr_decay": 2.0, "decay_after": 1,
                  "eval_batch_size": 8, "train_utterances": 24, "val_utterances": 8, "test_utterances": 8,
                  "max_digits": 3},
    },
}  # fmt: skip
METHOD_SETTINGS = {"cmr": 0.5}
"""Given to each method that has the setting (CMR is off by default). The annealing keeps its defaults: its
events shrink to fit a short run (10 of them at least), so D is pruned inside the tiny run too."""
VOCAB_TARGETS = {"lm": ["decoder.weight"], "translation": ["decoder.output.weight"]}
"""Where a method that does not apply to the recurrent matrices (groupreduce) is tried instead."""
UNTIMED = ("seconds", "_per_s")
"""Per-epoch values that measure the machine, not the behaviour."""
NOT_APPLICABLE = ("ConfigError", "CompressionError")


def write_ptb(root: Path) -> None:
    """A corpus a tiny model learns in three epochs: each line steps through 30 words by 3."""
    rng, folder = random.Random(0), root / "ptb"
    folder.mkdir(parents=True)
    for split, lines in (("train", 300), ("valid", 40), ("test", 40)):
        starts = [rng.randrange(30) for _ in range(lines)]
        text = [" ".join(f"w{(s + 3 * k) % 30}" for k in range(rng.randint(3, 12))) for s in starts]
        (folder / f"ptb.{split}.txt").write_text("".join(f" {t} \n" for t in text))


def write_multi30k(root: Path) -> None:
    """Pairs whose target is the source reversed word by word (s_i -> t_{7i mod 40}), then ``.``."""
    rng, folder = random.Random(0), root / "multi30k-en-de" / "tok"
    folder.mkdir(parents=True)
    for stem, lines in (("train", 400), ("val", 24), ("test_2016_flickr", 24)):
        src = [[f"s{rng.randrange(40)}" for _ in range(rng.randint(2, 7))] for _ in range(lines)]
        tgt = [[f"t{7 * int(w[1:]) % 40}" for w in reversed(s)] + ["."] for s in src]
        for lang, text in (("en", src), ("de", tgt)):
            (folder / f"{stem}.lc.norm.tok.{lang}").write_text("".join(" ".join(t) + "\n" for t in text))


def write_fsdd(root: Path) -> None:
    """Clips at 8 kHz, 16 bit: digit d is a tone at 300 + 150 d Hz plus a speaker's own harmonic."""
    rng, folder = random.Random(0), root / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for s, speaker in enumerate(("ann", "bob")):
        for digit in range(10):
            for take in range(12):  # 0-4 test, 5-9 validation, 10-11 train
                w, n = 2 * math.pi * (300 + 150 * digit) / 8000, int(rng.uniform(0.15, 0.25) * 8000)
                x = [
                    0.3 * math.sin(w * t) + 0.1 * math.sin((2 + s) * w * t) + rng.gauss(0, 0.003)
                    for t in range(n)
                ]
                with wave.open(str(folder / f"{digit}_{speaker}_{take}.wav"), "wb") as out:
                    out.setnchannels(1), out.setsampwidth(2), out.setframerate(8000)
                    out.writeframes(struct.pack(f"<{n}h", *(round(32767 * v) for v in x)))


WRITERS = {"lm": write_ptb, "translation": write_multi30k, "speech": write_fsdd}


def _numbers(record) -> dict[str, float]:
    """What behaviour decides in a record: final metrics, every per-epoch value but timings, the accounting."""
    out = {f"final.{k}": v for k, v in record.final.items()}
    for row in record.epochs:
        out.update({f"epoch{row['epoch']}.{k}": v for k, v in row.items() if not k.endswith(UNTIMED)})
        out.pop(f"epoch{row['epoch']}.epoch")

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list):  # matrices by name
            for i, v in enumerate(value):
                walk(f"{prefix}.{v.get('name', i) if isinstance(v, dict) else i}", v)
        else:
            out[prefix] = value

    walk("accounting", record.accounting)
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


def _tiny_run(family: str, method: str, work: Path, variant: str = "") -> dict:
    """The tiny run of one pair in ``work`` (with the settings of ``variant``): {status, reason, values}."""
    from suite.config import load_run
    from suite.train import train

    preset = work / f"tiny-{family}.yaml"
    if not preset.exists():
        WRITERS[family](work / "data")
        preset.write_text(json.dumps(PRESETS[family]))  # JSON is YAML
    sets = {"results_dir": str(work / "results"), "wandb": "disabled", "data_dir": str(work / "data")}

    def config(**more):
        try:
            return load_run(preset, method=method, factor=FACTOR, seed=SEED, sets={**sets, **more})
        except Exception as e:  # a method without a CF (dense)
            if type(e).__name__ != "ConfigError":
                raise
            return load_run(preset, method=method, seed=SEED, sets={**sets, **more})

    taken = json.loads(variant) if variant else {}
    model = {k: v for k, v in taken.items() if k.startswith("model.")}
    own = {k: v for k, v in {**METHOD_SETTINGS, **taken}.items() if k in config().compress}
    own.update(model)
    fails = []
    for where in ({}, *([{"targets": VOCAB_TARGETS[family]}] if family in VOCAB_TARGETS else [])):
        try:
            record = train(config(**own, **where))
        except Exception as e:
            if type(e).__name__ not in NOT_APPLICABLE:
                return {"status": "error", "reason": f"{type(e).__name__}: {e}"}
            fails.append(str(e))
            continue
        return {"status": record.status, "reason": record.reason, "values": _numbers(record)}
    return {"status": "does not apply", "reason": "; ".join(fails)}


def _main(out: str, *pairs: str) -> None:
    """Script mode: the tiny runs of ``pairs`` (``family/method``), as JSON in file ``out``."""
    import platform

    import torch

    torch.set_num_threads(1)
    results = {}
    for pair in pairs:
        name, _, variant = pair.partition("|")
        family, method = name.split("/")
        result = _tiny_run(family, method, Path.cwd(), variant)
        try:
            result["source"] = source_version(family, method)
        except Exception:  # an older package whose closure this module cannot follow
            result["source"] = None
        results[pair] = {**result, "env": {"torch": torch.__version__, "python": platform.python_version()}}
    Path(out).write_text(json.dumps(results))


# Source versions ---------------------------------------------------------------------------------------------


def normalized(source: str) -> str:
    """The syntax tree of ``source`` without comments, formatting or bare string statements (docstrings)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(getattr(node, "body", None), list):
            node.body = [s for s in node.body if not _is_string(s)] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def _is_string(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(getattr(statement.value, "value", None), str)


def _digest(parts: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(parts):
        h.update(f"{name}\0{parts[name]}\0".encode())
    return h.hexdigest()[:12]


@functools.cache
def source_version(family: str, method: str) -> str:
    """Like ``version.code_version`` (the same modules; a method with a trained init adds the dense run's), each
    file hashed by its normalized syntax tree: a docstring or comment edit leaves it unchanged."""
    from suite import version
    from suite.compressors import registry

    starts = version._starts(family, method)
    if registry.make_config(method, {}).init == "trained":
        starts += version._starts(family, "dense")
    return _digest({name: normalized(path.read_text()) for name, path in version.closure(starts).items()})


RECIPE_PARTS = ("FACTOR", "SEED", "PRESETS", "METHOD_SETTINGS", "VOCAB_TARGETS", "UNTIMED", "NOT_APPLICABLE")
RECIPE_PARTS += ("WRITERS", *(w.__name__ for w in WRITERS.values()), "_numbers", "_tiny_run")


def _recipe() -> str:
    """A hash of the definitions that make the tiny run: fingerprints of two recipes are never compared."""
    parts = {}
    for node in ast.parse(Path(__file__).read_text()).body:
        target = (getattr(node, "targets", None) or [getattr(node, "target", None)])[0]
        name = getattr(node, "name", None) or getattr(target, "id", None)
        if name in RECIPE_PARTS:
            parts[name] = normalized(ast.unparse(node))
    if len(parts) != len(RECIPE_PARTS):
        raise RuntimeError(f"RECIPE_PARTS names missing definitions: {set(RECIPE_PARTS) - set(parts)}")
    return _digest(parts)


RECIPE = _recipe()

# Fingerprints ------------------------------------------------------------------------------------------------

RTOL = 1e-5
"""Relative tolerance of ``same``: another CPU's float rounding stays within it, a changed constant does not."""
BOOT = "import runpy, sys; sys.path[:1] == [''] and sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"
"""Runs this file as a script (arguments: its path, then its own), the work folder kept off sys.path."""


def variant(config: dict) -> str:
    """The random settings of a run's config that its fingerprint takes over ("" when it has none)."""
    taken = {}
    if "dropout" in (config.get("model") or {}):
        taken["model.dropout"] = config["model"]["dropout"]
    compress = config.get("compress") or {}
    taken.update({k: compress[k] for k in RANDOM_SETTINGS if k in compress})
    return json.dumps(taken, sort_keys=True) if taken else ""


RANDOM_SETTINGS = ("cmr", "cmr_mode")
"""Method settings that decide which random numbers a run draws (besides the model's dropout)."""


def _parts(pair: Pair) -> tuple[str, str, str]:
    family, method, *rest = pair
    return family, method, rest[0] if rest else ""


def _arg(pair: Pair) -> str:
    family, method, var = _parts(pair)
    return f"{family}/{method}" + (f"|{var}" if var else "")


def _fingerprint(family: str, method: str, result: dict, var: str = "") -> dict:
    values = result.get("values", {})
    rounded = json.dumps(
        [result["status"], {k: float(f"{v:.6g}") for k, v in values.items()}], sort_keys=True
    )
    return {
        "family": family,
        "method": method,
        **({"variant": var} if var else {}),
        "source": result.get("source"),
        "recipe": RECIPE,
        "status": result["status"],
        **({"reason": result["reason"]} if result.get("reason") else {}),
        "values": values,
        "hash": hashlib.sha256(rounded.encode()).hexdigest()[:12],
        "env": result.get("env", {}),
    }


def compute(pairs: Iterable[Pair], code: Path | None = None) -> dict[Pair, dict]:
    """Fingerprints of ``pairs`` (family, method), all from one subprocess running the package in folder ``code``
    (default: this one's) on one CPU thread, W&B off, with a fresh data cache and results folder."""
    from suite.errors import SuiteError

    pairs = list(dict.fromkeys(pairs))
    with tempfile.TemporaryDirectory(prefix="suite-behaviour-") as tmp:
        work, out = Path(tmp), Path(tmp) / "fingerprints.json"
        env = {k: v for k, v in os.environ.items() if k not in ("SUITE_DATA_DIR", "PYTHONSAFEPATH")}
        env.update(PYTHONPATH=str(code or ROOT), CUDA_VISIBLE_DEVICES="", SUITE_CACHE_DIR=str(work / "cache"))
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", WANDB_MODE="disabled")
        env.update(HF_DATASETS_OFFLINE="1")
        args = [str(Path(__file__).resolve()), str(out), *map(_arg, pairs)]
        cmd = [sys.executable, "-c", BOOT, *args]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SuiteError(f"the tiny behaviour runs failed (exit {done.returncode}): {last}")
        results = json.loads(out.read_text())
    return {p: _fingerprint(*_parts(p)[:2], results[_arg(p)], _parts(p)[2]) for p in pairs}


def fingerprint_at(sha: str, pairs: Iterable[Pair], repo: Path = ROOT) -> dict[Pair, dict]:
    """Fingerprints of ``pairs`` as the package of commit ``sha`` of git repository ``repo`` decides them."""
    from suite.errors import ConfigError

    archive = subprocess.run(["git", "-C", str(repo), "archive", sha, "suite"], capture_output=True)
    if archive.returncode != 0:
        raise ConfigError(f"cannot read suite/ at commit {sha}: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="suite-at-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        return compute(pairs, Path(tmp))


# Caches ------------------------------------------------------------------------------------------------------


def local_cache() -> Path:
    return Path(os.environ.get("SUITE_CACHE_DIR", "~/.cache/suite")).expanduser() / "behaviour.json"


def _key(family: str, method: str, source: str | None, var: str = "") -> str:
    return f"{family}/{method}/{source}/{RECIPE}" + (f"/{var}" if var else "")


def _read(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())["fingerprints"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _add(path: Path, fingerprints: Iterable[dict], replace: bool = False) -> None:
    """Add fingerprints to a JSON file atomically (one that says ``error`` is a failed run, never kept);
    ``replace``: they become the file's only entries."""
    from suite.files import write_text

    new = {_key(fp["family"], fp["method"], fp["source"], fp.get("variant", "")): fp for fp in fingerprints}
    new = {k: fp for k, fp in new.items() if fp["status"] != "error" and fp["source"]}
    if new:
        old = {} if replace else _read(path)
        text = json.dumps({"fingerprints": {**old, **new}}, indent=1, sort_keys=True)
        write_text(path, text + "\n", "behaviour fingerprints")


def current(pairs: Iterable[Pair], published: Path = PUBLISHED) -> dict[Pair, dict]:
    """The fingerprint of each pair under the code as it is now: by (family, method, source version, recipe) in
    the committed file ``published`` (relative: to the repository root), else in the local cache
    ($SUITE_CACHE_DIR/behaviour.json), else computed (all misses in one subprocess) and added to the cache."""
    pairs = list(dict.fromkeys(pairs))
    known = {**_read(local_cache()), **_read(ROOT / published)}
    out = {p: known.get(_key(*p[:2], source_version(*p[:2]), _parts(p)[2])) for p in pairs}
    missing = [p for p, fp in out.items() if fp is None]
    if missing:
        out.update(fresh := compute(missing))
        _add(local_cache(), fresh.values())
    return out


def publish(pairs: Iterable[Pair], published: Path = PUBLISHED, replace: bool = False) -> dict[Pair, dict]:
    """Add the current fingerprints of ``pairs`` to the committed file (computing those not known yet);
    ``replace``: they become its only entries (the fingerprints of older code are dropped)."""
    fps = current(pairs, published)
    _add(ROOT / published, fps.values(), replace)
    return fps


def of_record(record) -> dict:
    """The fingerprint of the code that made ``record`` (its commit's ``suite/``; the current code when that is
    the same tree), for the record's own random settings (``variant``)."""
    key = (record.family, record.method, variant(record.config))
    sha = record.provenance.get("git_sha")
    same_tree = (
        sha
        and subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", sha, "--", "suite"]).returncode == 0
    )
    return current([key])[key] if same_tree else _at(sha, key)


@functools.lru_cache(maxsize=256)
def _at(sha: str, key: Pair) -> dict:
    """One fingerprint of commit ``sha`` (publishing a sweep's runs asks for the same one many times)."""
    return fingerprint_at(sha, [key])[key]


# Comparing ---------------------------------------------------------------------------------------------------


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))


def difference(a: dict, b: dict) -> str | None:
    """What differs from fingerprint ``a`` to ``b`` in a few words; None: the same behaviour."""
    if a.get("recipe") != b.get("recipe"):
        return f"fingerprints of different tiny runs (recipe {a.get('recipe')} vs {b.get('recipe')})"
    if a["status"] != b["status"]:
        return f"status {a['status']} -> {b['status']}"
    va, vb = a.get("values", {}), b.get("values", {})
    if set(va) != set(vb):
        keys = [f"-{k}" for k in sorted(set(va) - set(vb))] + [f"+{k}" for k in sorted(set(vb) - set(va))]
        return f"values {', '.join(keys[:4])}" + (" ..." if len(keys) > 4 else "")
    changed = [k for k in va if not _close(va[k], vb[k])]
    if not changed:
        return None
    # the validation metric first (every choice is made on it), then the test metric, then the rest
    k = min(changed, key=lambda k: (not k.startswith("final.val"), not k.startswith("final."), k))
    more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
    return f"{k.removeprefix('final.')} {va[k]:.6g} -> {vb[k]:.6g}{more}"


def same(a: dict, b: dict) -> bool:
    """Whether two fingerprints say the same behaviour: the same status and values within RTOL."""
    return difference(a, b) is None


def stale_reason(record_fingerprint: dict | None, current_fingerprint: dict) -> str | None:
    """None when a record's fingerprint is the same as the current one; else what changed, in one short line."""
    pair = f"{current_fingerprint['family']}/{current_fingerprint['method']}"
    if current_fingerprint.get("variant"):
        pair += f" ({current_fingerprint['variant']})"
    if record_fingerprint is None:
        return f"no behaviour fingerprint for the record of {pair}"
    diff = difference(record_fingerprint, current_fingerprint)
    return None if diff is None else f"behaviour of {pair} changed: {diff}"


if __name__ == "__main__":
    _main(*sys.argv[2:])
