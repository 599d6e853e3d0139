"""The leaderboard: full-scale results per task, one row per method and asked CF, as text and as Markdown.

Built from the summary (``report.summary``) of every current record, published (results/published) and the user's
own: only full-scale configurations (profile ``paper``, all of the data) of the default targets; per method and
asked CF the setting chosen on validation (``report.selected``: learning rate, CMR rate, ...). Columns: method and
its non-default settings, the asked and the achieved CF (rounded down), the test metric (with its 95% CI where
more than one seed finished; a single seed's WER with its count of word errors), its change against dense in
percent, the validation metric, seeds (finished/asked) and the commits that made the runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .compressors.accounting import format_cf
from .files import write_text
from .publish import bench_file
from .record import format_metric
from .report import DEFAULT_TARGETS, SELECT_KEYS, epochs_frame, load, runs_frame, selected, summary
from .report_text import format_table, settings_text
from .speed import speedups


def full_scale(summ: pd.DataFrame) -> pd.DataFrame:
    """The configurations of full-scale runs: paper profile, every token of every split (no data fractions; a
    precision other than fp32 stays in its own rows, by its budget)."""
    if summ.empty:
        return summ
    return summ[(summ["profile"] == "paper") & ~summ["budget"].str.contains("/tr|/ev", regex=True)]


def leaderboard(summ: pd.DataFrame) -> pd.DataFrame:
    """One row per task, method and asked CF (default targets): the setting chosen on validation, its metrics,
    and its change against the task's dense model (the dense row chosen the same way, same training budget)."""
    rows = full_scale(summ)
    if rows.empty:
        return rows
    chosen = selected(rows)
    chosen = chosen[(chosen["targets"] == DEFAULT_TARGETS) & ~chosen["stale"].astype(bool)].copy()
    # How many learning rates the choice was made among (finished, failed or stopped by the race).
    keys = [k for k in SELECT_KEYS if k in rows]
    rates = rows.assign(targets=rows["targets"].fillna(DEFAULT_TARGETS)).groupby(keys, dropna=False)["lr"]
    tried = rates.nunique().rename("lrs_tried").reset_index()
    chosen = chosen.merge(tried, on=keys, how="left")
    dense = chosen[chosen["method"] == "dense"].set_index(["task", "budget"])["test_mean"]
    ref = [dense.get((t, b), np.nan) for t, b in zip(chosen["task"], chosen["budget"])]
    chosen["vs_dense_pct"] = 100.0 * (chosen["test_mean"] - ref) / ref
    chosen["settings"] = [settings_text(r) for _, r in chosen.iterrows()]
    # dense first, then by asked CF and from the best test metric down (BLEU is higher-better)
    sign = np.where(chosen["direction"] == "maximize", -1.0, 1.0)
    chosen = chosen.assign(_o=chosen["method"].ne("dense"), _worse=sign * chosen["test_mean"])
    order = ["task", "budget", "_o", "factor", "_worse"]
    return chosen.sort_values(order, kind="stable").drop(columns=["_o", "_worse"]).reset_index(drop=True)


TEST_WORDS = {"fsdd-digits": 4106}
"""Reference words in a WER task's test utterances at its preset's settings (fsdd-digits: 1,000 utterances drawn
from the 300 test clips; tests/test_publish.py counts them on the real data): a single seed's test WER is shown
with its error count, so that a difference of a few errors reads as one."""


def _test(row) -> str:
    text = format_metric(row.test_mean)
    if row.n_ok > 1 and np.isfinite(row.test_ci95):
        return f"{text} +- {format_metric(row.test_ci95)}"
    if row.metric == "wer" and row.task in TEST_WORDS and np.isfinite(row.test_mean):
        return f"{text} ({round(row.test_mean * TEST_WORDS[row.task])} errors)"
    return text


