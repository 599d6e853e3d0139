"""The store: where records live (one store per pipeline stage), the one path to a record, and the lookup of a
finished run (``find``), in its own store or, for a trained init's baseline, in any (``anywhere``)."""

from __future__ import annotations

from suite.config import load_run
from suite.record import Record
from suite.store import RECORD, find, load_records, locate, record_path, run_dir, run_folder


def config(preset, results, store=None, **sets):
    return load_run(preset, "dense", sets={"results_dir": str(results), "store": store, **sets})


def put(cfg, store=None, status="ok", ppl=90.0) -> Record:
    """A finished record of ``cfg``'s run in ``store`` (its own store when None)."""
    rec = Record(
        run_id=cfg.run_id,
        task=cfg.task,
        method=cfg.method,
        seed=cfg.seed,
        status=status,
        config=cfg.to_dict(),
        code_version=cfg.code_version,
        final={"val_ppl": ppl + 1, "test_ppl": ppl} if status == "ok" else {},
        reason=None if status == "ok" else "diverged",
    )
    rec.save(record_path(run_dir(cfg.results_dir, cfg.task, cfg.method, cfg.run_id, store or cfg.store)))
    return rec


def test_a_run_folder_is_under_its_store(tiny_preset, results):
    cfg = config(tiny_preset, results, store="baselines-tiny")
    assert run_folder(cfg) == results / "runs" / "baselines-tiny" / cfg.task / "dense" / cfg.run_id
    assert run_folder(cfg.replace(store=None)) == results / "runs" / cfg.task / "dense" / cfg.run_id
    assert record_path(run_folder(cfg)) == run_folder(cfg) / RECORD


def test_find_looks_in_its_own_store_and_anywhere_in_every_store(tiny_preset, results):
    baseline = config(tiny_preset, results, store="baselines-tiny")
    put(baseline, ppl=80.0)
    sweep = baseline.replace(store="sweep-tiny")
    assert find(baseline).test == 80.0
    assert find(sweep) is None  # a stage reuses only its own runs
    assert find(sweep, anywhere=True).test == 80.0  # a trained init's baseline: made by another stage
    assert locate(results, baseline.task, "dense", baseline.run_id, "sweep-tiny") == run_folder(baseline)
    put(sweep, ppl=70.0)
    assert find(sweep, anywhere=True).test == 70.0  # its own store first


def test_find_anywhere_reads_the_top_store_and_never_a_staging_folder(tiny_preset, results):
    cfg = config(tiny_preset, results)
    staging = run_folder(cfg).with_name(f".{cfg.run_id}.tmp12345")
    put(cfg, ppl=60.0)
    run_folder(cfg).rename(staging)  # a run still being built: not a finished run
    assert find(cfg.replace(store="other"), anywhere=True) is None
    staging.rename(run_folder(cfg))
    assert find(cfg.replace(store="other"), anywhere=True).test == 60.0


def test_a_failed_run_is_not_found(tiny_preset, results):
    cfg = config(tiny_preset, results, store="s")
    put(cfg, status="failed")
    assert find(cfg) is None and find(cfg, anywhere=True) is None


def test_a_run_whose_replacement_was_killed_is_found_aside(tiny_preset, results):
    cfg = config(tiny_preset, results)
    put(cfg, ppl=50.0)
    aside = run_folder(cfg).with_name(f".{cfg.run_id}.old999999999")
    run_folder(cfg).rename(aside)  # killed between moving the old folder aside and moving the new one in
    assert record_path(run_folder(cfg)) == aside / RECORD
    assert find(cfg).test == 50.0
    assert [r.test for r in load_records(results)] == [50.0]


def test_load_records_reads_every_store_and_the_published_records(tiny_preset, results):
    a = config(tiny_preset, results, store="baselines-tiny")
    b = config(tiny_preset, results, seed=1)
    put(a), put(b), put(config(tiny_preset, results, seed=2), status="failed")
    published = results / "published" / a.task / "dense" / "0123456789ab"
    Record.load(record_path(run_folder(a))).save(record_path(published))
    assert len(load_records(results)) == 3 and len(load_records(results, status=None)) == 4
