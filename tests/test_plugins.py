"""Plugins by entry point: the tests' plugin package (tests/plugins: ``suite_blockdiag`` and its dist-info) is on
the path as an installed distribution; its method is listed with its origin, trains through ``suite train``,
goes through the shared method matrix (tests/test_methods.py) and its records carry its name and version. A
broken plugin is one note, not a broken command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint

from conftest import PLUGINS

from suite import plugins
from suite.cli import main
from suite.compressors import REGISTRY, Method, register
from suite.version import code_files


def test_a_plugin_method_is_listed_with_its_origin(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(x for x in lines if x.startswith("blockdiag")).endswith("[plugin suite-blockdiag 0.1.0]")
    assert next(x for x in lines if x.startswith("int8")).endswith("[plugin suite-int8 0.2.0]")
    assert not [x for x in lines if "[plugin " in x and not x.startswith(("blockdiag", "int8"))]


def test_a_plugin_method_trains_and_its_record_names_the_plugin(tiny_preset, tmp_path):
    results = tmp_path / "results"
    argv = [
        "train",
        str(tiny_preset),
        "--method",
        "blockdiag",
        "--factor",
        "2",
        "--set",
        f"results_dir={results}",
    ]
    assert main([*argv, "--set", "epochs=1"]) == 0
    (path,) = results.glob("runs/**/blockdiag/*/record.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["accounting"]["cf"] >= 2
    assert rec["provenance"]["plugins"]["method"] == {
        "plugin": "suite-blockdiag",
        "version": "0.1.0",
        "entry_point": "blockdiag = suite_blockdiag",
    }
    # The code version covers the plugin's module as it covers the suite's own.
    assert any(f.endswith("suite_blockdiag/__init__.py") for f in code_files("lm", "blockdiag"))


def test_a_broken_plugin_is_a_note_and_leaves_nothing_registered(capsys):
    def broken():
        register(
            Method(name="half_made", config=REGISTRY["kp"].config, apply=REGISTRY["kp"].apply, summary="x")
        )
        raise RuntimeError("missing dependency")

    eps = [
        EntryPoint(name="gone", value="no_such_module_anywhere", group="suite.methods"),
        EntryPoint(name="half", value=f"{__name__}:BROKEN", group="suite.methods"),
    ]
    globals()["BROKEN"] = broken
    before = set(REGISTRY)
    original = plugins.entry_points
    plugins.entry_points = lambda group: eps
    try:
        plugins.load("methods", REGISTRY, register, Method)
    finally:
        plugins.entry_points = original
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 2 and all(n.startswith("note: plugin ") for n in notes)
    assert "gone" in notes[0] and "missing dependency" in notes[1]
    assert set(REGISTRY) == before


def test_every_command_still_works_beside_a_broken_installed_plugin(tmp_path):
    site = tmp_path / "site"
    info = site / "suite_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: suite-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[suite.methods]\nbroken = suite_broken_missing\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGINS)])}
    proc = subprocess.run(
        [sys.executable, "-m", "suite.cli", "methods"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert [x for x in proc.stderr.splitlines() if x.strip()] == [
        x for x in proc.stderr.splitlines() if x.startswith("note: plugin broken")
    ]
    assert "blockdiag" in proc.stdout and "doped_kp" in proc.stdout
