"""Sweeps: spec validation, shared studies (journal and PostgreSQL), killed workers, diverging and pruned trials."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sweep_fixtures import (
    Unavailable,
    env,
    one_thread,
    start_postgres,
    suite,
    write_corpus,
    write_preset,
    write_spec,
)

from suite.cli import main
from suite.errors import ConfigError
from suite.record import Record
from suite.sweep import load_spec, run_sweep
from suite.sweep import storage as st
from suite.sweep.launch import published_text
from suite.sweep.spec import SweepSpec
from suite.sweep.storage import open_storage, progress
from suite.train import train


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A folder with the tiny corpus and preset; the tests run in it (relative paths land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUITE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    preset = write_preset(tmp_path, write_corpus(tmp_path / "corpus"))
    with one_thread():
        yield tmp_path, preset


def load(spec_path: Path, storage: str | None = None, profile: str | None = None) -> optuna.Study:
    spec = load_spec(spec_path, profile)
    where = storage or str(Path(spec.set["results_dir"]) / "sweeps" / spec.name / "journal.log")
    return optuna.load_study(study_name=spec.study_name, storage=open_storage(where, create=False))


def record(folder: Path, run_id: str) -> Path:
    (path,) = folder.glob(f"results/runs/*/*/{run_id}/record.json")
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_exactly(study: optuna.Study, n: int, folder: Path) -> list:
    """n trials done, all complete, with distinct settings, each with its finished record."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n, [t.state for t in trials]
    assert progress(study).done == n
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == n  # no trial ran twice
    for t in done:
        for run_id in t.user_attrs["run_ids"]:
            assert Record.load(record(folder, run_id)).status == "ok"
    return done


# --- bad specs: one line, exit 2, nothing created -------------------------------------------------------------

