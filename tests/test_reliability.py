"""Bad input, interrupts and crashes: what the user can fix is one `error:` line, exit 2 and nothing written;
a sweep never loses or repeats a grid point; Ctrl-C exits 130 without leftovers; a replaced run is never lost."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sweep_fixtures import env, write_preset, write_spec

from suite import files
from suite.cli import main
from suite.config import load_run
from suite.errors import DataError
from suite.record import Record
from suite.store import find, load_records, run_dir, run_lock
from suite.sweep import load_spec
from suite.sweep.storage import OWNER, REASON, open_storage
from suite.train import train
from suite.version import code_version


def run(argv: list[str]) -> tuple[int, str]:
    """The command's exit code (argparse's refusals exit rather than return) and what it printed on stderr."""
    try:
        return main(argv), ""
    except SystemExit as e:
        return int(e.code), ""


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with a digest of its content."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def finished_record(results: Path, run_id: str = "0123456789ab", ppl: float = 50.0) -> Record:
    rec = Record(
        run_id=run_id,
        task="tiny",
        method="dense",
        seed=0,
        status="ok",
        config={"task": "tiny", "family": "lm", "train": {"epochs": 1}, "compress": {"factor": 1.0}},
        code_version=code_version("lm", "dense"),
        final={"val_ppl": ppl + 1, "test_ppl": ppl},
        accounting={"cf": 1.0, "cf_values": 1.0, "model_cf": 1.0},
    )
    rec.save(run_dir(results, "tiny", "dense", run_id) / "record.json")
    return rec


def preset_with(folder: Path, name: str, dataset) -> str:
    spec = yaml.safe_load((folder / "tiny.yaml").read_text())
    spec["dataset"] = dataset
    (folder / name).write_text(yaml.safe_dump(spec))
    return name


def emptied(folder: Path, split: str, text: str = "") -> str:
    """A preset on a copy of the tiny corpus whose ``split`` holds ``text`` only."""
    corpus = folder / f"no-{split}"
    corpus.mkdir()
    for name in ("train", "valid", "test"):
        (corpus / f"{name}.txt").write_bytes((folder / "corpus" / f"{name}.txt").read_bytes())
    (corpus / f"{split}.txt").write_text(text)
    return preset_with(folder, f"no-{split}.yaml", {"path": str(corpus)})


def corrupt_record_of_this_run(folder: Path) -> list[str]:
    cfg = load_run("tiny.yaml", "dense", sets={"results_dir": "results"})
    path = run_dir("results", cfg.task, "dense", cfg.run_id) / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"run_id": "' + cfg.run_id + '", "status": "o')  # cut short by a full disk
    return TRAIN


def tables_holding(folder: Path, summary: bytes) -> str:
    (folder / "tables").mkdir()
    (folder / "tables" / "summary.csv").write_bytes(summary)
    return "tables"


def sweep_of(folder: Path, preset: str, **fields) -> str:
    fields = {"n_trials": 1, "set": {"results_dir": "results", "wandb": "disabled"}, **fields}
    return write_spec(folder, folder / preset, name="s", **fields).name


def params(folder: Path, **values) -> str:
    (folder / "p.yaml").write_text(yaml.safe_dump({"profile": "smoke", **values}))
    return "p.yaml"


TRAIN = ["train", "tiny.yaml"]

#: name -> (folder -> argv, a fragment of the error line). Each must exit 2 with one `error:` line and leave
#: every file under the working folder as it was.
BAD = {
    "train: unknown method": (lambda f: [*TRAIN, "--method", "nope"], "unknown method 'nope'"),
    "train: CF below 1": (lambda f: [*TRAIN, "--method", "svd", "--factor", "0.5"], ">= 1"),
    "train: CF not finite": (lambda f: [*TRAIN, "--method", "kp", "--factor", "inf"], "finite"),
    "train: negative seed": (lambda f: [*TRAIN, "--seed", "-1"], "seed must be"),
    "train: seed too large": (lambda f: [*TRAIN, "--seed", str(2**32)], "seed must be"),
    "train: no threads": (lambda f: [*TRAIN, "--threads", "0"], "threads must be an integer >= 1"),
    "train: negative threads": (lambda f: [*TRAIN, "--threads", "-3"], "threads must be an integer >= 1"),
    "train: model setting not a number": (lambda f: [*TRAIN, "--set", "model.init=abc"], "model.init"),
    "train: vocabulary cap not a number": (lambda f: [*TRAIN, "--set", "max_vocab=abc"], "max_vocab"),
    "train: vocabulary cap zero": (lambda f: [*TRAIN, "--set", "max_vocab=0"], "max_vocab"),
    "train: unknown model setting": (lambda f: [*TRAIN, "--set", "model.colour=1"], "colour"),
    "train: model vocabulary set by hand": (lambda f: [*TRAIN, "--set", "model.vocab=5"], "model.vocab"),
    "train: negative decay_after": (lambda f: [*TRAIN, "--set", "decay_after=-1"], "decay_after"),
    "train: checkpoint not a boolean": (lambda f: [*TRAIN, "--set", "checkpoint=maybe"], "checkpoint"),
    "train: seeds not a list": (lambda f: [*TRAIN, "--set", "seeds=abc"], "seeds"),
    "train: results folder is a file": (lambda f: [*TRAIN, "--set", "results_dir=afile"], "afile"),
    "train: results folder under a file": (lambda f: [*TRAIN, "--set", "results_dir=afile/r"], "afile"),
    "train: corpus folder missing": (
        lambda f: ["train", preset_with(f, "gone.yaml", {"path": str(f / "gone")})],
        "must hold train.txt",
    ),
    "train: unknown dataset key": (
        lambda f: ["train", preset_with(f, "odd.yaml", {"path": str(f / "corpus"), "colour": 1})],
        "dataset has no setting colour",
    ),
    "train: dataset vocabulary cap zero": (
        lambda f: ["train", preset_with(f, "cap.yaml", {"path": str(f / "corpus"), "max_vocab": 0})],
        "max_vocab",
    ),
    "train: empty train split": (lambda f: ["train", emptied(f, "train")], "no-train/train.txt is empty"),
    "train: blank valid split": (
        lambda f: ["train", emptied(f, "valid", "\n\n")],
        "no-valid/valid.txt is empty: the valid split has no text",
    ),
    "train: empty test split": (lambda f: ["train", emptied(f, "test")], "no-test/test.txt is empty"),
    "train: SUITE_DATA_DIR names no folder": (
        lambda f: ["train", preset_with(f, "ptb.yaml", "ptb")],
        "SUITE_DATA_DIR",
    ),
    "train: batch larger than the data": (
        lambda f: [*TRAIN, "--set", "batch_size=100000"],
        "too short for batch size",
    ),
    "train: its record is truncated": (
        corrupt_record_of_this_run,
        "record.json is not valid JSON",
    ),
    "report: no results folder": (lambda f: ["report", "--results", "nowhere"], "does not exist"),
    "report: results folder is a file": (lambda f: ["report", "--results", "afile"], "is a file"),
    "report: --out is a file": (lambda f: ["report", "--out", "afile"], "afile"),
    "report: --out under a file": (lambda f: ["report", "--out", "afile/tables"], "afile"),
    "report: --metrics is a folder": (
        lambda f: ["report", "--out", "new", "--metrics", "results"],
        "is a folder",
    ),
    "figures: summary.csv is not text": (
        lambda f: ["figures", "--tables", tables_holding(f, b"\x00\xff\xfe\x9c" * 64)],
        "summary.csv",
    ),
    "figures: summary.csv of another shape": (
        lambda f: ["figures", "--tables", tables_holding(f, b"a,b\n1,2\n")],
        "summary.csv has no column",
    ),
    "figures: --out is a file": (
        lambda f: ["figures", "--tables", tables_holding(f, b"a\n"), "--out", "afile"],
        "afile",
    ),
    "prepare: --out under a file": (lambda f: ["prepare", "ptb", "--out", "afile/prepared"], "afile"),
    "prepare: unknown dataset": (lambda f: ["prepare", "nope", "--out", "prepared"], "unknown dataset"),
    "bench: no repetitions": (lambda f: ["bench", "infer", "--reps", "0"], "--reps"),
    "bench: no hidden units": (lambda f: ["bench", "infer", "--hidden", "0"], "--hidden"),
    "bench: CF below 1": (lambda f: ["bench", "infer", "--factors", "0.5"], "--factors"),
    "bench: no steps": (lambda f: ["bench", "train", "--steps", "-1"], "--steps"),
    "bench: unknown device": (
        lambda f: ["bench", "train", "--preset", "tiny.yaml", "--device", "abacus"],
        "device",
    ),
    "bench: no threads": (
        lambda f: ["bench", "train", "--preset", "tiny.yaml", "--threads", "0"],
        "threads must be an integer >= 1",
    ),
    "bench: unknown method": (
        lambda f: ["bench", "infer", "--methods", "nope", "--hidden", "8", "--input", "8"],
        "unknown method",
    ),
    "bench: results under a file": (lambda f: ["bench", "infer", "--results", "afile"], "afile"),
    "sweep: no workers": (lambda f: ["sweep", sweep_of(f, "tiny.yaml"), "--workers", "0"], "workers"),
    "sweep: negative workers": (lambda f: ["sweep", sweep_of(f, "tiny.yaml"), "--workers", "-2"], "workers"),
    "sweep: no threads": (
        lambda f: ["sweep", sweep_of(f, "tiny.yaml"), "--threads", "0"],
        "threads must be an integer >= 1",
    ),
    "sweep: storage under a file": (
        lambda f: ["sweep", sweep_of(f, "tiny.yaml"), "--storage", "afile/journal.log"],
        "afile",
    ),
    "sweep: results under a file": (
        lambda f: ["sweep", sweep_of(f, "tiny.yaml"), "--results", "afile/results"],
        "afile",
    ),
    "sweep: corpus folder missing": (
        lambda f: ["sweep", sweep_of(f, preset_with(f, "gone.yaml", {"path": str(f / "gone")}))],
        "must hold train.txt",
    ),
    "sweep: batch larger than the data": (
        lambda f: ["sweep", sweep_of(f, "tiny.yaml"), "--set", "batch_size=100000"],
        "too short for batch size",
    ),
    "sweep: params file missing": (
        lambda f: ["sweep", sweep_of(f, "tiny.yaml"), "--params", "nope.yaml"],
        "no such params file",
    ),
    "sweep: params workers not a number": (
        lambda f: ["sweep", sweep_of(f, "tiny.yaml"), "--params", params(f, workers=True)],
        "workers",
    ),
    "baselines: --out under a file": (
        lambda f: ["baselines", "tiny.yaml", "--out", "afile/baselines"],
        "afile",
    ),
    "baselines: params set not a mapping": (
        lambda f: [
            "baselines",
            "tiny.yaml",
            "--out",
            "baselines",
            "--params",
            params(f, profiles={"smoke": {"set": [1]}}),
        ],
        "profiles.smoke.set must be a mapping",
    ),
    "figures: params figures not a mapping": (
        lambda f: ["figures", "--tables", tables_holding(f, b"a\n"), "--params", params(f, figures=5)],
        "figures must be a mapping",
    ),
    "baselines: params threads zero": (
        lambda f: ["baselines", "tiny.yaml", "--out", "baselines", "--params", params(f, threads=0)],
        "threads",
    ),
}


@pytest.fixture
def work(tmp_path, corpus_dir, monkeypatch):
    """The working folder (the current one): the tiny corpus and preset, a finished run, a file named afile."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # --threads sets it for worker processes; restored afterwards
    monkeypatch.setenv("SUITE_DATA_DIR", str(tmp_path / "no-such-folder"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"{split}.txt").write_bytes((corpus_dir / f"{split}.txt").read_bytes())
    write_preset(tmp_path, corpus)  # tiny.yaml: hidden 8, batch 8
    finished_record(tmp_path / "results")
    (tmp_path / "afile").write_text("not a folder\n")
    return tmp_path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_exit_2_and_writes_nothing(work, capsys, case):
    make_argv, needle = BAD[case]
    argv = make_argv(work)
    before = snapshot(work)
    capsys.readouterr()
    code, _ = run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err
    assert snapshot(work) == before, "nothing may be written on bad input"


def test_report_says_what_it_left_out(work, capsys):
    runs = work / "results" / "runs" / "tiny" / "dense"
    (runs / "aaaaaaaaaaaa").mkdir()
    (runs / "aaaaaaaaaaaa" / "record.json").write_text('{"run_id": "aaaa')  # truncated
    (runs / "bbbbbbbbbbbb").mkdir()
    (runs / "bbbbbbbbbbbb" / "record.json").write_text("[1, 2, 3]\n")  # JSON, not a record
    (work / "results" / "sweeps" / "s").mkdir(parents=True)
    (work / "results" / "sweeps" / "s" / "s-paper.csv").write_bytes(b"\x00\xff" * 40)
    assert main(["report", "--results", "results", "--out", "tables"]) == 0
    captured = capsys.readouterr()
    notes = captured.err.strip().splitlines()
    assert len(notes) == 3 and all(n.startswith("note: ") for n in notes), notes
    for name in ("aaaaaaaaaaaa/record.json", "bbbbbbbbbbbb/record.json", "s-paper.csv"):
        assert sum(name in n for n in notes) == 1, (name, notes)
    assert "not valid JSON" in captured.err and "not a run record" in captured.err
    assert len((work / "tables" / "runs.csv").read_text().splitlines()) == 2  # the finished run is kept


def test_a_late_error_leaves_no_folder_behind(work, capsys, monkeypatch):
    """An error that only shows once the run is being built (here its data, as Lightning asks for batches)
    leaves neither a staging folder nor the empty folders made for it."""
    from suite.tasks.lm import LanguageModelData

    def too_short(self):
        raise DataError("the training split is too short for the batch size; lower batch_size")

    monkeypatch.setattr(LanguageModelData, "train_dataloader", too_short)
    before = snapshot(work)
    assert main([*TRAIN, "--set", "results_dir=fresh", "--set", "wandb=disabled"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "too short" in err[-1] and "Traceback" not in "".join(err)
    assert snapshot(work) == before


# --- sweeps ---------------------------------------------------------------------------------------------------


def study_of(spec: str) -> optuna.Study:
    s = load_spec(spec)
    where = str(Path(s.set["results_dir"]) / "sweeps" / s.name / "journal.log")
    return optuna.load_study(study_name=s.study_name, storage=open_storage(where, create=False))


def test_sweep_with_missing_data_creates_no_study_and_runs_once_the_data_is_there(work, capsys):
    spec = sweep_of(work, preset_with(work, "later.yaml", {"path": str(work / "later")}))
    assert main(["sweep", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "later" in err
    assert not (work / "results" / "sweeps").exists()
    (work / "corpus").rename(work / "later")
    assert main(["sweep", spec, "--threads", "1"]) == 0
    assert [t.state for t in study_of(spec).trials] == [TrialState.COMPLETE]


@pytest.mark.parametrize("fault", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_failed_trial_keeps_its_reason_and_is_retried_the_grid_complete_without_repeats(
    work, capsys, monkeypatch, fault
):
    import suite.sweep.runner as runner

    real = runner.train

    def flaky(cfg, **kw):
        if cfg.compress["factor"] == 3:
            raise fault
        return real(cfg, **kw)

    monkeypatch.setattr(runner, "train", flaky)
    spec = sweep_of(work, "tiny.yaml", sampler="grid", n_trials=None, space={"factor": [2, 3, 4]})
    code = main(["sweep", spec, "--threads", "1"])
    study = study_of(spec)
    failed = study.trials[1]
    assert failed.state == TrialState.FAIL and failed.params == {"factor": 3}
    if isinstance(fault, RuntimeError):
        assert code == 1 and failed.user_attrs[REASON] == "RuntimeError: boom"
        assert "rerun the command to retry" in capsys.readouterr().err
        assert len(study.trials) == 3  # no other point took the failed one's place
    else:
        assert code == 130 and failed.user_attrs[REASON] == "interrupted"
    capsys.readouterr()
    assert main(["sweep", spec, "--status"]) == 0
    text = capsys.readouterr().out
    assert "to retry: trial 1 {'factor': 3}" in text and "grid points without a result: {'factor': 3}" in text

    monkeypatch.setattr(runner, "train", real)  # the fault is gone: the same command finishes the grid
    assert main(["sweep", spec, "--threads", "1"]) == 0
    study = study_of(spec)
    complete = [t.params["factor"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == [2, 3, 4]  # every point once
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.state == TrialState.COMPLETE and REASON not in retry.user_attrs
    assert study.trials[1].user_attrs[REASON]  # the failure keeps its reason
    if not isinstance(fault, RuntimeError):  # interrupted: the resumed sweep finishes it before new points
        assert retry.number < next(t.number for t in study.trials if t.params == {"factor": 4})
    capsys.readouterr()
    assert main(["sweep", spec, "--status"]) == 0
    assert "3/3 trials done" in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-25],  # cut short inside its last line
        lambda data: b"\x00\xff\xfe\x9c" * 64,  # not text
        lambda data: data + b'{"op_code": 3, "trial_id": 9}\n',  # JSON, but no entry Optuna can replay
    ],
    ids=["truncated", "garbage", "bad-entry"],
)
def test_a_damaged_journal_is_one_error_line_exit_2_and_writes_nothing(work, capsys, damage):
    spec = sweep_of(work, "tiny.yaml")
    assert main(["sweep", spec, "--threads", "1"]) == 0
    journal = work / "results" / "sweeps" / "s" / "journal.log"
    journal.write_bytes(damage(journal.read_bytes()))
    before = snapshot(work)
    for argv in (["sweep", spec, "--status"], ["sweep", spec, "--threads", "1"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        assert f"study journal {Path('results/sweeps/s/journal.log')} is damaged" in err, err
        assert snapshot(work) == before


def test_status_names_a_dead_workers_trial(work, capsys):
    spec = sweep_of(work, "tiny.yaml")
    from suite.sweep import open_study
    from suite.sweep.runner import location

    s = load_spec(spec)
    study = open_study(s, location(s))
    trial = study.ask()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    trial.set_user_attr(OWNER, {"host": socket.gethostname(), "pid": int(gone.stdout), "started": 0.0})
    assert main(["sweep", spec, "--status"]) == 0
    text = capsys.readouterr().out
    assert "0 running" in text and "worker gone: trial 0" in text and "1 to retry" in text


def test_methods_all_says_which_methods_it_leaves_out_and_why(work, capsys):
    spec = sweep_of(work, "tiny.yaml", methods="all", space={"factor": [2]})
    with open(spec) as f:
        raw = yaml.safe_load(f)
    raw["set"]["init"] = "trained"
    Path(spec).write_text(yaml.safe_dump(raw))
    loaded = load_spec(spec)
    notes = [n for n in capsys.readouterr().err.splitlines() if "leaves out" in n]
    assert notes and all(n.startswith("note: ") for n in notes)
    left_out = [n.split("leaves out ")[1].split()[0] for n in notes]
    assert "small_dense" in left_out and not set(left_out) & set(loaded.methods)
    assert len(set(left_out)) == len(left_out)


# --- interrupts and partial writes ----------------------------------------------------------------------------


def test_ctrl_c_during_train_exits_130_and_leaves_no_staging(tmp_path, corpus_dir):
    preset = write_preset(tmp_path, corpus_dir, epochs=400)  # long enough to be interrupted while training
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "suite.cli", "train", str(preset), "--threads", "1"],
            cwd=tmp_path,
            env=env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=err,
            # A shell without job control starts background commands with Ctrl-C ignored, and the child would
            # inherit that: give it the terminal's default, as a user's Ctrl-C finds it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 120
        while "epoch 1/400" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 130, text[-2000:]
    assert "Traceback" not in text and text.strip().splitlines()[-1].startswith("interrupted"), text[-2000:]
    runs = tmp_path / "results" / "runs"
    assert not list(runs.rglob("record.json")) and not [p for p in runs.rglob("*") if p.name.startswith(".")]


def test_a_kill_between_moving_a_run_aside_and_into_place_keeps_the_finished_run(
    tiny_preset, results, monkeypatch
):
    cfg = load_run(tiny_preset, "dense", None, None, {"results_dir": str(results), "epochs": 1})
    first = train(cfg, progress_bar=False)
    final = run_dir(results, cfg.task, "dense", cfg.run_id)

    class Killed(BaseException):
        pass

    real = files._move_aside

    def killed_after(path):
        real(path)
        raise Killed  # the process dies here: the old run is aside, the new one not yet in place

    monkeypatch.setattr(files, "_move_aside", killed_after)
    with pytest.raises(Killed):
        train(cfg, force=True, progress_bar=False)
    assert not final.exists() and files.aside_folders(final)
    # Readers still find the finished run ...
    assert find(cfg).timings == first.timings
    assert [r.timings for r in load_records(results)] == [first.timings]
    # ... and the next process to take the run's lock puts it back before anything else.
    monkeypatch.setattr(files, "_move_aside", real)
    with run_lock(results, cfg.task, "dense", cfg.run_id):
        assert Record.load(final / "record.json").timings == first.timings
        assert not files.aside_folders(final)
    again = train(cfg, force=True, progress_bar=False)
    assert Record.load(final / "record.json").timings == again.timings != first.timings
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]  # no staging, aside or lock


def test_outputs_are_written_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "table.csv"
    files.write_text(target, "old\n")
    with pytest.raises(RuntimeError), files.atomic(target) as tmp:
        tmp.write_text("half of the ne")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old\n" and sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]


def test_figures_are_moved_into_place_only_once_all_are_drawn(tmp_path, monkeypatch):
    import suite.figures as figures
    from suite.errors import SuiteError

    out = tmp_path / "figures"
    figures.make_figures(tmp_path / "no-tables", out)  # every figure skipped: only the index
    before = snapshot(tmp_path)

    def mixed(*a, **k):
        raise SuiteError("F5 would mix training budgets")

    monkeypatch.setattr(figures, "f5_pareto", mixed)
    with pytest.raises(SuiteError):
        figures.make_figures(tmp_path / "no-tables", out)
    assert snapshot(tmp_path) == before  # the old figures as they were, no staging folder left


def test_a_method_no_run_of_which_can_start_gets_a_note_and_the_others_run(work, capsys):
    from suite.sweep.preflight import preflight
    from suite.sweep.runner import location

    spec = load_spec(
        sweep_of(work, "tiny.yaml", methods=["small_dense", "groupreduce"], space={"factor": [2]})
    )
    capsys.readouterr()
    before = snapshot(work)
    preflight(spec, location(spec))  # groupreduce applies to vocabulary matrices only; small_dense can start
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: ") and "no run of groupreduce can start" in notes[0]
    assert snapshot(work) == before


DROPPED_CTRL_C = """
import os, signal, sys, weakref
import lightning.pytorch as pl
from suite.cli import main
from suite.config import load_run
from suite.train import train

class Dropped(pl.Callback):  # Ctrl-C while a weak reference's callback runs: Python prints it as ignored
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == 0:
            def callback(_):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10**6):  # the handler runs here, inside the callback
                    pass
            ref = weakref.ref(gone := type("Gone", (), {})(), callback)
            del gone

try:
    train(load_run(sys.argv[1]), callbacks=[Dropped()], progress_bar=False)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_a_ctrl_c_that_python_drops_still_stops_the_run(tmp_path, corpus_dir):
    preset = write_preset(tmp_path, corpus_dir, epochs=400)
    proc = subprocess.run(
        [sys.executable, "-c", DROPPED_CTRL_C, str(preset)],
        cwd=tmp_path,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.returncode == 130 and "epoch 3/400" not in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "ignored" not in proc.stderr, proc.stderr[-2000:]
    runs = tmp_path / "results" / "runs"
    assert not list(runs.rglob("record.json"))
