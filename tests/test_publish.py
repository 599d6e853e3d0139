"""Published results: `suite publish` copies finished full-scale runs into results/published and refuses the rest
with one line each; tables read published and own records together, the leaderboard first; the committed results
documents agree with the committed records."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from suite.cli import main
from suite.compressors.registry import LSTM_TARGETS
from suite.publish import publish
from suite.record import Record
from suite.report import load, runs_frame, summary

ROOT = Path(__file__).resolve().parent.parent
HEAD = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
pytestmark = pytest.mark.skipif(not HEAD, reason="needs the suite's git checkout")


def fake_fingerprint(record: Record) -> dict:
    return {"values": {"val": 1.0}, "hash": "abc"}


def write_run(
    results: Path,
    method: str = "dense",
    factor: float = 1.0,
    *,
    run_id: str | None = None,
    status: str = "ok",
    profile: str = "paper",
    dirty: bool = False,
    sha: str = HEAD,
    test: float = 100.0,
    val: float = 105.0,
    seed: int = 0,
    lr: float = 1.0,
) -> Path:
    run_id = run_id or f"{method}{factor:g}{profile}{seed}{test:g}{lr:g}{status}".replace(".", "")[:12]
    folder = results / "runs" / "ptb-small" / method / run_id
    folder.mkdir(parents=True)
    train = {
        "epochs": 13,
        "lr": lr,
        "train_fraction": 1.0 if profile == "paper" else 0.03,
        "eval_fraction": 1.0,
    }
    rec = Record(
        run_id=run_id,
        task="ptb-small",
        method=method,
        seed=seed,
        status=status,
        reason={"ok": None, "pruned": "pruned by the sweep's pruner"}.get(status, "diverged"),
        config={
            "task": "ptb-small",
            "family": "lm",
            "dataset": "ptb",
            "model": {"hidden": 200},
            "train": train,
            "method": method,
            "compress": {"factor": factor, "targets": list(LSTM_TARGETS)},
            "seed": seed,
            "profile": profile,
            "data_dir": "/somewhere/data",
            "results_dir": str(results.resolve()),
            "data": {
                "name": "ptb",
                "origin": "/somewhere/data/ptb",
                "files": {"folder": "/somewhere/data/ptb/raw"},
            },
        },
        final={"val_ppl": val, "test_ppl": test} if status == "ok" else {},
        accounting={"cf": factor, "cf_values": factor, "model_cf": 1.0},
        provenance={
            "git_sha": sha,
            "git_dirty": dirty,
            "host": "machine-17",
            "argv": [
                "/opt/venv/bin/suite",
                "train",
                str(ROOT / "tasks/ptb-small.yaml"),
                "--method",
                method,
                "--set",
                f"results_dir={results.resolve()}",
                "--threads",
                "1",
            ],
        },
        code_version="x",
    )
    rec.save(folder / "record.json")
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text("epoch,val_ppl\n1,105.0\n")
    (folder / "model.pt").write_bytes(b"weights")
    return folder


def test_publish_copies_the_record_and_its_log_without_paths_of_the_machine(tmp_path):
    results = tmp_path / "results"
    run = write_run(tmp_path / "mine", "kp", 25.0)
    written, refused = publish([run], results, fingerprint=fake_fingerprint, echo=lambda s: None)
    assert refused == [] and len(written) == 1
    (dest,) = written
    assert sorted(p.name for p in dest.iterdir()) == ["metrics.csv", "record.json"]  # no weights, no W&B
    text = (dest / "record.json").read_text()
    assert str(tmp_path) not in text and "/somewhere" not in text and "machine-17" not in text
    d = json.loads(text)
    assert d["published"]["command"] == "suite train tasks/ptb-small.yaml --method kp --threads 1"
    assert d["published"]["behaviour"] == fake_fingerprint(None)
    assert d["config"]["data"]["origin"] == "ptb" and d["provenance"]["git_sha"] == HEAD
    assert d["config"]["data"]["files"]["folder"] == "ptb/raw"  # the dataset's layout, not the machine's


@pytest.mark.parametrize(
    "kind, needle",
    [
        ({"status": "failed"}, "the run failed"),
        ({"profile": "smoke"}, "smoke-scale"),
        ({"dirty": True}, "uncommitted changes"),
        ({"sha": "0" * 40}, "not on main"),
    ],
)
def test_publish_refuses_what_is_not_a_finished_clean_full_scale_run(tmp_path, capsys, kind, needle):
    run = write_run(tmp_path / "mine", **kind)
    before = sorted(tmp_path.rglob("*"))
    assert main(["publish", str(run), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_publish_refuses_a_run_already_published_and_keeps_the_rest(tmp_path, capsys):
    results = tmp_path / "results"
    a, b = write_run(tmp_path / "mine", "kp", 25.0), write_run(tmp_path / "mine", "lmf", 25.0)
    publish([a], results, fingerprint=fake_fingerprint, echo=lambda s: None)
    written, refused = publish([a, b], results, fingerprint=fake_fingerprint, echo=lambda s: None)
    assert [w.parent.name for w in written] == ["lmf"]
    assert len(refused) == 1 and "already published" in refused[0]


def test_a_rate_race_loser_is_published_and_counted_among_the_rates_tried_but_never_chosen(tmp_path, capsys):
    results = tmp_path / "results"
    runs = [
        write_run(tmp_path / "mine", "dense", test=100.0),
        write_run(tmp_path / "mine", "kp", 25.0, test=110.0, val=115.0),
        write_run(tmp_path / "mine", "kp", 25.0, lr=0.5, status="pruned"),  # stopped by the race
    ]
    written, refused = publish(runs, results, fingerprint=fake_fingerprint, echo=lambda s: None)
    assert len(written) == 3 and not refused
    with pytest.MonkeyPatch.context() as m:
        m.setattr("suite.publish.stale_reasons", lambda recs: {r.run_id: None for r in recs})
        m.setattr("suite.report.is_stale", lambda rec: False)  # the fake records' code versions
        assert main(["report", "--results", str(results)]) == 0
    board = capsys.readouterr().out.partition("PIPELINE CHECK")[0]
    kp = next(line for line in board.splitlines() if line.lstrip().startswith("kp "))
    assert "1 (of 2)" in kp and "110.00" in kp


def test_tables_read_published_and_own_records_with_the_leaderboard_first(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    runs = [
        write_run(tmp_path / "mine", "dense", test=100.0),
        write_run(tmp_path / "mine", "kp", 25.0, test=110.0),
    ]
    publish(runs, results, fingerprint=fake_fingerprint, echo=lambda s: None)
    write_run(results, "kp", 8.0, profile="smoke", test=900.0)  # the user's own smoke run
    monkeypatch.setattr("suite.publish.stale_reasons", lambda recs: {r.run_id: None for r in recs})
    monkeypatch.setattr("suite.report.is_stale", lambda rec: False)  # the fake records' code versions
    assert main(["report", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    board, _, check = out.partition("PIPELINE CHECK")
    assert "LEADERBOARD" in board and "110.00" in board and "+10.0%" in board and "900" not in board
    assert "900.00" in check and "110.00" not in check  # a full row and a smoke row never share a table


def test_committed_results_documents_agree_with_the_published_records():
    """docs/results.md and docs/claims.md are generated (`suite report --docs docs`) from results/published."""
    from suite.leaderboard import documents

    records = [r for r in load(ROOT / "results")[0] if r.published] if (ROOT / "results").is_dir() else []
    for name, text in documents(summary(runs_frame(records)), records).items():
        assert (ROOT / "docs" / name).read_text() == text, (
            f"docs/{name} is out of date: run suite report --docs docs"
        )


def test_the_leaderboard_lists_dense_first_then_each_cf_best_first_in_the_metrics_direction():
    """Per task: dense, then by asked CF, and within a CF from the best test metric down: ascending perplexity and
    WER, descending BLEU (multi30k-small's published records hold a maximized metric)."""
    from suite.leaderboard import leaderboard

    records = [r for r in load(ROOT / "results")[0] if r.published] if (ROOT / "results").is_dir() else []
    board = leaderboard(summary(runs_frame(records)))
    assert "maximize" in set(board["direction"]), "no published task with a higher-is-better metric"
    for task, rows in board.groupby("task", sort=False):
        assert rows["method"].iloc[0] == "dense", task
        for factor, same in rows.iloc[1:].groupby("factor"):
            sign = -1.0 if same["direction"].iloc[0] == "maximize" else 1.0
            worse = list(sign * same["test_mean"])
            assert worse == sorted(worse), f"{task} at CF {factor:g}: not best first"


def test_the_readme_shows_every_committed_figure_of_the_published_records():
    """docs/figures/ is drawn from the published records (`suite report --docs docs`); the README shows each of its
    figures, and every figure it shows exists."""
    shown = set(re.findall(r"!\[[^\]]*\]\((docs/figures/[^)]+)\)", (ROOT / "README.md").read_text()))
    drawn = {f"docs/figures/{p.name}" for p in (ROOT / "docs" / "figures").glob("*.png")}
    assert drawn, "docs/figures/ holds no figure: run suite report --docs docs"
    assert not drawn - shown, f"the README does not show {sorted(drawn - shown)}"
    assert not shown - drawn, f"the README shows figures that do not exist: {sorted(shown - drawn)}"


def test_a_stale_published_record_is_left_out_and_shown_marked_with_what_changed(
    tmp_path, monkeypatch, capsys
):
    results = tmp_path / "results"
    runs = [
        write_run(tmp_path / "mine", "dense", test=100.0),
        write_run(tmp_path / "mine", "kp", 25.0, test=110.0),
    ]
    publish(runs, results, fingerprint=fake_fingerprint, echo=lambda s: None)
    why = "behaviour of lm/kp changed: val_ppl 2.33 -> 2.29"
    monkeypatch.setattr(
        "suite.publish.stale_reasons",
        lambda recs: {r.run_id: why if r.method == "kp" else None for r in recs},
    )
    assert main(["report", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "110.00" not in out and "1 record(s) of older code left out" in out
    assert main(["report", "--results", str(results), "--stale"]) == 0
    out = capsys.readouterr().out
    assert f"stale: {why}" in out and "110.00" in out.partition("STALE")[2]
    assert main(["publish", "--stale", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert why in out and "rerun: suite train tasks/ptb-small.yaml --method kp" in out


def test_a_published_run_is_found_not_redone_from_any_results_folder(tiny_preset, tmp_path, monkeypatch):
    """A configuration published and current is found by train's lookup, in the results folder's published/
    and in the checkout's own (a run whose results folder is elsewhere), and never when the settings differ."""
    import suite.publish as pub
    from suite.config import load_run
    from suite.store import find
    from suite.train import train

    mine = tmp_path / "mine"
    cfg = load_run(tiny_preset, "dense", sets={"results_dir": str(mine), "epochs": 1, "wandb": "disabled"})
    rec = train(cfg, progress_bar=False)
    rec.published = {"command": "suite train tiny.yaml", "behaviour": fake_fingerprint(rec)}
    assert isinstance(rec.config["train"]["lr"], float)
    rec.config["train"]["lr"] = int(rec.config["train"]["lr"])  # as `--set lr=1` gives it: the same setting
    shipped = tmp_path / "checkout" / "results" / "published"
    rec.save(shipped / cfg.task / "dense" / rec.run_id / "record.json")
    monkeypatch.setattr(pub, "stale_reasons", lambda records: {r.run_id: None for r in records})
    monkeypatch.setattr(pub, "SHIPPED", shipped)
    other = cfg.replace(results_dir=str(tmp_path / "elsewhere"))
    assert other.run_id == cfg.run_id and find(other).run_id == rec.run_id  # from the checkout's published/
    assert find(other.replace(seed=1)) is None  # another seed is another run
    monkeypatch.setattr(pub, "stale_reasons", lambda records: {r.run_id: "changed" for r in records})
    assert find(other) is None  # a stale published record is redone


def test_the_deepthin_claim_counts_a_difference_only_beyond_noise():
    import pandas as pd

    from suite.claims import INCONCLUSIVE, REFUTED, REPRODUCED, deepthin_wer
    from suite.leaderboard import TEST_WORDS

    def verdict(deepthin: int, **errors: int) -> str:
        wer = {"lmf": 40, "prune": 40, "hashed": 40, "small_dense": 40, **errors, "deepthin": deepthin}
        board = pd.DataFrame(
            [
                {
                    "task": "fsdd-digits",
                    "method": m,
                    "factor": 10.0,
                    "test_mean": k / TEST_WORDS["fsdd-digits"],
                    "run_ids": m,
                }
                for m, k in wer.items()
            ]
        )
        return deepthin_wer(board, None, {}).verdict

    assert verdict(5) == REPRODUCED  # 5 errors against 40 each
    assert verdict(5, lmf=9) == INCONCLUSIVE  # 5 against 9 is within noise, although lower
    assert verdict(40, lmf=5) == REFUTED
    assert verdict(9, lmf=5) == INCONCLUSIVE


def test_a_single_seeds_wer_is_shown_with_its_error_count_and_several_seeds_with_their_interval():
    from types import SimpleNamespace

    import pandas as pd

    from suite.leaderboard import FOOTER, TEST_WORDS, _test, footer

    def row(**kw):
        base = {"task": "fsdd-digits", "metric": "wer", "test_mean": 5 / TEST_WORDS["fsdd-digits"], "n_ok": 1}
        return SimpleNamespace(**{**base, "test_ci95": float("nan"), **kw})

    assert _test(row()) == "0.0012 (5 errors)"
    assert _test(row(n_ok=3, test_ci95=0.001)) == "0.0012 +- 0.0010"
    assert _test(row(task="ptb-small", metric="ppl", test_mean=110.0)) == "110.00"
    board = pd.DataFrame([vars(row()), vars(row(task="ptb-small", metric="ppl", test_mean=110.0))])
    assert footer(board).endswith(
        "(4,106 words in fsdd-digits); a difference of a few errors is within noise "
        "(docs/claims.md tests the differences it uses)"
    )
    assert footer(board.assign(n_ok=3)) == FOOTER  # no error count shown


def test_the_claims_count_the_words_of_the_real_fsdd_test_utterances():
    from conftest import SHARED_DATA

    if SHARED_DATA is None:
        pytest.skip("needs SUITE_DATA_DIR")
    from suite.config import read_yaml
    from suite.data.fsdd import UtteranceSettings, build_utterances, list_clips, locate_fsdd, split_clips
    from suite.leaderboard import TEST_WORDS

    preset = read_yaml(ROOT / "tasks" / "fsdd-digits.yaml")
    given = {
        k: v for k, v in (preset.get("train") or {}).items() if k in UtteranceSettings.__dataclass_fields__
    }
    settings = UtteranceSettings(**given)
    folder = locate_fsdd(str(SHARED_DATA))
    clips = list_clips(folder)
    test = split_clips(clips, settings, folder)["test"]
    utterances = build_utterances(clips, test, settings.test_utterances, settings, "test")
    assert sum(len(u.digits) for u in utterances) == TEST_WORDS["fsdd-digits"]


def test_the_cmr_claim_reads_each_rate_at_its_chosen_learning_rate_and_never_a_stopped_run():
    import pandas as pd

    from suite.claims import REFUTED, REPRODUCED, cmr_removes_dependence

    def rec(run_id: str, with_d: float, without: float) -> Record:
        epochs = [{"epoch": 13, "val_ppl": with_d, "val_ppl_without_d": without}]
        return Record(
            run_id=run_id, task="ptb-small", method="doped_kp", seed=0, status="ok", config={}, epochs=epochs
        )

    def row(run_id: str, cmr: float, lr: float, val: float | None) -> dict:
        return dict(
            task="ptb-small",
            method="doped_kp",
            factor=25.0,
            cmr=cmr,
            lr=lr,
            val_mean=val,
            direction="minimize",
            run_ids=run_id,
            profile="paper",
            budget="13ep",
        )

    summ = pd.DataFrame(
        [
            row("a", 0.0, 1.0, 140.0),
            row("b", 0.0, 0.5, 130.0),  # cmr 0: lr 0.5 is chosen
            row("c", 0.5, 1.0, 135.0),
            row("d", 0.5, 0.25, None),  # cmr 0.5: lr 0.25 stopped by the race
        ]
    )
    records = {
        "a": rec("a", 140, 150),
        "b": rec("b", 130, 260),
        "c": rec("c", 135, 140),
        "d": rec("d", 400, 401),
    }
    verdict = cmr_removes_dependence(None, summ, records)
    assert verdict.verdict == REPRODUCED and sorted(verdict.runs) == ["b", "c"]
    records["b"] = rec("b", 130, 140)  # the chosen cmr-0 run barely needs D either
    assert cmr_removes_dependence(None, summ, records).verdict == REFUTED
