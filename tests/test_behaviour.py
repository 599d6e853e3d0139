"""Behaviour fingerprints (suite.behaviour): a docstring, comment or rename keeps a record current, a changed
constant makes it stale; the tiny runs are deterministic and also run an older commit's code.

The edits are made to a copy of the package, run with PYTHONPATH at the copy (the subprocess of ``compute``).
Two subprocesses (the package as it is, and the edited copy) serve the tests but the two that start their own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from suite import behaviour
from suite.behaviour import compute, difference, normalized, same, source_version, stale_reason

ROOT = Path(behaviour.__file__).resolve().parents[1]
BASE_COMMIT = "abdf73f886236e05af418d849f5de90b01d2eda4"
PAIRS = [("lm", "kp"), ("lm", "hashed"), ("lm", "circulant")]
KP, HASHED, CIRCULANT = PAIRS
DOPED = ("lm", "doped_kp")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}; pick another edit"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def original() -> dict:
    return compute([*PAIRS, DOPED])


@pytest.fixture(scope="module")
def edited(tmp_path_factory) -> dict:
    """The package with docstring and comment edits in a shared module (errors.py, imported by every method)
    and in kp's own module, a local variable renamed in hashed.py, and circulant's scratch init scale changed
    (no other method imports circulant.py)."""
    code = tmp_path_factory.mktemp("code")
    shutil.copytree(ROOT / "suite", code / "suite", ignore=shutil.ignore_patterns("__pycache__"))
    pkg = code / "suite"
    edit(pkg / "errors.py", '"""One exception family.', '"""One family of exceptions, edited.\n\n')
    edit(
        pkg / "errors.py", "class DataError(SuiteError):", "# a comment\nclass DataError(SuiteError):  # here"
    )
    edit(pkg / "errors.py", "Missing, corrupt or unreadable data.", "Data that is missing or unreadable.")
    edit(pkg / "compressors/kronecker.py", "Van Loan-Pitsianis rearrangement", "The Van Loan-Pitsianis order")
    edit(pkg / "compressors/kronecker.py", '"""Kronecker products: ', '"""Kronecker products (edited): ')
    edit(pkg / "compressors/hashed.py", "std = w.float().std().item()", "spread = w.float().std().item()")
    edit(pkg / "compressors/hashed.py", "(torch.full((1,), std,", "(torch.full((1,), spread,")
    edit(pkg / "compressors/hashed.py", "dtype=w.dtype) * std,)", "dtype=w.dtype) * spread,)")
    edit(pkg / "compressors/circulant.py", "* w.float().std().item(),)", "* 0.9 * w.float().std().item(),)")
    return compute(PAIRS, code)


def test_docstring_and_comment_edits_keep_source_version_and_fingerprint(original, edited):
    assert edited[KP]["source"] == original[KP]["source"] == source_version(*KP)
    assert same(original[KP], edited[KP]) and stale_reason(original[KP], edited[KP]) is None


def test_a_renamed_local_variable_changes_the_source_version_not_the_fingerprint(original, edited):
    assert edited[HASHED]["source"] != original[HASHED]["source"]
    assert same(original[HASHED], edited[HASHED]) and stale_reason(original[HASHED], edited[HASHED]) is None


def test_a_changed_init_constant_changes_that_methods_fingerprint_only(original, edited):
    assert edited[CIRCULANT]["source"] != original[CIRCULANT]["source"]
    assert not same(original[CIRCULANT], edited[CIRCULANT])
    reason = stale_reason(original[CIRCULANT], edited[CIRCULANT])
    assert reason.startswith("behaviour of lm/circulant changed: val_ppl ") and "->" in reason
    assert edited[KP]["source"] == original[KP]["source"] and same(original[KP], edited[KP])


def test_fingerprints_are_deterministic_and_pass_every_schedule_branch(original, edited):
    # kp's code is the same program in both runs (equal source versions): its numbers are equal to the bit.
    assert edited[KP]["values"] == original[KP]["values"] and edited[KP]["hash"] == original[KP]["hash"]
    for fp in original.values():
        assert fp["status"] == "ok" and fp["recipe"] == behaviour.RECIPE
        lrs = [fp["values"][f"epoch{e}.lr"] for e in (1, 2, 3)]
        assert lrs == [1.0, 0.5, 0.25]  # the learning rate decays after epoch 1
        assert fp["values"]["final.val_ppl"] < 10  # the tiny model learns
        assert not any("seconds" in k or k.endswith("_per_s") for k in fp["values"])
    values = original[DOPED]["values"]  # D is pruned inside the tiny run, with CMR on
    sparsity = [values[f"epoch{e}.d_sparsity"] for e in (1, 2, 3)]
    assert 0 < sparsity[0] < sparsity[1] and values["accounting.matrices.lstm.weight_hh_l0.detail.cmr"] == 0.5


@pytest.mark.slow
def test_a_method_that_does_not_apply_says_so_or_takes_the_vocabulary_matrix():
    fps = compute([("speech", "groupreduce"), ("translation", "groupreduce")])
    speech, translation = fps["speech", "groupreduce"], fps["translation", "groupreduce"]
    assert speech["status"] == "does not apply" and not speech["values"]
    matrices = {
        ".".join(k.split(".")[2:5]) for k in translation["values"] if k.startswith("accounting.matrices.")
    }
    assert matrices == {"decoder.output.weight"}  # its vocabulary matrix


def test_an_older_commit_runs_with_its_own_code(original):
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BASE_COMMIT}^{{commit}}"])
    if known.returncode != 0:
        pytest.skip(f"commit {BASE_COMMIT[:7]} is not in this clone")
    # Without dropout: the code has changed since that commit (its source version differs), but not what a
    # dropout-free kp run computes (since then, only where data loaders draw their random seeds moved).
    key = (*KP, '{"model.dropout": 0.0}')
    old = behaviour.fingerprint_at(BASE_COMMIT, [key])[key]
    now = behaviour.compute([key])[key]
    assert old["status"] == "ok" and old["source"] != now["source"]
    assert same(old, now) and old["variant"] == key[2]


# Without tiny runs -----------------------------------------------------------------------------------------


def test_normalized_source_ignores_docstrings_comments_and_layout_only():
    a = 'def f(x):\n    """Doc."""\n    y = x + 1  # why\n    return y\n\n\nFIELD = 1\n"""Its doc."""\n'
    b = "def f(x):\n    y = (x +\n         1)\n    return y\nFIELD = 1\n"
    assert normalized(a) == normalized(b)
    assert normalized(a) != normalized(a.replace("x + 1", "x + 2"))
    assert normalized(a) != normalized(a.replace("y", "z"))  # a rename is a change of source, not behaviour
    assert normalized('class C:\n    """Only a docstring."""\n') == normalized("class C:\n    pass\n")


def fingerprint(values: dict, status: str = "ok") -> dict:
    return {"family": "lm", "method": "kp", "source": "s", "recipe": behaviour.RECIPE, "status": status,
            "values": values}  # fmt: skip


def test_same_tolerates_float_rounding_but_not_a_change():
    a = fingerprint({"final.val_ppl": 12.3456, "epoch1.lr": 1.0, "accounting.cf": 4.0})
    assert same(a, fingerprint({**a["values"], "final.val_ppl": 12.3456 * (1 + 2e-6)}))
    b = fingerprint({**a["values"], "final.val_ppl": 12.9})
    assert not same(a, b) and stale_reason(a, b) == "behaviour of lm/kp changed: val_ppl 12.3456 -> 12.9"
    assert "accounting.cf 4 -> 5" in difference(a, fingerprint({**a["values"], "accounting.cf": 5.0}))
    assert difference(a, fingerprint({"final.val_ppl": 12.3456})).startswith("values -accounting.cf")
    assert difference(a, fingerprint({}, "does not apply")) == "status ok -> does not apply"
    assert "different tiny runs" in difference(a, {**a, "recipe": "other"})
    assert stale_reason(None, a) == "no behaviour fingerprint for the record of lm/kp"


def test_current_looks_in_the_published_file_then_the_cache_and_computes_only_the_misses(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("SUITE_CACHE_DIR", str(tmp_path / "cache"))
    asked = []

    def fake_compute(pairs):
        asked.append(list(pairs))
        return {p: {**fingerprint({"final.val_ppl": 3.0}), "family": p[0], "method": p[1],
                    "source": source_version(*p)} for p in pairs}  # fmt: skip

    monkeypatch.setattr(behaviour, "compute", fake_compute)
    published = tmp_path / "published.json"
    known = {**fake_compute([KP])[KP], "values": {"final.val_ppl": 2.0}}
    published.write_text(json.dumps({"fingerprints": {f"lm/kp/{known['source']}/{behaviour.RECIPE}": known}}))
    asked.clear()
    got = behaviour.current([KP, HASHED], published)
    assert asked == [[HASHED]] and got[KP]["values"] == {"final.val_ppl": 2.0}
    assert behaviour.current([HASHED], published)[HASHED]["values"] == {"final.val_ppl": 3.0}
    assert asked == [[HASHED]]  # the second time from the local cache
    assert len(json.loads(behaviour.local_cache().read_text())["fingerprints"]) == 1
    behaviour.publish([KP, HASHED], published)
    assert asked == [[HASHED]] and len(json.loads(published.read_text())["fingerprints"]) == 2