BAD = {
    "unknown method": ({"methods": ["nope"]}, "unknown method 'nope'"),
    "unknown task": ({"task": "no-such-task"}, "unknown task"),
    "empty space": ({"space": {}}, "search space is empty"),
    "cmr outside [0, 1)": ({"space": {"factor": [2], "cmr": [0.5, 1.0]}}, "space.cmr"),
    "factor below 1": ({"space": {"factor": [0.5, 2]}}, "space.factor"),
    "range the wrong way": ({"space": {"factor": {"low": 8, "high": 2}}}, "low must be < high"),
    "test metric objective": ({"objectives": ["test_ppl"]}, "validation metric"),
    "pruning a Pareto study": (
        {"objectives": ["val_ppl", "stored"], "pruner": "median"},
        "several objectives",
    ),
    "unknown sampler": ({"sampler": "annealing"}, "unknown sampler"),
    "zero trials": ({"n_trials": 0}, "n_trials"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_spec_is_one_line_exit_2_and_creates_nothing(tiny, capsys, case):
    folder, preset = tiny
    fields, message = BAD[case]
    spec = write_spec(folder, preset, **fields)
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (folder / "results").exists()


def test_malformed_yaml_and_missing_study(tiny, capsys):
    folder, preset = tiny
    bad = folder / "broken.yaml"
    bad.write_text("task: tiny\nspace: [unclosed\n")
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not valid YAML" in err and "\n" not in err
    spec = write_spec(folder, preset)
    assert main(["sweep", str(spec), "--status"]) == 2
    assert "no study has been run yet" in capsys.readouterr().err
    assert not (folder / "results").exists()


def test_method_settings_apply_only_to_methods_that_have_them(tiny):
    from dataclasses import dataclass

    from suite.compressors import REGISTRY, registry

    @dataclass
    class WithRate(registry.CompressorConfig):
        cmr: float = 0.0

    registry.register(
        registry.Method("rated", WithRate, lambda m, c: None, "a method with a rate (test only)")
    )
    try:
        folder, preset = tiny
        path = write_spec(
            folder, preset, methods=["small_dense", "rated"], space={"factor": [2, 4], "cmr": [0.0, 0.5]}
        )
        spec = load_spec(path, sets={"wandb": "disabled"})
        assert [p.name for p in spec.params_for("small_dense")] == ["factor"]
        assert sorted(p.name for p in spec.params_for("rated")) == ["cmr", "factor"]
        grid_spec = load_spec(
            write_spec(
                folder,
                preset,
                name="g",
                sampler="grid",
                n_trials=None,
                methods=["small_dense", "rated"],
                space={"factor": [2, 4], "cmr": [0.0, 0.5]},
            )
        )
        assert len(grid_spec.grid()) == 2 + 4 and grid_spec.n_trials == 6
        assert spec.run_config({"method": "rated", "factor": 2, "cmr": 0.5}, 0).compress["cmr"] == 0.5
        with pytest.raises(Exception, match="none of small_dense has a setting 'cmr'"):
            load_spec(write_spec(folder, preset, name="h", space={"factor": [2], "cmr": [0.5]}))
    finally:
        REGISTRY.pop("rated")


# --- shared studies ------------------------------------------------------------------------------------------


def test_two_workers_share_a_journal_study(tiny):
    folder, _ = tiny
    preset = write_preset(folder, folder / "corpus", epochs=6)  # trials long enough for both workers to join
    spec = write_spec(folder, preset, n_trials=5)
    out = suite(folder, "sweep", str(spec), "--workers", "2", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    study = load(spec)
    done = check_exactly(study, 5, folder)
    assert len(study.trials) == 5  # nothing failed, nothing ran beyond the budget
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2
    assert "5/5 trials done" in out.stdout
    assert len(run_sweep(load_spec(spec)).trials) == 5  # resuming a finished study does nothing


@pytest.fixture(scope="module")
def postgres_url():
    try:
        url, stop = start_postgres()
    except Unavailable as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL test: {e}")
        pytest.skip(f"no PostgreSQL server here: {e}")
    yield url
    stop()


def test_two_workers_share_a_postgres_study(tiny, postgres_url):
    folder, _ = tiny
    preset = write_preset(folder, folder / "corpus", epochs=6)
    spec = write_spec(folder, preset, name="pg-sweep", n_trials=4)
    out = suite(folder, "sweep", str(spec), "--workers", "2", "--storage", postgres_url, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    study = load(spec, postgres_url)
    done = check_exactly(study, 4, folder)
    assert len(study.trials) == 4
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2
    assert not (folder / "results" / "sweeps" / "pg-sweep" / "journal.log").exists()


def test_killed_worker_trial_is_retried_and_finished_trials_are_kept(tiny):
    folder, preset = tiny
    preset = write_preset(folder, folder / "corpus", epochs=20)  # trials of a few seconds: time to kill one
    spec = write_spec(folder, preset, n_trials=4)
    cmd = [sys.executable, "-m", "suite.cli", "sweep", str(spec)]
    worker = subprocess.Popen(
        cmd, cwd=folder, env=env(folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    runs = folder / "results" / "runs" / "tiny" / "small_dense"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once two trials are done and a third is training
        time.sleep(0.2)
        if worker.poll() is not None:
            pytest.fail(f"the worker ended before it could be killed: {worker.stderr.read()[-2000:]}")
        if not (folder / "results" / "sweeps").exists():
            continue
        p = progress(load(spec))
        if p.complete >= 2 and p.running == 1 and list(runs.glob(f".*.tmp{worker.pid}")):
            break
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = {t.number: t for t in load(spec).get_trials(states=(TrialState.COMPLETE,))}
    killed = [t.number for t in load(spec).get_trials(states=(TrialState.RUNNING,))]
    assert len(before) >= 2 and len(killed) == 1
    digests = {
        rid: hashlib.sha256(record(folder, rid).read_bytes()).hexdigest()
        for t in before.values()
        for rid in t.user_attrs["run_ids"]
    }

    out = suite(folder, "sweep", str(spec), timeout=600)  # the same command again
    assert out.returncode == 0, out.stderr[-2000:]
    assert "is gone; retrying it" in out.stderr
    study = load(spec)
    check_exactly(study, 4, folder)
    lost = study.trials[killed[0]]
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_reason"].endswith("died")
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == lost.params
    for number, t in before.items():  # finished trials are intact, their runs not redone
        assert study.trials[number].state == TrialState.COMPLETE and study.trials[number].values == t.values
    for rid, digest in digests.items():
        assert hashlib.sha256(record(folder, rid).read_bytes()).hexdigest() == digest


def test_a_killed_worker_of_several_fails_nothing_once_the_others_retried_its_trial(tiny):
    import psutil

    folder, preset = tiny
    preset = write_preset(folder, folder / "corpus", epochs=20)  # trials of a few seconds: time to kill one
    spec = write_spec(folder, preset, n_trials=3)
    log = folder / "stderr.txt"
    with open(log, "w") as err:
        cmd = subprocess.Popen(
            [sys.executable, "-m", "suite.cli", "sweep", str(spec), "--workers", "2"],
            cwd=folder,
            env=env(folder),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        runs = folder / "results" / "runs" / "tiny" / "small_dense"
        deadline, victim = time.time() + 300, None
        # Kill the second worker while both train, so that the first is there to retry its trial (the command,
        # waiting on the first, leaves the killed one a zombie meanwhile).
        while victim is None:
            time.sleep(0.2)
            assert cmd.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            try:  # the study's folder may be there before the study is
                if progress(load(spec)).running < 2:
                    continue
            except (KeyError, ConfigError):
                continue
            second = max(psutil.Process(cmd.pid).children(), key=lambda w: (w.create_time(), w.pid))
            victim = second if list(runs.glob(f".*.tmp{second.pid}")) else None
        victim.send_signal(signal.SIGKILL)
        code = cmd.wait(timeout=600)
    text = log.read_text()
    assert code == 0, [line for line in text.splitlines() if "epoch" not in line]
    assert "1 of 2 workers failed (killed by signal 9)" in text and "is gone; retrying it" in text
    study = load(spec)
    check_exactly(study, 3, folder)
    lost = next(t for t in study.trials if t.state == TrialState.FAIL)
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number)
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params


# --- diverging and pruned trials -----------------------------------------------------------------------------


def test_diverging_trial_is_pruned_with_its_reason_and_the_sweep_goes_on(tiny):
    folder, preset = tiny
    spec_path = write_spec(
        folder,
        preset,
        sampler="grid",
        n_trials=None,
        space={"factor": [2], "train.lr": [1e12, 1.0]},
        set={"results_dir": "results", "train.clip": 1e30},
    )
    study = run_sweep(load_spec(spec_path))
    first, second = study.trials
    assert first.state == TrialState.PRUNED and first.user_attrs["reason"].startswith("diverged: ")
    rec = Record.load(record(folder, first.user_attrs["run_ids"][0]))
    assert rec.status == "failed" and rec.reason and "became" in rec.reason
    assert second.state == TrialState.COMPLETE and second.value < 100
    assert progress(study).done == 2


def test_pruner_stops_a_bad_trial_early_and_reused_runs_report_their_curves(tiny):
    folder, preset = tiny
    preset = write_preset(folder, folder / "corpus", epochs=3)
    fields = dict(
        sampler="grid",
        n_trials=None,
        space={"factor": [2], "train.lr": [1.0, 1e-4]},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    study = run_sweep(load_spec(write_spec(folder, preset, **fields)))
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE and len(good.intermediate_values) == 3
    assert bad.state == TrialState.PRUNED and bad.user_attrs["epochs"] == 1
    assert Record.load(record(folder, bad.user_attrs["run_ids"][0])).status == "pruned"
    # A second study over the same runs: the finished one is found, not retrained, and its curve is reported.
    again = run_sweep(load_spec(write_spec(folder, preset, name="again", **fields)))
    assert (
        again.trials[0].state == TrialState.COMPLETE
        and again.trials[0].intermediate_values == good.intermediate_values
    )


def test_pareto_study_status_and_dashboard(tiny, capsys):
    folder, preset = tiny
    spec = write_spec(
        folder, preset, objectives=["val_ppl", "stored", "latency_ms"], sampler="nsgaii", n_trials=3
    )
    assert main(["sweep", str(spec)]) == 0
    study = load(spec)
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 3 for t in study.trials)
    assert main(["sweep", str(spec), "--status"]) == 0
    text = capsys.readouterr().out
    assert "3/3 trials done" in text and "Pareto front of val_ppl, stored, latency_ms" in text
    table = (folder / "results" / "sweeps" / "tiny-sweep" / "tiny-sweep-paper.csv").read_text().splitlines()
    assert len(table) == 4 and "latency_ms" in table[0]

    # optuna-dashboard opens the journal file: its API lists the study and its trials
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    app = wsgi(str(folder / "results" / "sweeps" / "tiny-sweep" / "journal.log"))

    def get(path: str) -> dict:
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
        assert status[0].startswith("200"), (status, body[:200])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["tiny-sweep-paper"]
    assert len(get(f"/api/studies/{studies[0]['study_id']}")["trials"]) == 3


def test_each_trial_is_its_own_wandb_run_finished_before_the_next(tiny, monkeypatch):
    import wandb

    folder, preset = tiny
    monkeypatch.delenv("WANDB_MODE")
    calls: list[tuple] = []
    real_init = wandb.init

    def init(**kw):  # the real wandb.init, made cheap: disabled mode, every call recorded
        calls.append(("init", kw))
        run = real_init(**{**kw, "mode": "disabled"})
        log, finish = run.log, run.finish
        monkeypatch.setattr(
            run, "log", lambda data, *a, **k: (calls.append(("log", dict(data))), log(data, *a, **k))
        )
        monkeypatch.setattr(run, "finish", lambda *a, **k: (calls.append(("finish", k)), finish(*a, **k)))
        return run

    monkeypatch.setattr(wandb, "init", init)
    spec = write_spec(folder, preset, n_trials=2, set={"results_dir": "results", "wandb": "offline"})
    study = run_sweep(load_spec(spec))
    assert [c[0] for c in calls if c[0] != "log"] == ["init", "finish", "init", "finish"]
    for kw in (c[1] for c in calls if c[0] == "init"):
        assert kw["group"] == study.study_name and kw["job_type"] == "small_dense"
        assert study.study_name in kw["tags"] and "tiny" in kw["tags"]
        for key in ("method", "factor", "seed", "trial", "achieved_cf", "compress.factor", "train.lr"):
            assert key in kw["config"], key
    logged = set().union(*(c[1] for c in calls if c[0] == "log"))
    assert {"val_ppl", "train_loss", "epoch/lr", "epoch/train_ppl"} <= logged
    assert wandb.run is None


def test_resume_extends_the_budget_and_refuses_a_changed_spec(tiny, capsys):
    folder, preset = tiny
    spec = write_spec(folder, preset, n_trials=1)
    assert main(["sweep", str(spec)]) == 0
    write_spec(folder, preset, n_trials=2)  # only the budget changes: the study goes on
    assert main(["sweep", str(spec)]) == 0
    assert [t.state for t in load(spec).trials] == [TrialState.COMPLETE] * 2
    write_spec(folder, preset, n_trials=2, space={"factor": {"low": 1.5, "high": 3.0}})
    capsys.readouterr()
    before = tree(folder / "results")
    assert main(["sweep", str(spec)]) == 2
    assert "made from a different spec" in capsys.readouterr().err
    assert tree(folder / "results") == before  # a refused resume writes nothing, not even to the journal
    assert main(["sweep", str(spec), "--profile", "smoke"]) == 0  # another profile is another study
    assert load_spec(spec, "smoke").study_name != load_spec(spec).study_name
    assert len(load(spec, profile="smoke").trials) == 2 and len(load(spec).trials) == 2


def test_a_study_of_older_code_is_refused_not_resumed(tiny, capsys, monkeypatch):
    """After a change in the code deciding a method's runs, resuming would count stale trials as done."""
    folder, preset = tiny
    spec = write_spec(folder, preset, n_trials=1)
    assert main(["sweep", str(spec)]) == 0
    real = SweepSpec.code_versions
    monkeypatch.setattr(SweepSpec, "code_versions", lambda self: {m: "0" * 12 for m in real(self)})
    capsys.readouterr()
    before = tree(folder / "results")
    assert main(["sweep", str(spec)]) == 2
    assert "made by older code of small_dense" in capsys.readouterr().err
    assert tree(folder / "results") == before


def _trial(params: dict, curve: list[float]) -> optuna.trial.FrozenTrial:
    dist = {k: optuna.distributions.CategoricalDistribution([v]) for k, v in params.items()}
    return optuna.trial.create_trial(
        params=params,
        distributions=dist,
        intermediate_values=dict(enumerate(curve)),
        state=TrialState.COMPLETE if len(curve) == 3 else TrialState.RUNNING,
        value=curve[-1] if len(curve) == 3 else None,
    )


def test_setting_halving_races_learning_rates_within_one_configuration_only():
    from suite.sweep.build import SettingHalving

    study = optuna.create_study(direction="minimize")
    study.add_trial(_trial({"method": "kp", "factor": 25, "lr": 1.0}, [200.0, 150.0, 140.0]))
    study.add_trial(_trial({"method": "lmf", "factor": 25, "lr": 1.0}, [300.0, 290.0, 280.0]))
    pruner = SettingHalving("lr", after_epochs=2, keep=1)
    worse_kp = _trial({"method": "kp", "factor": 25, "lr": 0.5}, [210.0, 160.0])
    better_kp = _trial({"method": "kp", "factor": 25, "lr": 0.25}, [190.0, 149.0])
    lmf = _trial({"method": "lmf", "factor": 25, "lr": 0.5}, [250.0, 200.0])  # worse than kp, best of lmf
    early = _trial({"method": "kp", "factor": 25, "lr": 0.125}, [500.0])  # before the rung: never pruned
    assert pruner.prune(study, worse_kp) and not pruner.prune(study, better_kp)
    assert not pruner.prune(study, lmf) and not pruner.prune(study, early)
    assert not SettingHalving("lr", after_epochs=2, keep=2).prune(study, worse_kp)  # keep the best two


def race(folder: Path, methods: list[str], rates: list[float], **fields) -> SweepSpec:
    """A grid over ``rates`` at CF 2, racing them for one of three epochs on the tiny corpus."""
    preset = write_preset(folder, folder / "corpus", epochs=3)
    space = {"factor": [2], "lr": rates}
    pruner = {"name": "setting_halving", "param": "lr", "after_epochs": 1}
    fields = dict(methods=methods, sampler="grid", n_trials=None, space=space, pruner=pruner, **fields)
    return load_spec(write_spec(folder, preset, **fields))


@pytest.mark.parametrize("rates", [[0.5, 1e-4, 3.0], [1.0, 1e-4, 0.5]], ids=["first-wins", "last-wins"])
def test_setting_halving_races_each_configurations_rates_before_its_winner_trains_on(tiny, rates):
    """Whichever rate leads after the race's epoch waits, its checkpoint kept, until its rivals have raced; only
    the winner trains on, resumed bit-identically; a configuration costs 1 + (n - 1) * after_epochs / epochs runs.
    (On the tiny corpus lr 0.5 is ahead of 1, 3 and 1e-4 after one epoch: the first list's first rate wins, the
    second's loses to its last.)"""
    folder, _ = tiny
    spec = race(folder, ["small_dense", "kp"], rates)
    study = run_sweep(spec)
    for method in ("small_dense", "kp"):
        mine = [t for t in study.trials if t.params["method"] == method]
        first = {t.params["lr"]: t.intermediate_values[0] for t in mine if 0 in t.intermediate_values}
        assert min(first, key=first.get) == 0.5
        # the first rate leads after epoch 1 (nothing to beat) and waits for its rivals, which race to epoch 1
        assert [t.params["lr"] for t in mine[:3]] == rates
        assert mine[0].state == TrialState.FAIL and mine[0].user_attrs[st.DEFERRED]
        assert "waits for" in mine[0].user_attrs[st.REASON]
        # then only the fastest at epoch 1 trains on; the deferred one, resumed, stops at once if it lost
        assert len(mine) == 4  # three rates, one of them twice: deferred, then resumed
        settled = {t.params["lr"]: (t.state, t.user_attrs["epochs"]) for t in mine[1:]}
        assert settled == {
            lr: (TrialState.COMPLETE, 3) if lr == 0.5 else (TrialState.PRUNED, 1) for lr in rates
        }
    assert st.progress(study).done == 6  # every grid point settled once: a deferral takes no place of its own
    # the winner resumed from the race's checkpoint if it had waited, and gives what an uninterrupted run gives
    winner = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    found = list((folder / "results" / "runs").rglob(f"{winner.user_attrs['run_ids'][0]}/record.json"))
    record = Record.load(found[0])
    assert bool(record.resumed) == (rates[0] == 0.5) and len(record.epochs) == 3
    straight = train(spec.run_config(winner.params, 0), force=True)
    assert (straight.val, straight.test) == (record.val, record.test)


def test_a_resumed_trial_gives_the_pruner_the_epochs_it_had_before_it_was_interrupted():
    """The worker that was killed left a failed trial; its run resumes in a new trial, which must report the
    restored epochs so that the rate race still compares it, and which stops at once where it lost the race."""
    from types import SimpleNamespace

    from suite.sweep.build import FitPruning, SettingHalving
    from suite.tracking import History

    study = optuna.create_study(direction="minimize", pruner=SettingHalving("lr", after_epochs=2))
    study.add_trial(_trial({"method": "kp", "factor": 25, "lr": 1.0}, [200.0, 150.0, 140.0]))
    history = History("kp", epochs=3, train_units=1, echo=False)

    def resume(lr: float, curve: list[float]) -> optuna.Trial:
        study.enqueue_trial({"method": "kp", "factor": 25, "lr": lr})
        trial = study.ask()
        for name, choices in (("method", ["kp"]), ("factor", [25]), ("lr", [1.0, 0.5, 0.25])):
            trial.suggest_categorical(name, choices)
        history.rows = [{"epoch": i + 1, "val_ppl": v} for i, v in enumerate(curve)]
        FitPruning(trial, "val_ppl").on_train_start(SimpleNamespace(callbacks=[history]), None)
        return trial

    winner = resume(0.5, [190.0, 149.0])  # resumed after the race's epoch, ahead: goes on
    assert study.trials[winner.number].intermediate_values == {0: 190.0, 1: 149.0}
    with pytest.raises(optuna.TrialPruned):
        resume(0.25, [210.0, 160.0])  # resumed right after losing the race: stops without training on


def test_a_leader_waits_for_its_rivals_before_any_epoch_past_the_race_a_resumed_run_included():
    from types import SimpleNamespace

    from suite.sweep.build import Deferred, FitPruning

    study = optuna.create_study(direction="minimize")
    trial = study.ask()
    waiting: list = [{"lr": 0.5}]
    pruning = FitPruning(trial, "val_ppl", hold=lambda: waiting, at=2)
    for epoch in (0, 1):  # the race's own epochs run whatever the rivals do
        pruning.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), None)
    for epoch in (2, 4):  # right after the race, and a run resumed at epoch 4 (its checkpoint was past it)
        with pytest.raises(Deferred, match="waits for"):
            pruning.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), None)
    waiting.clear()  # the rivals have raced: it trains on
    pruning.on_train_epoch_start(SimpleNamespace(current_epoch=4), None)


def test_a_race_whose_runs_are_published_is_found_not_raced_again(tiny, monkeypatch, capsys):
    """On another machine (a fresh clone), the published winner is found and the published losers stay stopped:
    nothing trains."""
    import suite.publish as pub

    folder, _ = tiny
    first = run_sweep(race(folder, ["kp"], [1.0, 1e-4, 0.5]))
    assert first.trials[0].user_attrs[st.DEFERRED]  # one method: neither the grid's points nor rivals name it
    shipped = folder / "checkout" / "results" / "published"
    for path in (folder / "results" / "runs").rglob("record.json"):
        rec = Record.load(path)
        rec.published = {"command": "suite sweep", "behaviour": {}}
        rec.save(shipped / rec.task / rec.method / rec.run_id / "record.json")
    elsewhere = {"results_dir": str(folder / "elsewhere"), "wandb": "disabled"}
    raced = "(each lr finished or stopped by its race)"
    unpublished = published_text(race(folder, ["kp"], [1.0, 1e-4, 0.5], name="again", set=elsewhere))
    assert unpublished.splitlines()[0].endswith(
        f"runs finished 0, stopped by their rate race 0, missing 3; configurations complete 0 of 1 {raced}"
    )
    monkeypatch.setattr(pub, "SHIPPED", shipped)
    monkeypatch.setattr(pub, "stale_reasons", lambda records: {r.run_id: None for r in records})
    shown = published_text(race(folder, ["kp"], [1.0, 1e-4, 0.5], name="again", set=elsewhere))
    assert shown.endswith(
        f"runs finished 1, stopped by their rate race 2, missing 0; configurations complete 1 of 1 {raced}"
    )
    # a second seed: the losers run none (not missing), the winner's is missing
    seeds = published_text(race(folder, ["kp"], [1.0, 1e-4, 0.5], name="seeds", set=elsewhere, seeds=[0, 1]))
    assert seeds.splitlines()[0].endswith(
        f"runs finished 1, stopped by their rate race 2, missing 1; configurations complete 0 of 1 {raced}"
    )
    assert "'seed': 1" in seeds and "'seed': 0" not in seeds
    # no race: a stopped run is not a result of this grid
    plain = dict(methods=["kp"], sampler="grid", n_trials=None, space={"factor": [2], "lr": [1.0, 1e-4, 0.5]})
    preset = write_preset(folder, folder / "corpus", epochs=3)
    text = published_text(load_spec(write_spec(folder, preset, name="plain", set=elsewhere, **plain)))
    assert text.splitlines()[0].endswith("runs finished 1, missing 2; configurations complete 1 of 3")
    # `--status` on a clone where no study ran: what is published and missing, exit 0; a broken storage: exit 2
    spec_path = folder / "again.yaml"
    assert main(["sweep", str(spec_path), "--status"]) == 0
    out = capsys.readouterr().out
    assert "runs finished 1," in out and "no study has been run yet" in out
    assert main(["sweep", str(spec_path), "--status", "--storage", "bogus://x"]) == 2
    again = run_sweep(race(folder, ["kp"], [1.0, 1e-4, 0.5], name="again", set=elsewhere))
    outcome = {t.params["lr"]: t.state for t in first.trials if t.state != TrialState.FAIL}
    assert {t.params["lr"]: t.state for t in again.trials} == outcome
    assert sorted(outcome.values(), key=str) == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert not list((folder / "elsewhere").rglob("record.json"))  # found, not trained


def test_a_leader_resumed_past_the_race_is_still_judged_there_and_stops_if_it_lost(tiny):
    """Lr 1 ran alone to epoch 2 (killed before the sweep raced its rates); in the sweep it resumes there, waits
    for lr 0.5 to race epoch 1, and, resumed again, loses the race at epoch 1 and stops."""
    import lightning.pytorch as pl

    folder, _ = tiny
    spec = race(folder, ["kp"], [1.0, 0.5])

    class Killed(BaseException):
        pass

    class Kill(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise Killed

    with pytest.raises(Killed):
        train(
            spec.run_config({"method": "kp", "factor": 2, "lr": 1.0}, 0),
            callbacks=[Kill()],
            progress_bar=False,
        )
    study = run_sweep(spec)
    runs = [(t.params["lr"], t.state) for t in study.trials]
    assert runs == [(1.0, TrialState.FAIL), (0.5, TrialState.COMPLETE), (1.0, TrialState.PRUNED)]
    assert sorted(study.trials[0].intermediate_values) == [0, 1]  # resumed at epoch 2, then deferred
    assert (
        study.trials[0].intermediate_values[0] > study.trials[1].intermediate_values[0]
    )  # it lost at epoch 1
    assert study.trials[2].user_attrs["epochs"] == 2  # stopped at once, without training on


def test_a_deferral_is_not_a_failure_a_leader_is_resumed_whatever_its_retries():
    study = optuna.create_study(direction="minimize")
    dist = {"lr": optuna.distributions.CategoricalDistribution([1.0, 0.5])}
    history = {"failed_trial": 0, "retry_history": [0, 1, 2]}  # its workers died three times before the race
    attrs = {st.REASON: "ahead; waits", st.RETRY: True, st.DEFERRED: True}
    leader = optuna.create_trial(
        state=TrialState.FAIL, params={"lr": 1.0}, distributions=dist, user_attrs=attrs, system_attrs=history
    )
    assert st.standing(leader, set()) == "deferred" and st.failures(leader) == 3
    study.add_trial(leader)
    assert st.retry_trial(study, study.trials[0])  # resumed, although three failures is MAX_RETRY
    copy = study.trials[1]
    assert copy.state == TrialState.WAITING and st.failures(copy) == 3  # the deferral is not counted
    died = optuna.create_trial(
        state=TrialState.FAIL,
        params={"lr": 1.0},
        distributions=dist,
        user_attrs={**copy.user_attrs, st.REASON: "interrupted", st.RETRY: True},
        system_attrs=copy.system_attrs,
    )
    assert st.standing(died, set()) == "failed"  # its own failures are used up


def test_every_shipped_spec_and_profile_loads_and_builds_every_run_of_its_grid():
    """A spec in sweeps/ with a typo, a setting no method has or a value a method refuses fails here, not after
    hours of the runs before it."""
    repo = Path(__file__).resolve().parent.parent
    specs = sorted((repo / "sweeps").glob("*.yaml"))
    assert len(specs) >= 10
    for path in specs:
        profiles = (yaml.safe_load(path.read_text()).get("profiles") or {}).keys()
        for profile in ["paper", *profiles]:
            spec = load_spec(path, profile)
            if spec.sampler.name != "grid":
                continue
            points = spec.grid()[: spec.n_trials]
            assert points, (path.name, profile)
            for point in points:
                cfg = spec.run_config({"method": spec.methods[0], **point}, spec.seeds[0])
                for key, value in point.items():  # every searched setting reaches the run
                    if key != "method":
                        given = (
                            cfg.train.lr
                            if key == "lr"
                            else cfg.compress.get(key, getattr(cfg.train, key, None))
                        )
                        assert given in (value, [value]), (path.name, profile, point, key)
