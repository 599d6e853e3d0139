"""Published speed benchmarks: `suite publish` takes a benchmark's JSON only from a clean commit of main, and
docs/speed.md, the leaderboard's speed column and the speed claims read it."""

import json
import subprocess

from sweep_fixtures import ROOT

from suite import cli
from suite.speed import document, speedups


def _bench(tmp_path, dirty=False, sha=None):
    sha = (
        sha
        or subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    form = {
        "form": "compiled",
        "median_us": 100.0,
        "cold_us": 300.0,
        "compile_s": 1.0,
        "macs": 1000,
        "weight_bytes": 4096,
    }
    kp = {**form, "median_us": 10.0, "cold_us": 20.0, "macs": 80, "weight_bytes": 512}
    bench = {
        "benchmark": "lstm_step_batch1",
        "shape": {"hidden": 16, "input": 8},
        "threads": 1,
        "reps": 2,
        "inner": 2,
        "dense_baseline": "compiled",
        "dense_baseline_cold": "compiled",
        "baselines": [form, {"form": "addmv", "median_us": 150.0, "cold_us": 400.0}],
        "rows": [
            {
                "method": "dense",
                "factor": 1.0,
                "cf": 1.0,
                "form": "compiled",
                "median_us": 100.0,
                "speedup_vs_dense": 1.0,
                "cold_speedup_vs_dense": 1.0,
                "forms": [form],
            },
            {
                "method": "kp",
                "factor": 25.0,
                "cf": 26.0,
                "form": "compiled",
                "median_us": 10.0,
                "speedup_vs_dense": 10.0,
                "cold_speedup_vs_dense": 15.0,
                "forms": [kp],
            },
        ],
        "provenance": {"git_sha": sha, "git_dirty": dirty, "versions": {"torch": "x"}},
    }
    path = tmp_path / f"infer-{dirty}.json"
    path.write_text(json.dumps(bench))
    return path


def test_publish_takes_a_clean_benchmark_and_refuses_a_dirty_one(tmp_path, capsys):
    results = tmp_path / "results"
    assert cli.main(["publish", str(_bench(tmp_path, dirty=True)), "--results", str(results)]) == 2
    assert "uncommitted" in capsys.readouterr().err
    assert not (results / "published" / "bench").exists()
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    assert cli.main(["publish", str(junk), "--results", str(results)]) == 2
    assert "not a benchmark" in capsys.readouterr().err
    assert cli.main(["publish", str(_bench(tmp_path)), "--results", str(results)]) == 0
    assert (results / "published" / "bench" / "infer.json").is_file()
    assert speedups(results)[("kp", 25.0)] == 10.0


def test_speed_document_names_the_baselines_and_explains_each_ratio(tmp_path):
    results = tmp_path / "results"
    assert cli.main(["publish", str(_bench(tmp_path)), "--results", str(results)]) == 0
    text = document(results)
    assert "**compiled**" in text and "addmv 150.0 us" in text
    row = next(line for line in text.splitlines() if line.startswith("| kp"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:8] == ["kp", "25", "26.00", "compiled", "10.0", "10.0x", "38%", "15.0x"]
    assert cells[-2:] == ["12.5x", "0.80"]  # MAC ratio 1000 / 80; rate 10 / 12.5
