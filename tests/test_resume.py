"""A run killed after epoch k and given the same command again resumes from its last epoch and ends with exactly
the numbers of a run never interrupted: the lr schedule, the annealing counter, co-matrix dropout's random state
and the data order all come back from the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs train() in a fresh process; with a kill epoch, the process kills itself (SIGKILL: no handler, no cleanup)
# when that epoch starts, that is right after the previous epoch's checkpoint.
SCRIPT = """
import os, signal, sys
import lightning.pytorch as pl
from suite.config import load_run
from suite.train import train

preset, results, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Kill(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

sets = {"results_dir": results, "wandb": "disabled", "cmr": 0.5, "prune_every": 2, "anneal_end": 0.9,
        "train.epochs": 4}
cfg = load_run(preset, method="doped_kp", factor=4.0, sets=sets)
train(cfg, callbacks=[Kill()] if kill_at >= 0 else [], progress_bar=False)
"""


def _train(preset: Path, results: Path, kill_at: int = -1) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(preset), str(results), str(kill_at)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if kill_at < 0:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode


def _record(results: Path) -> dict:
    (path,) = results.glob("runs/**/record.json")
    return json.loads(path.read_text())


def _numbers(rec: dict) -> list[dict]:
    """Per-epoch rows without the timings (which differ between any two runs)."""
    skip = ("seconds", "_per_s")
    return [{k: v for k, v in row.items() if not k.endswith(skip)} for row in rec["epochs"]]


@pytest.mark.parametrize("kill_at", [2])
def test_a_killed_run_resumes_from_its_last_epoch_bit_identically(tmp_path, tiny_preset, kill_at):
    preset = tiny_preset
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _train(preset, whole)
    assert _train(preset, broken, kill_at) == -9
    assert not list(broken.glob("runs/**/record.json"))  # killed: no record, only the checkpoint
    (ckpt,) = broken.glob("checkpoints/*/last.ckpt")
    _train(preset, broken)  # the same command again
    a, b = _record(whole), _record(broken)
    assert a["run_id"] == b["run_id"]
    assert b["final"] == a["final"]  # bit-identical, not approximately equal
    assert _numbers(b) == _numbers(a)
    assert b["accounting"] == a["accounting"]
    assert [r["epoch"] for r in b["resumed"]] == [kill_at] and a["resumed"] == []
    assert not list((broken / "checkpoints").iterdir())  # finished: nothing left to resume
    rows = (next(broken.glob("runs/**/csv/metrics.csv"))).read_text().splitlines()
    assert len(rows) > 1  # the CSV log of the whole run comes along


def _claim(results: Path, **changes) -> None:
    (owner,) = results.glob("checkpoints/*/run.json")
    owner.write_text(json.dumps({**json.loads(owner.read_text()), **changes}))


HEAD = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)


def test_a_checkpoint_of_other_code_resumes_only_where_that_code_behaves_the_same(tmp_path, tiny_preset):
    """Between two sessions the code changes: a checkpoint made by a clean commit whose code behaves as the current
    code does for this run is resumed; one of unknown (uncommitted) code is dropped and the run starts over."""
    whole, same, unknown = tmp_path / "whole", tmp_path / "same", tmp_path / "unknown"
    _train(tiny_preset, whole)
    for results in (same, unknown):
        assert _train(tiny_preset, results, kill_at=2) == -9
    sha = HEAD.stdout.strip()
    if not sha:
        pytest.skip("needs the suite's git checkout")
    _claim(same, code_version="older", git_sha=sha, git_dirty=False)  # this very code, under another version
    _claim(unknown, code_version="older", git_sha=sha, git_dirty=True)
    _train(tiny_preset, same)
    _train(tiny_preset, unknown)
    a, b, c = (_record(r) for r in (whole, same, unknown))
    assert b["final"] == a["final"] and [r["epoch"] for r in b["resumed"]] == [2]
    assert c["final"] == a["final"] and c["resumed"] == []  # started over, and got there all the same
