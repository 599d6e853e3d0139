"""Sweeps that use every device, and the training precision: each sweep worker on its own GPU (CUDA faked
here), the device in each run's record, ``train.precision`` validated, applied, shown in tables and part of a
run's identity only where it is not the default (the run-ids of before stay)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch
from sweep_fixtures import one_thread, write_corpus, write_preset, write_spec

from suite.cli import main
from suite.config import RunConfig, load_run
from suite.errors import ConfigError
from suite.provenance import device_info
from suite.publish import _what
from suite.record import Record
from suite.report import runs_frame, summary
from suite.sweep import devices, runner
from suite.train import train


def fake_cuda(monkeypatch, count: int) -> None:
    """A machine with ``count`` GPUs, as far as the device assignment can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


# --- identity ------------------------------------------------------------------------------------------------

#: run_key (the run-id without the code version) of fixed configurations, computed before precision was a
#: training setting: checkpoints are filed under it and published records are matched by the same identity.
KEYS_BEFORE_PRECISION = {
    ("lm", "dense", None): "2d5c889379d2",
    ("lm", "kp", 4.0): "34326fce88bd",
    ("translation", "dense", None): "eedcb8dd33d5",
    ("speech", "dense", None): "c03ff71a8753",
}
DATASETS = {"lm": "ptb", "translation": "multi30k", "speech": "fsdd"}


def fixed_config(family: str, method: str, factor: float | None, **train) -> RunConfig:
    return RunConfig(
        task=f"t-{family}",
        dataset=DATASETS[family],
        model={},
        train={"epochs": 2, **train},
        method=method,
        compress={} if factor is None else {"factor": factor},
        seed=3,
        family=family,
    )


@pytest.mark.parametrize("key", sorted(KEYS_BEFORE_PRECISION, key=str))
def test_default_precision_keeps_the_run_ids_of_before(key):
    cfg = fixed_config(*key)
    assert cfg.train.precision == "32"
    assert cfg.run_key == KEYS_BEFORE_PRECISION[key]
    assert "precision" not in cfg.identity()["train"]
    assert cfg.to_dict()["train"]["precision"] == "32"  # the record still says what it trained in
    assert fixed_config(*key, precision=32).run_id == cfg.run_id  # `--set precision=32` reads as a number


def test_another_precision_is_another_run():
    fp32 = fixed_config("lm", "kp", 4.0)
    bf16 = fixed_config("lm", "kp", 4.0, precision="bf16-mixed")
    assert bf16.identity()["train"]["precision"] == "bf16-mixed"
    assert bf16.run_id != fp32.run_id and bf16.run_key != fp32.run_key
    identity = dict(
        bf16.identity(), train={k: v for k, v in bf16.identity()["train"].items() if k != "precision"}
    )
    assert identity == fp32.identity()  # nothing else differs


@pytest.mark.parametrize("value", ["fp8", "16", "bf16", 16, True, None])
def test_precision_is_validated(value):
    with pytest.raises(ConfigError, match="train.precision must be one of 32, bf16-mixed, 16-mixed"):
        fixed_config("lm", "dense", None, precision=value)


