"""The command line: one-line errors with exit code 2 and nothing written; the happy path prints a summary."""

from pathlib import Path

import pytest

from suite.cli import main


def fails_cleanly(capsys, results, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert match in err, err
    assert not results.exists() or not any(results.rglob("*")), "nothing may be written on bad input"
    return err


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--method", "nope"], ["unknown method 'nope'"]),
        (["--method", "svd", "--factor", "100000"], ["cannot reach CF 100000", "smaller --factor"]),
        (["--method", "svd", "--factor", "0.5"], [">= 1"]),
        (["--threads", "0"], ["threads must be an integer >= 1"]),
    ],
    ids=["unknown-method", "impossible-cf", "factor-below-one", "threads-below-one"],
)
def test_bad_train_arguments(capsys, tiny_preset, results, args, needles):
    err = fails_cleanly(
        capsys, results, ["train", str(tiny_preset), *args, "--set", f"results_dir={results}"], needles[0]
    )
    for needle in needles[1:]:
        assert needle in err, err


def test_missing_preset_and_malformed_yaml(capsys, tmp_path, results):
    fails_cleanly(capsys, results, ["train", str(tmp_path / "none.yaml")], "no such file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: ptb\nmodel: {hidden: 2\n")
    fails_cleanly(capsys, results, ["train", str(bad)], "is not valid YAML")


def test_bad_override(capsys, tiny_preset, results):
    fails_cleanly(
        capsys, results, ["train", str(tiny_preset), "--set", "nonsense=1"], "unknown override 'nonsense'"
    )
    fails_cleanly(capsys, results, ["train", str(tiny_preset), "--set", "epochs=-1"], "train.epochs")
    fails_cleanly(capsys, results, ["train", str(tiny_preset), "--set", "novalue"], "key=value")


def test_missing_data(capsys, tmp_path, results, monkeypatch):
    monkeypatch.setenv("SUITE_DATA_DIR", str(tmp_path / "empty"))
    preset = tmp_path / "p.yaml"
    preset.write_text("dataset: ptb\nmodel: {hidden: 8, layers: 1}\n")
    fails_cleanly(
        capsys, results, ["train", str(preset), "--set", f"results_dir={results}"], "SUITE_DATA_DIR"
    )


def test_bad_arguments_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_train_then_report(capsys, tiny_preset, results):
    assert main(["train", str(tiny_preset), "--set", "profile=smoke", "--set", f"results_dir={results}"]) == 0
    out = capsys.readouterr().out
    assert "tiny dense seed 0: test ppl" in out and "CF 1.00" in out
    assert (
        main(
            [
                "train",
                str(tiny_preset),
                "--method",
                "svd",
                "--factor",
                "2",
                "--set",
                "profile=smoke",
                "--set",
                f"results_dir={results}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["report", "--results", str(results)]) == 0
    board, _, table = capsys.readouterr().out.partition("PIPELINE CHECK")
    assert board.startswith("LEADERBOARD") and "no full-scale results yet" in board
    lines = [ln.split() for ln in table.splitlines()[1:]]
    assert lines[0][:4] == ["task", "profile", "budget", "method"]
    assert [ln[3] for ln in lines[1:3]] == ["dense", "svd"]
    assert "chosen on the validation metric" in table


def test_methods_lists_the_registry(capsys):
    from suite.compressors import available

    assert main(["methods"]) == 0
    listed = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert listed == available()


def test_train_takes_profile_and_results_as_the_other_commands_do(tiny_preset, tmp_path, capsys):
    """``--profile`` and ``--results`` on train mean what they mean on sweep and report: the same run as
    ``--set profile=... --set results_dir=...``, and the printed record path is where the record is."""
    from suite.cli import main

    out = tmp_path / "elsewhere"
    assert (
        main(["train", str(tiny_preset), "--profile", "smoke", "--results", str(out), "--set", "epochs=1"])
        == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    path = Path(line.rsplit("-> ", 1)[1])
    assert path.is_file() and path.is_relative_to(out)
    args = [
        "train",
        str(tiny_preset),
        "--set",
        "profile=smoke",
        "--set",
        f"results_dir={out}",
        "--set",
        "epochs=1",
    ]
    assert main(args) == 0
    assert "found finished run" in capsys.readouterr().err  # the very same run


def test_methods_verbose_lists_each_setting_with_type_default_range_and_doc(capsys):
    assert main(["methods", "-v"]) == 0
    out = capsys.readouterr().out
    assert "cmr: float = 0.0, in [0, 1)  Co-matrix dropout rate" in out
    assert "anneal_end: float = 0.75, in (0, 1]  ... and reaches s_f at this fraction" in out
    assert "cmr_mode: str = 'element', one of element, matrix  ``element``" in out
    assert "init: str = 'trained', 'trained'  " in out  # svd's, narrowed from the base's
