"""On a CUDA device (skipped without one; `make test` leaves them out, `pytest -m gpu` runs them): every task
family trains on the GPU and its record names the device; mixed precision leaves the accounting unchanged;
the inference benchmark runs its deployed steps on the GPU; a sweep's workers each record their own GPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import torch
from sweep_fixtures import suite, write_corpus, write_preset, write_spec

from suite.behaviour import PRESETS, WRITERS
from suite.bench import bench_infer, infer_methods
from suite.cli import main
from suite.config import load_run
from suite.record import Record
from suite.sweep import devices, load_spec
from suite.sweep.storage import open_storage
from suite.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = "cuda"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Tiny data of every family in the real datasets' layouts, and a preset of each (the behaviour runs')."""
    root = tmp_path_factory.mktemp("gpu")
    presets = {}
    for family, write in WRITERS.items():
        write(root / "data")
        presets[family] = root / f"tiny-{family}.yaml"
        presets[family].write_text(json.dumps(PRESETS[family]))  # JSON is YAML
    return root / "data", presets


def run(tiny, results: Path, family: str, method: str, factor: float | None, **sets) -> Record:
    data, presets = tiny
    where = {"data_dir": str(data), "results_dir": str(results), "wandb": "disabled"}
    return train(load_run(presets[family], method, factor, sets={**where, **sets}), progress_bar=False)


@pytest.mark.parametrize("method, factor", [("dense", None), ("doped_kp", 4.0)])
@pytest.mark.parametrize("family", sorted(WRITERS))
def test_each_family_trains_on_the_gpu_and_its_record_says_so(tiny, results, family, method, factor):
    rec = run(tiny, results, family, method, factor)
    assert rec.status == "ok", rec.reason
    assert all(math.isfinite(v) for v in rec.final.values())
    assert rec.provenance["device"].startswith("cuda:") and rec.provenance["device_name"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("family, method", [("lm", "doped_kp"), ("lm", "lmf"), ("speech", "kp")])
def test_mixed_precision_leaves_the_accounting_unchanged(tiny, results, family, method, precision):
    fp32 = run(tiny, results, family, method, 4.0)
    mixed = run(tiny, results, family, method, 4.0, precision=precision)
    assert fp32.status == mixed.status == "ok", mixed.reason
    assert mixed.run_id != fp32.run_id and mixed.config["train"]["precision"] == precision
    assert mixed.accounting == fp32.accounting
    assert all(math.isfinite(v) for v in mixed.final.values())


def test_bench_infer_runs_the_deployed_steps_on_the_gpu(tmp_path, capsys):
    shape = {"hidden": 32, "input_size": 32, "reps": 3, "inner": 2, "warmup": 1, "echo": False}
    methods = infer_methods()
    gpu = bench_infer(methods, [4.0], out=tmp_path / "gpu.json", device=DEVICE, **shape)
    cpu = bench_infer(methods, [4.0], out=None, **shape)
    assert gpu["device"] == DEVICE and json.loads((tmp_path / "gpu.json").read_text())["device"] == DEVICE
    assert [r["method"] for r in gpu["rows"]] == ["dense", *methods]
    for g, c in zip(gpu["rows"], cpu["rows"]):
        assert g["cf"] == c["cf"]  # the same compressed models, moved
        assert g.get("max_abs_err", 0) < 1e-4 and g["median_us"] > 0
    args = ["bench", "infer", "--device", DEVICE, "--hidden", "32", "--input", "32", "--reps", "3"]
    assert main([*args, "--factors", "4", "--methods", "kp", "--results", str(tmp_path)]) == 0
    assert DEVICE in capsys.readouterr().out


def test_sweep_workers_each_record_their_own_gpu(tmp_path):
    preset = write_preset(tmp_path, write_corpus(tmp_path / "corpus"), epochs=4)
    spec = write_spec(tmp_path, preset, n_trials=4)
    gpus = devices.visible()[:2]
    out = suite(tmp_path, "sweep", str(spec), "--workers", "2", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "worker 1 on cuda:" in out.stderr
    journal = tmp_path / "results" / "sweeps" / "tiny-sweep" / "journal.log"
    study = optuna.load_study(
        study_name=load_spec(spec).study_name, storage=open_storage(str(journal), create=False)
    )
    device_of: dict[int, set[str]] = {}
    for t in study.get_trials(deepcopy=False):
        for run_id in t.user_attrs.get("run_ids", []):
            (path,) = tmp_path.glob(f"results/runs/*/*/{run_id}/record.json")
            device = Record.load(path).provenance["device"]
            assert device in {f"cuda:{g}" for g in gpus}
            device_of.setdefault(t.user_attrs["worker"]["pid"], set()).add(device)
    assert device_of and all(len(d) == 1 for d in device_of.values())  # a worker stays on its GPU
    if len(gpus) > 1 and len(device_of) == 2:
        assert len(set.union(*device_of.values())) == 2  # and two workers are on two GPUs