def test_a_bad_precision_is_one_line_exit_2(tiny_preset, capsys):
    assert main(["train", str(tiny_preset), "--set", "precision=fp8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bf16-mixed" in err


def test_16_mixed_is_refused_without_cuda_before_anything_is_written(tiny_preset, results, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_run(tiny_preset, "dense", sets={"results_dir": str(results), "precision": "16-mixed"})
    with pytest.raises(ConfigError, match="16-mixed needs a CUDA device"):
        train(cfg, progress_bar=False)
    assert not results.exists()


def test_bf16_mixed_trains_with_the_same_accounting_and_tables_keep_it_apart(tiny_preset, results):
    """Mixed precision computes in bf16 and keeps fp32 weights: what is stored, and so the accounting, is the
    same; the tables show the precision and never put the two in one row."""
    recs = {}
    for precision in ("32", "bf16-mixed"):
        cfg = load_run(tiny_preset, "kp", 2.0, sets={"results_dir": str(results), "precision": precision})
        with one_thread():
            recs[precision] = train(cfg, progress_bar=False)
    fp32, bf16 = recs["32"], recs["bf16-mixed"]
    assert fp32.status == bf16.status == "ok" and fp32.run_id != bf16.run_id
    assert bf16.config["train"]["precision"] == "bf16-mixed"
    assert bf16.accounting == fp32.accounting
    assert bf16.final != fp32.final  # it did train in another precision
    assert fp32.provenance["device"] == bf16.provenance["device"] == "cpu"
    frame = runs_frame([fp32, bf16]).set_index("precision")
    assert frame.loc["bf16-mixed", "budget"] == "2ep/bf16-mixed" and frame.loc["32", "budget"] == "2ep"
    assert frame.loc["bf16-mixed", "setup_id"] != frame.loc["32", "setup_id"]
    assert sorted(summary(runs_frame([fp32, bf16]))["precision"]) == ["32", "bf16-mixed"]


def test_a_record_of_before_precision_compares_with_fp32_runs():
    """A record without train.precision (made before it was a setting) is an fp32 run: the same configuration
    in tables, and a published one is found for an fp32 config."""
    config = {"task": "t", "family": "lm", "dataset": "ptb", "model": {}, "method": "dense", "compress": {}}
    old = Record("a" * 12, "t", "dense", 0, "ok", {**config, "train": {"epochs": 2}}, final={"val_ppl": 1.0})
    new = Record("b" * 12, "t", "dense", 1, "ok", {**config, "train": {"epochs": 2, "precision": "32"}})
    frame = runs_frame([old, new])
    assert list(frame["precision"]) == ["32", "32"]
    assert frame["config_id"].nunique() == 1 and frame["setup_id"].nunique() == 1
    assert _what(old.config) == _what(new.config)
    bf16 = {**new.config, "train": {"epochs": 2, "precision": "bf16-mixed"}}
    assert _what(bf16) != _what(old.config)


# --- devices -------------------------------------------------------------------------------------------------


def test_workers_get_their_own_gpu_round_robin(monkeypatch):
    fake_cuda(monkeypatch, 4)
    assert devices.assign(3) == ["0", "1", "2"]
    assert devices.assign(6) == ["0", "1", "2", "3", "0", "1"]
    assert devices.assign(3, devices.parse("1,3")) == ["1", "3", "1"]
    assert devices.assign(2, devices.parse("cpu")) == ["", ""]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # a job given GPUs 4-7 of a machine
    assert devices.assign(2, [1, 2]) == ["5", "6"]
    assert [devices.describe(g) for g in ("5", "")] == ["cuda:5", "cpu"]


def test_without_cuda_workers_run_on_the_cpu(monkeypatch):
    fake_cuda(monkeypatch, 0)
    assert devices.assign(3) == [None, None, None]  # the environment as it is
    with pytest.raises(ConfigError, match="no CUDA device is visible here"):
        devices.assign(2, [0])


@pytest.mark.parametrize(
    "text, match",
    [("a,b", "comma-separated CUDA device indices"), ("-1", ">= 0"), ("", ">= 0"), ("0,0", "twice")],
)
def test_bad_devices_are_refused(text, match):
    with pytest.raises(ConfigError, match=match):
        devices.parse(text)


def test_a_device_not_here_is_refused(monkeypatch):
    fake_cuda(monkeypatch, 2)
    with pytest.raises(ConfigError, match=r"device 5, but this machine shows 2 \(cuda:0, cuda:1\)"):
        devices.assign(2, [0, 5])


def test_the_record_names_the_gpu_in_the_machines_numbering(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Fake GPU")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # a worker that sees only GPU 3, as its cuda:0
    assert device_info(torch.device("cuda", 0)) == {"device": "cuda:3", "device_name": "Fake GPU"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device_info(torch.device("cuda", 1))["device"] == "cuda:1"
    assert device_info(torch.device("cpu"))["device"] == "cpu"


class FakeWorker:
    """Stands in for a worker process: remembers how it was started, exits at once."""

    started: list[tuple[list[str], dict]] = []

    def __init__(self, argv, env=None, **kw) -> None:
        FakeWorker.started.append((list(argv), dict(env or os.environ)))

    def wait(self) -> int:
        return 0


@pytest.fixture
def sweep_spec(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.subprocess, "Popen", FakeWorker)
    FakeWorker.started = []
    return write_spec(tmp_path, write_preset(tmp_path, write_corpus(tmp_path / "corpus")), n_trials=2)


@pytest.mark.parametrize(
    "args, gpus",
    [
        (["--workers", "3"], ["0", "1", "2"]),
        (["--workers", "3", "--devices", "1,3"], ["1", "3", "1"]),
        (["--devices", "0,2"], ["0", "2"]),  # one worker per device named
        (["--devices", "2"], ["2"]),  # one worker, still on its own device
        (["--workers", "2", "--devices", "cpu"], ["", ""]),
    ],
)
def test_sweep_starts_each_worker_on_its_device(sweep_spec, monkeypatch, capsys, args, gpus):
    fake_cuda(monkeypatch, 4)
    assert main(["sweep", str(sweep_spec), *args]) == 0
    started = FakeWorker.started
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == gpus
    for argv, _ in started:
        assert argv[:3] == [sys.executable, "-m", "suite.cli"] and argv[-1] == "--as-worker"
        assert "--devices" not in argv and str(sweep_spec) in argv
    shown = ", ".join(f"worker {i + 1} on {devices.describe(g)}" for i, g in enumerate(gpus))
    assert f"sweep: {shown}" in capsys.readouterr().err


def test_sweep_without_cuda_leaves_the_workers_environment_alone(sweep_spec, monkeypatch):
    fake_cuda(monkeypatch, 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["sweep", str(sweep_spec), "--workers", "2"]) == 0
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in FakeWorker.started] == ["", ""]


@pytest.mark.parametrize(
    "cuda, args, says",
    [
        (2, ["--workers", "2", "--devices", "0,2"], "this machine shows 2 (cuda:0, cuda:1)"),
        (0, ["--devices", "0"], "no CUDA device is visible here"),
        (2, ["--devices", "gpu1"], "--devices takes comma-separated"),
    ],
)
def test_bad_devices_on_the_command_line_are_one_line_exit_2_and_start_nothing(
    sweep_spec, monkeypatch, capsys, cuda, args, says
):
    fake_cuda(monkeypatch, cuda)
    assert main(["sweep", str(sweep_spec), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err
    assert FakeWorker.started == []
    assert not (sweep_spec.parent / "results" / "sweeps").exists()


def test_fields_of_the_training_settings_stay_rebuildable():
    """A record's train settings rebuild the same settings (precision included)."""
    cfg = fixed_config("speech", "dense", None, precision="bf16-mixed")
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict(), default=str)))
    assert dataclasses.asdict(again.train) == dataclasses.asdict(cfg.train)
    assert again.run_id == cfg.run_id