def display(board: pd.DataFrame, speed: dict | None = None) -> dict[str, pd.DataFrame]:
    """Per task (and training budget), the leaderboard as the cells people read; ``speed``: (method, CF) ->
    batch-1 speed-up of the published inference benchmark (``speed.speedups``)."""
    speed = speed or {}
    out = {}
    for (task, budget, metric, direction), rows in board.groupby(
        ["task", "budget", "metric", "direction"], sort=False
    ):
        better = "higher" if direction == "maximize" else "lower"
        ups = [
            1.0 if r.method == "dense" else speed.get((r.method, float(r.factor))) for r in rows.itertuples()
        ]
        out[f"{task} ({budget}; test {metric}, {better} is better)"] = pd.DataFrame(
            {
                "method": rows["method"],
                "settings": rows["settings"],
                "lr (of tried)": [
                    f"{r.lr:g} (of {r.lrs_tried:g})" if pd.notna(r.lr) else "-" for r in rows.itertuples()
                ],
                "CF asked": rows["factor"].map(lambda x: f"{x:g}"),
                "CF": rows["cf"].map(format_cf),
                f"test {metric}": [_test(r) for r in rows.itertuples()],
                "vs dense": rows["vs_dense_pct"].map(lambda x: f"{x:+.1f}%" if np.isfinite(x) else "-"),
                f"val {metric}": rows["val_mean"].map(format_metric),
                "seeds": [f"{r.n_ok}/{r.n_asked}" + ("*" if r.partial else "") for r in rows.itertuples()],
                "batch-1 speed-up": ["-" if x is None else f"{x:.1f}x" for x in ups],
                "commit": rows["commit"],
            }
        )
    return out


FOOTER = (
    "settings and lr chosen on validation (among the rates tried), test reported for the choice; CF: achieved on the LSTM matrices, "
    "rounded down; vs dense: change of the test metric; * = fewer seeds finished than asked; batch-1 speed-up: "
    "one LSTM step of the method at that CF against the fastest dense step, hidden 650, one thread (docs/speed.md)"
)


def footer(board: pd.DataFrame) -> str:
    """FOOTER, and where a single seed's WER is shown with its error count, how many words its test set has."""
    counted = sorted(
        {r.task for r in board.itertuples() if r.metric == "wer" and r.task in TEST_WORDS and r.n_ok == 1}
    )
    words = ", ".join(f"{TEST_WORDS[t]:,} words in {t}" for t in counted)
    return FOOTER + (
        f"; errors: a single seed's word errors on the test set ({words}); a difference of a few errors is "
        "within noise (docs/claims.md tests the differences it uses)"
        if counted
        else ""
    )


def format_text(board: pd.DataFrame, results: str | Path = "results") -> str:
    if board.empty:
        return f"no full-scale results yet ({Path(results) / 'published'} is empty; `suite publish` adds finished runs)"
    shown = display(board, speedups(results))
    parts = [f"{title}\n{table.to_string(index=False)}" for title, table in shown.items()]
    return "\n\n".join(parts) + "\n" + footer(board)


def format_markdown(board: pd.DataFrame, results: str | Path = "results") -> str:
    if board.empty:
        return "No full-scale results yet.\n"
    parts = [
        f"### {title}\n\n{table.to_markdown(index=False, disable_numparse=True)}\n"
        for title, table in display(board, speedups(results)).items()
    ]
    return "\n".join(parts) + "\n" + footer(board) + ".\n"


def report_text(summ: pd.DataFrame, left_out: int = 0, results: str | Path = "results") -> str:
    """What ``suite report`` prints: the leaderboard (full scale) first, then every other configuration (smoke
    runs: they check the pipeline, not the methods), each with the setting chosen per method and CF. ``results``:
    the folder the records were read from."""
    if summ.empty and not left_out:
        runs, published = Path(results) / "runs", Path(results) / "published"
        return (
            f"no runs under {results} yet ({runs} and {published} hold no record); run `suite train ...` or a "
            "sweep first, or pass --results"
        )
    board = leaderboard(summ)
    full = full_scale(summ)
    rest = summ.drop(index=full.index) if not summ.empty else summ
    text = "LEADERBOARD (full scale)\n" + format_text(board, results)
    stale = full[full["stale"].astype(bool)] if not full.empty else full
    if not stale.empty:
        text += "\n\nSTALE (full scale, made by code that behaves otherwise now)\n"
        text += format_table(selected(stale))
    if not rest.empty:
        text += "\n\nPIPELINE CHECK (smoke scale: checks the pipeline, not the methods)\n"
        text += format_table(selected(rest))
    if left_out:
        text += f"\n({left_out} record(s) of older code left out; `suite report --stale` shows them)"
    return text


