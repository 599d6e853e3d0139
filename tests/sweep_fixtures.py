"""A tiny corpus, task preset and sweep specs, written by the tests (a few KB; runs take about a second)."""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from suite.data.audio import one_thread  # noqa: F401  (tiny models run fastest on one thread)

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(folder: Path, vocab: int = 40, lines: tuple[int, int, int] = (120, 30, 30)) -> Path:
    """train/valid/test.txt of random sentences over ``vocab`` words."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(vocab)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), lines):
        text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(n))
        (folder / f"{split}.txt").write_text(text + "\n")
    return folder


def write_preset(folder: Path, corpus: Path, epochs: int = 2, **train) -> Path:
    """A one-layer LSTM with hidden size 8 on the tiny corpus; the smoke profile is the same."""
    preset = {
        "name": "tiny",
        "dataset": {"path": str(corpus)},
        "model": {"hidden": 8, "layers": 1, "dropout": 0.0, "init": 0.1},
        "train": {
            "epochs": epochs,
            "batch_size": 8,
            "bptt": 8,
            "lr": 1.0,
            "lr_decay": 2.0,
            "decay_after": 1,
            "clip": 5.0,
            "eval_batch_size": 8,
            **train,
        },
        "profiles": {"smoke": {}},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def write_spec(folder: Path, preset: Path, name: str = "tiny-sweep", **fields) -> Path:
    spec = {
        "task": str(preset),
        "methods": ["small_dense"],
        "space": {"factor": {"low": 1.5, "high": 6.0}},
        "n_trials": 4,
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "set": {"results_dir": str(folder / "results"), "wandb": "disabled"},
        **fields,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def env(tmp: Path) -> dict[str, str]:
    """The environment of a worker process: this checkout first, caches in ``tmp``, no W&B."""
    e = dict(os.environ)
    e.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        SUITE_CACHE_DIR=str(tmp / "cache"),
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
    )
    return e


def suite(tmp: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """Run the ``suite`` command line in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "suite.cli", *args],
        cwd=tmp,
        env=env(tmp),
        capture_output=True,
        text=True,
        **kw,
    )


class Unavailable(Exception):
    """A service a test needs cannot be started here."""


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def start_postgres() -> tuple[str, Callable[[], None]]:
    """A throwaway PostgreSQL server on 127.0.0.1 (SUITE_TEST_PG_URL, if set, is used instead).
    Returns its URL and a function that stops it and removes its files."""
    if os.environ.get("SUITE_TEST_PG_URL"):
        return os.environ["SUITE_TEST_PG_URL"], lambda: None
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="suite-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no postgres user to run the server") from None
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        out = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise Unavailable(f"{Path(cmd[0]).name} failed: {(out.stderr or out.stdout).strip()[-300:]}")

    run(initdb, "-D", str(data), "-A", "trust", "-U", "suite", "-E", "UTF8", "--no-sync")
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "start")

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

    return f"postgresql+psycopg2://suite@127.0.0.1:{port}/postgres", stop
