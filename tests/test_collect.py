"""`suite collect DIR... --into OUT`: the results trees of several machines merged into one by run-id. An
identical duplicate is skipped, a conflict (one run-id, different metrics) refused with one line naming both
records and nothing written, a partial copy skipped with a note; each run lands whole or not at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from suite.cli import main
from suite.collect import collect
from suite.record import Record
from suite.store import load_records


def run(
    tree: Path,
    run_id: str,
    test: float = 100.0,
    status: str = "ok",
    store: str | None = None,
    method: str = "kp",
    host: str = "a",
) -> Path:
    """A run folder as train() leaves it: its record, a CSV log and weights."""
    folder = tree / "runs" / (store or "") / "tiny" / method / run_id
    folder.mkdir(parents=True)
    final = {"val_ppl": test + 1, "test_ppl": test} if status == "ok" else {}
    config = {"task": "tiny", "family": "lm", "dataset": "ptb", "model": {}, "train": {"epochs": 1}}
    Record(
        run_id,
        "tiny",
        method,
        0,
        status,
        {**config, "method": method, "compress": {}},
        final=final,
        provenance={"host": host},
        reason=None if status == "ok" else "diverged",
    ).save(folder / "record.json")
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text("epoch,val_ppl\n1,101\n")
    (folder / "model.pt").write_bytes(b"weights" * 100)
    return folder


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_trees_of_several_machines_merge_by_run_id(tmp_path):
    a, b, into = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    run(a, "aaaaaaaaaaa1", 90)
    run(a, "aaaaaaaaaaa2", 95, store="sweep-tiny")
    run(b, "bbbbbbbbbbb1", 80, method="lmf", host="b")
    done = collect([a, b], into)
    assert sorted(p.name for p in done.copied) == ["aaaaaaaaaaa1", "aaaaaaaaaaa2", "bbbbbbbbbbb1"]
    assert (
        into / "runs" / "sweep-tiny" / "tiny" / "kp" / "aaaaaaaaaaa2" / "model.pt"
    ).is_file()  # store kept
    for src in (a, b):
        for path, data in tree_files(src).items():
            assert (into / path).read_bytes() == data  # every file of every run, unchanged
    assert len(load_records(into)) == 3
    assert not [p for p in into.rglob(".*")]  # no staging folder or lock left
    assert done.summary() == f"collected 3 run(s) into {into}; 0 identical duplicate(s) skipped"


def test_an_identical_duplicate_is_skipped_and_said(tmp_path, capsys):
    a, b, into = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    run(a, "aaaaaaaaaaa1", 90)
    run(b, "aaaaaaaaaaa1", 90, host="b")  # the same run made on both machines: equal results
    run(b, "bbbbbbbbbbb1", 80)
    assert main(["collect", str(a), str(b), "--into", str(into)]) == 0
    out = capsys.readouterr().out
    assert "collected 2 run(s)" in out and "1 identical duplicate(s) skipped" in out
    kept = Record.load(into / "runs" / "tiny" / "kp" / "aaaaaaaaaaa1" / "record.json")
    assert kept.provenance["host"] == "a"  # the first copy stays
    before = tree_files(into)
    assert main(["collect", str(a), str(b), "--into", str(into)]) == 0  # again: nothing new, nothing changed
    assert "collected 0 run(s)" in (again := capsys.readouterr().out) and "3 identical duplicate(s)" in again
    assert tree_files(into) == before


def test_a_conflict_is_one_line_naming_both_exit_2_and_nothing_is_written(tmp_path, capsys):
    a, b, into = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    run(a, "bbbbbbbbbbb1", 70)
    first = run(a, "aaaaaaaaaaa1", 90)
    second = run(b, "aaaaaaaaaaa1", 91.5, host="b")  # same run-id, other metrics
    assert main(["collect", str(a), str(b), "--into", str(into)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run aaaaaaaaaaa1 has different results") and "\n" not in err
    assert str(first / "record.json") in err and str(second / "record.json") in err
    assert "test_ppl 90.00" in err and "test_ppl 91.50" in err
    assert not into.exists()


def test_a_conflict_with_the_target_writes_nothing_either(tmp_path, capsys):
    b, into = tmp_path / "b", tmp_path / "merged"
    run(into, "aaaaaaaaaaa1", 90)
    run(b, "ccccccccccc1", 60)
    run(b, "aaaaaaaaaaa1", 91, store="sweep-tiny")  # another store: still the same run, and it disagrees
    before = tree_files(into)
    assert main(["collect", str(b), "--into", str(into)]) == 2
    assert "aaaaaaaaaaa1" in capsys.readouterr().err
    assert tree_files(into) == before


def test_partial_copies_are_skipped_with_a_note(tmp_path, capsys):
    a, into = tmp_path / "a", tmp_path / "merged"
    run(a, "aaaaaaaaaaa1", 90)
    no_record = run(a, "aaaaaaaaaaa2", 91)
    (no_record / "record.json").unlink()  # the copy from the machine stopped before the record
    cut = run(a, "aaaaaaaaaaa3", 92)
    (cut / "record.json").write_text((cut / "record.json").read_text()[:200])  # stopped inside it
    staging = a / "runs" / "tiny" / "kp" / ".aaaaaaaaaaa4.tmp123"  # a run still being written there
    staging.mkdir()
    (staging / "model.pt").write_bytes(b"x")
    assert main(["collect", str(a), "--into", str(into)]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 3 and all("(a partial copy); skipped" in n for n in notes)
    assert any(str(no_record) in n and "without record.json" in n for n in notes)
    assert any(str(cut / "record.json") in n for n in notes)
    assert any(str(staging) in n for n in notes)
    assert "collected 1 run(s)" in captured.out and "3 partial copies skipped" in captured.out
    assert [p.name for p in (into / "runs" / "tiny" / "kp").iterdir()] == ["aaaaaaaaaaa1"]


def test_a_finished_run_replaces_an_unfinished_copy(tmp_path, capsys):
    a, b, into = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    run(into, "aaaaaaaaaaa1", status="failed")
    run(a, "aaaaaaaaaaa1", 90, host="a")  # retried there, and finished
    run(b, "aaaaaaaaaaa1", status="pruned")  # an unfinished copy never wins over a finished one
    done = collect([a, b], into)
    assert [p.name for p in done.replaced] == ["aaaaaaaaaaa1"] and not done.copied
    rec = Record.load(into / "runs" / "tiny" / "kp" / "aaaaaaaaaaa1" / "record.json")
    assert rec.status == "ok" and rec.provenance["host"] == "a"
    assert not [p for p in into.rglob(".*")]


def test_a_copy_cut_short_leaves_no_half_run(tmp_path, monkeypatch):
    a, into = tmp_path / "a", tmp_path / "merged"
    run(a, "aaaaaaaaaaa1", 90)
    run(a, "aaaaaaaaaaa2", 91)
    copytree, calls = shutil.copytree, []

    def full_disk_on_the_second_run(src, dst, *args, **kw):
        if not Path(dst).name.startswith("."):  # copytree's own call for a sub-folder
            return copytree(src, dst, *args, **kw)
        calls.append(src)
        copytree(src, dst, *args, **kw)
        if len(calls) == 2:
            (Path(dst) / "record.json").write_text("{")  # half a record, then the disk is full
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("suite.collect.shutil.copytree", full_disk_on_the_second_run)
    with pytest.raises(OSError):
        collect([a], into)
    (whole,) = (into / "runs").rglob("record.json")  # the first run, whole; nothing of the second
    assert Record.load(whole).run_id == "aaaaaaaaaaa1"
    assert not list(into.rglob(".*"))
    monkeypatch.undo()
    done = collect([a], into)  # collecting again copies what is missing
    assert [p.name for p in done.copied] == ["aaaaaaaaaaa2"] and len(done.duplicates) == 1


@pytest.mark.parametrize(
    "args, says",
    [
        (["nowhere"], "results folder nowhere does not exist"),
        (["afile"], "is a file"),
        (["empty"], "holds no runs/ folder"),
        (["a", "--into", "afile/x"], "afile"),
    ],
)
def test_bad_collect_arguments_are_one_line_exit_2(tmp_path, capsys, args, says):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    run(tmp_path / "a", "aaaaaaaaaaa1")
    assert main(["collect", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err


def test_collected_records_read_as_the_originals(tmp_path):
    a, into = tmp_path / "a", tmp_path / "merged"
    folder = run(a, "aaaaaaaaaaa1", 90)
    collect([a], into)
    copied = into / "runs" / "tiny" / "kp" / "aaaaaaaaaaa1" / "record.json"
    assert json.loads(copied.read_text()) == json.loads((folder / "record.json").read_text())


def test_a_run_waiting_aside_is_collected_under_its_own_name(tmp_path):
    """A run whose replacement (--force) was killed half-way waits as .<run-id>.old<pid>: it is the run."""
    a, into = tmp_path / "a", tmp_path / "merged"
    folder = run(a, "aaaaaaaaaaa1", 90)
    folder.rename(folder.with_name(".aaaaaaaaaaa1.old4242"))
    done = collect([a], into)
    assert [p.name for p in done.copied] == ["aaaaaaaaaaa1"] and not done.notes
    assert Record.load(into / "runs" / "tiny" / "kp" / "aaaaaaaaaaa1" / "record.json").test == 90


def test_a_killed_collect_leaves_nothing_a_later_one_keeps(tmp_path):
    a, into = tmp_path / "a", tmp_path / "merged"
    run(a, "aaaaaaaaaaa1", 90)
    left = into / "runs" / "tiny" / "kp" / ".aaaaaaaaaaa1.tmp999999999"  # a collect killed mid-copy
    left.mkdir(parents=True)
    (left / "record.json").write_text("{")
    assert [p.name for p in collect([a], into).copied] == ["aaaaaaaaaaa1"]
    assert not list(into.rglob(".*"))
