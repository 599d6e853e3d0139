"""A run's identity and its data: a record keeps the fingerprint of the data it read, and a run on damaged or
other data under the same path is trained again, never found. The run-id never changes with the data; a run on
other data than its task's published records gets a folder of its own (``store.data_suffix``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from suite.config import load_run
from suite.data.sources import fingerprint, sha256
from suite.publish import DATA, publish, published_data, record_data
from suite.record import Record
from suite.store import data_fingerprint, find, record_path, run_dir, run_folder
from suite.train import train


@pytest.fixture()
def corpus(tmp_path, corpus_dir) -> Path:
    """A copy of the tiny corpus that a test may damage."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_bytes((corpus_dir / f"{split}.txt").read_bytes())
    return folder


@pytest.fixture()
def preset(tmp_path, tiny_preset, corpus) -> Path:
    spec = yaml.safe_load(tiny_preset.read_text())
    spec["dataset"] = {"path": str(corpus)}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def config(preset, results, **sets):
    return load_run(
        preset, "dense", sets={"results_dir": str(results), "epochs": 1, "wandb": "disabled", **sets}
    )


def damage(corpus: Path, split: str = "valid") -> bytes:
    """One byte of a split changed (its path and size the same); returns the split as it was."""
    path = corpus / f"{split}.txt"
    before = path.read_bytes()
    text = bytearray(before)
    i = text.index(b"w") + 1  # the first digit of the first word (w17 -> w07)
    text[i] = ord("0") if text[i] != ord("0") else ord("1")
    path.write_bytes(bytes(text))
    return before


def test_a_record_keeps_the_fingerprint_of_the_data_it_read(preset, corpus, results):
    cfg = config(preset, results)
    rec = train(cfg, progress_bar=False)
    files = {s: sha256(corpus / f"{s}.txt") for s in ("train", "valid", "test")}
    assert rec.data_fingerprint == files == data_fingerprint(cfg)
    assert Record.load(record_path(run_folder(cfg))).data_fingerprint == files


def test_a_run_on_changed_data_trains_again_rather_than_finding_the_first(preset, corpus, results):
    cfg = config(preset, results)
    first = train(cfg, progress_bar=False)
    assert find(cfg).created == first.created
    damage(corpus)
    assert find(cfg) is None  # the same run-id, other data: not the run asked for
    again = train(cfg, progress_bar=False)
    assert again.run_id == first.run_id == cfg.run_id  # the run-id names the configuration, never the data
    assert again.data_fingerprint["valid"] != first.data_fingerprint["valid"]
    assert again.data_fingerprint["train"] == first.data_fingerprint["train"]
    assert again.val != first.val and again.test == first.test  # it read the changed split
    assert find(cfg).created == again.created  # no published data for this task: the run of the data as it is


def test_on_other_data_than_the_published_a_run_gets_its_own_folder(preset, corpus, results):
    cfg = config(preset, results)
    (results / "published").mkdir(parents=True)
    (results / "published" / DATA).write_text(json.dumps({cfg.task: data_fingerprint(cfg)}))
    first = train(cfg, progress_bar=False)
    assert first.run_id == cfg.run_id and run_folder(cfg).name == cfg.run_id  # the published data: no suffix
    published = damage(corpus)
    other = train(cfg, progress_bar=False)
    assert other.run_id.startswith(f"{cfg.run_id}-d") and len(other.run_id) == 12 + 10
    assert run_folder(cfg) == run_dir(results, cfg.task, "dense", other.run_id)
    assert Record.load(record_path(run_dir(results, cfg.task, "dense", cfg.run_id))).created == first.created
    assert find(cfg).created == other.created and train(cfg).created == other.created  # found on its data
    (corpus / "valid.txt").write_bytes(published)  # back to the published data: the first run, found
    assert find(cfg).created == first.created and run_folder(cfg).name == cfg.run_id


def test_a_record_of_before_is_judged_by_the_published_data(preset, corpus, results, monkeypatch):
    """A record without a fingerprint (published before records kept one) was made on its task's published
    data (results/published/data.json): reused while the data is that, never once it differs."""
    import suite.publish as pub

    monkeypatch.setattr(pub, "SHIPPED", results / "no-checkout")
    cfg = config(preset, results)
    rec = Record(
        run_id=cfg.run_id,
        task=cfg.task,
        method="dense",
        seed=cfg.seed,
        status="ok",
        config=cfg.to_dict(),
        code_version=cfg.code_version,
        final={"val_ppl": 51.0, "test_ppl": 50.0},
    )
    rec.save(record_path(run_folder(cfg)))
    assert find(cfg).test == 50.0  # no published data for the task: trusted, as before
    (results / "published").mkdir(parents=True)
    (results / "published" / DATA).write_text(json.dumps({cfg.task: data_fingerprint(cfg)}))
    assert published_data(cfg.task, results) == data_fingerprint(cfg) and find(cfg).test == 50.0
    damage(corpus)
    assert find(cfg) is None


def test_publish_keeps_the_data_of_the_published_records_and_refuses_other_data(
    preset, corpus, results, tmp_path, monkeypatch
):
    import suite.publish as pub

    monkeypatch.setattr(pub, "SHIPPED", tmp_path / "no-checkout")
    monkeypatch.setattr(pub, "refusal", lambda rec, dest, results_dir: pub.data_refusal(rec, results_dir))
    cfg = config(preset, tmp_path / "mine")
    first = train(cfg, progress_bar=False)
    written, refused = publish([run_folder(cfg)], results, fingerprint=lambda r: {}, echo=lambda s: None)
    assert refused == [] and published_data(cfg.task, results) == first.data_fingerprint
    damage(corpus)
    train(cfg.replace(seed=1), progress_bar=False)
    written, refused = publish(
        [run_folder(cfg.replace(seed=1))], results, fingerprint=lambda r: {}, echo=lambda s: None
    )
    assert written == [] and "other data than the published records" in refused[0]
    (results / "published" / DATA).unlink()
    assert record_data(results)[cfg.task] == fingerprint(
        {s: corpus / f"{s}.txt" for s in ("train", "valid", "test")}
    )


def test_the_committed_data_fingerprints_cover_every_published_task():
    root = Path(__file__).resolve().parent.parent / "results" / "published"
    known = json.loads((root / DATA).read_text())
    tasks = {p.parent.parent.parent.name for p in root.glob("*/*/*/record.json")}
    assert tasks and tasks <= set(known)


def test_runs_on_other_data_never_share_a_row_of_the_tables(preset, corpus, results):
    from suite.report import runs_frame, summary

    cfg = config(preset, results)
    (results / "published").mkdir(parents=True)
    (results / "published" / DATA).write_text(json.dumps({cfg.task: data_fingerprint(cfg)}))
    first = train(cfg, progress_bar=False)
    damage(corpus)
    other = train(cfg, progress_bar=False)
    rows = summary(runs_frame([first, other]))
    assert len(rows) == 2 and list(rows["n_ok"]) == [1, 1] and rows["setup_id"].nunique() == 2
    assert sorted(rows["data"]) == sorted({other.run_id[-8:], runs_frame([first])["data"][0]})