GENERATED = (
    "<!-- Generated by `suite report --docs docs` from the records in results/published/; do not edit by hand: "
    "tests/test_publish.py fails when this file and the records disagree. -->\n\n"
)


def documents(summ: pd.DataFrame, records: list, results_dir: str | Path = "results") -> dict[str, str]:
    """docs/results.md (the leaderboard, and the embedding/softmax runs without fine-tuning), docs/claims.md
    (the source papers' claims against the records), built from the summary of ``records``, and docs/speed.md
    (the published speed benchmarks of ``results_dir``)."""
    from .claims import check_claims
    from .speed import document as speed_document

    results = GENERATED + "# Full-scale results\n\n" + format_markdown(leaderboard(summ), results_dir)
    vocab = vocabulary_table(summ)
    if not vocab.empty:
        results += (
            "\n## Embedding and softmax compressed without fine-tuning (F6)\n\n"
            "Test perplexity of the dense model with one vocabulary matrix compressed and nothing retrained "
            "(achieved CF in brackets).\n\n" + vocab.to_markdown(index=False, disable_numparse=True) + "\n"
        )
    claims = (
        GENERATED
        + "# The source papers' claims, checked\n\n"
        + "Each verdict follows the rule written with the claim in suite/claims.py.\n\n"
        + check_claims(summ, records).to_markdown(index=False, disable_numparse=True)
        + "\n"
    )
    return {"results.md": results, "claims.md": claims, "speed.md": GENERATED + speed_document(results_dir)}


def vocabulary_table(summ: pd.DataFrame) -> pd.DataFrame:
    """The F6 runs (vocabulary-matrix targets) at full scale: one row per target and CF, a column per method
    (and l_p exponent), the test metric with the achieved CF where it differs from the asked one."""
    rows = full_scale(summ)
    if rows.empty or "targets" not in rows:
        return pd.DataFrame()
    rows = rows[rows["targets"].isin(["decoder.weight", "embedding.weight"]) & ~rows["stale"].astype(bool)]
    if rows.empty:
        return pd.DataFrame()
    label = rows["method"] + rows.get("p", pd.Series(np.nan, index=rows.index)).map(
        lambda p: f" p={p:g}" if pd.notna(p) else ""
    )
    cell = [
        format_metric(r.test_mean) + ("" if abs(r.cf - r.factor) < 0.01 else f" ({format_cf(r.cf)})")
        for r in rows.itertuples()
    ]
    matrix = rows["targets"].map({"decoder.weight": "softmax", "embedding.weight": "embedding"})
    table = pd.DataFrame({"matrix": matrix, "CF": rows["factor"], "method": label, "cell": cell})
    wide = table.pivot_table(index=["matrix", "CF"], columns="method", values="cell", aggfunc="first")
    wide = wide.reset_index().rename_axis(columns=None)
    return wide.assign(CF=wide["CF"].map(lambda x: f"{x:g}"))


def write_docs(results_dir, folder) -> list:
    """docs/results.md and docs/claims.md (``documents``) and the figures of the published records alone
    (docs/figures/: F1, F2, F5, F6 as PNG), from the current published records under ``results_dir``."""
    from .figures import make_figures

    records = [r for r in load(results_dir)[0] if r.published]
    runs = runs_frame(records)
    summ = summary(runs)
    written = []
    for name, text in documents(summ, records, results_dir).items():
        written.append(write_text(Path(folder) / name, text, "results document"))
    with tempfile.TemporaryDirectory() as tmp:
        summ.to_csv(Path(tmp) / "summary.csv", index=False)
        epochs_frame(records, runs).to_csv(Path(tmp) / "epochs.csv", index=False)
        bench = bench_file(results_dir, "infer.json") or Path(tmp) / "none.json"
        made = make_figures(tmp, Path(tmp) / "figures", {"bench": bench})
        figures = Path(folder) / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        for paths, _note in made.values():
            for path in paths:
                if path.suffix == ".png":
                    written.append(shutil.copyfile(path, figures / path.name))
    return written
