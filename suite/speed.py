"""docs/speed.md: the published speed benchmarks as tables (``suite report --docs docs``), and the batch-1
speed-up each leaderboard row and each speed claim reads. Every number comes from the benchmark's JSON in
results/published/bench/, made from a clean commit of main (``suite publish results/bench/infer.json``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .compressors.accounting import format_cf
from .publish import published_bench

INFER, GENERATE, DECODE = "infer.json", "generate.json", "decode.json"


def speedups(results_dir: str | Path = "results") -> dict[tuple[str, float], float]:
    """(method, asked CF) -> warm batch-1 speed-up over the fastest dense step, from the published benchmark."""
    bench = published_bench(results_dir, INFER) or {"rows": []}
    return {(r["method"], float(r["factor"])): r["speedup_vs_dense"] for r in bench["rows"]}


def _form(row: dict, name: str) -> dict:
    return next((f for f in row.get("forms", []) if f["form"] == name), {})


def infer_table(bench: dict) -> pd.DataFrame:
    """One row per (method, CF): its fastest form, the speed-ups, and why the speed-up is what it is: the
    multiply-adds against dense's (``MAC ratio``: the speed-up at dense's rate) and the rate it runs at."""
    dense_macs = max((f.get("macs", 0) for f in bench["baselines"]), default=0)
    rows = []
    for r in bench["rows"]:
        if r["method"] == "dense":
            continue
        comp = _form(r, "compiled")
        macs = comp.get("macs")
        ratio = dense_macs / macs if macs and dense_macs else float("nan")
        rows.append(
            {
                "method": r["method"],
                "CF asked": f"{r['factor']:g}",
                "CF": format_cf(r["cf"]),
                "form": r["form"],
                "us": f"{r['median_us']:.1f}",
                "speed-up": f"{r['speedup_vs_dense']:.1f}x",
                "of CF": f"{100 * r['speedup_vs_dense'] / r['cf']:.0f}%",
                "cold": f"{r['cold_speedup_vs_dense']:.1f}x",
                "eager us": f"{_form(r, 'eager').get('median_us', float('nan')):.1f}",
                "compile s": f"{comp['compile_s']:.2f}" if comp else "-",
                "KB read": f"{comp['weight_bytes'] / 1024:.0f}" if comp else "-",
                "MAC ratio": f"{ratio:.1f}x" if ratio == ratio else "-",
                "rate vs dense": f"{r['speedup_vs_dense'] / ratio:.2f}" if ratio == ratio else "-",
            }
        )
    return pd.DataFrame(rows)


def generate_table(bench: dict) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "shape": f"{Path(r['preset']).stem} ({r['shape']['layers']}x{r['shape']['hidden']}, "
            f"vocab {r['shape']['vocab']})",
            "LSTM": f"{r['lstm']} {format_cf(r['lstm_cf'])}" if r["lstm"] != "dense" else "dense",
            "softmax": f"{r['softmax']} {format_cf(r['softmax_cf'])}" if r["softmax"] != "dense" else "dense",
            "form": r["form"],
            "us/token": f"{r['us_per_token']:.0f}",
            "tokens/s": f"{r['tokens_per_s']:.0f}",
            "speed-up": f"{r['speedup_vs_dense']:.1f}x",
            "KB/token": f"{r['weight_bytes_per_token'] / 1024:.0f}",
            "compile s": f"{r['compile_s']:.1f}" if r["form"] == "compiled" else "-",
        }
        for r in bench["rows"]
    )


def _made(bench: dict) -> str:
    prov = bench["provenance"]
    return (
        f"commit {prov['git_sha'][:7]}, {bench['threads']} thread, torch {prov['versions'].get('torch', '?')}"
    )


def _fits(infer: dict) -> str:
    c = infer.get("caches") or {}
    dense = max((f.get("weight_bytes", 0) for f in infer["baselines"]), default=0)
    if not (c.get("L2") and c.get("L3") and dense):
        return ""
    return (
        f" The dense layer's weights, {dense / 2**20:.1f} MB, fit this CPU's {c['L3'] / 2**20:.0f} MB L3 cache "
        f"(warm steps read them from there); a compressed layer under {c['L2'] / 2**20:.0f} MB fits its L2."
    )


def _tiers(gen: dict) -> str:
    """Why a speed-up can exceed the ratio of bytes read: the weights a token reads against the caches."""
    l3 = (gen.get("caches") or {}).get("L3")
    if not l3:
        return ""
    lines = []
    for preset in dict.fromkeys(r["preset"] for r in gen["rows"]):
        rows = [r for r in gen["rows"] if r["preset"] == preset]
        dense = next(r for r in rows if r["lstm"] == "dense" and r["softmax"] == "dense")
        small = min(rows, key=lambda r: r["weight_bytes_per_token"])
        lines.append(
            f"- {Path(preset).stem}: dense reads {dense['weight_bytes_per_token'] / 2**20:.1f} MB per token "
            f"({'more' if dense['weight_bytes_per_token'] > l3 else 'less'} than the {l3 / 2**20:.0f} MB L3 "
            f"cache); the smallest model here reads {small['weight_bytes_per_token'] / 2**20:.1f} MB."
        )
    return (
        "\nWhere the weights live decides the speed. A model whose weights exceed the last-level cache streams "
        "them from memory for every token; one that fits is read from cache, several times faster per byte, so "
        "a speed-up can exceed the ratio of bytes read:\n\n" + "\n".join(lines) + "\n"
    )


def document(results_dir: str | Path = "results") -> str:
    """docs/speed.md from the published benchmarks."""
    text = "# Batch-1 inference speed\n\n"
    infer = published_bench(results_dir, INFER)
    if infer is None:
        text += "No speed benchmark is published yet (`suite bench infer`, then `suite publish results/bench/infer.json`).\n"
    else:
        shape = infer["shape"]
        base = ", ".join(
            f"{f['form']} {f['median_us']:.1f} us (cold {f['cold_us']:.1f}"
            + (f", compiled in {f['compile_s']:.1f} s" if "compile_s" in f else "")
            + ")"
            for f in infer["baselines"]
        )
        text += (
            f"## One LSTM step (`suite bench infer`)\n\nHidden {shape['hidden']}, input {shape['input']}, "
            f"{_made(infer)}; median of {infer['reps']} x {infer['inner']} warm steps per form, all forms "
            f"interleaved in one process.\n\n**Dense baselines:** {base}. Speed-ups divide the fastest, "
            f"**{infer['dense_baseline']}** (cold: {infer['dense_baseline_cold']}), by each method's fastest "
            f"form.{_fits(infer)}\n\n"
            + infer_table(infer).to_markdown(index=False, disable_numparse=True)
            + "\n\n*of CF*: the speed-up as a share of the achieved CF (a step that reads CF times fewer bytes "
            "could approach CF times faster). *MAC ratio*: dense's multiply-adds over the method's (a sparse "
            "nonzero counts one): the speed-up the method would reach at dense's rate per multiply-add. *rate "
            "vs dense*: speed-up / MAC ratio, how fast its multiply-adds run against dense's (below 1: small "
            "products whose reductions and loop set-up are not amortized, and index reads of sparse parts). "
            "speed-up = MAC ratio x rate. *cold*: the first step after the other models evicted the caches. "
            "*compile s*: compiling the step, first call included, never in the medians.\n"
        )
    gen = published_bench(results_dir, GENERATE)
    if gen is not None:
        text += (
            f"\n## Greedy generation of a whole language model (`suite bench generate`)\n\n{_made(gen)}; median "
            f"of {gen['reps']} x {gen['tokens']} tokens; softmax word counts: {gen['softmax_counts']}. "
            "Speed-ups against the fastest dense form of the same shape.\n\n"
            + generate_table(gen).to_markdown(index=False, disable_numparse=True)
            + "\n"
            + _tiers(gen)
        )
    dec = published_bench(results_dir, DECODE)
    if dec is not None:
        table = pd.DataFrame(
            {
                "task": r["task"],
                "method": r["method"],
                "CF": format_cf(r["cf"]),
                "decoding": r["mode"],
                "ms/item": f"{r['ms_per_item']:.2f}",
                "items/s": f"{r['items_per_s']:.1f}",
                "speed-up": f"{r['speedup_vs_dense']:.2f}x",
                "ms/output token": f"{r['ms_per_output_token']:.3f}",
            }
            for r in dec["rows"]
        )
        text += (
            f"\n## Translation and speech decoding of exported models (`suite bench decode`)\n\n{_made(dec)}; "
            f"batch 1, median over the first {dec['items']} test items x {dec['reps']}. Each model is written by "
            "`Compressed.export` and read back with `suite.load`, then decoded in eager PyTorch: a compressed "
            "weight is rebuilt once per item, which is why these speed-ups stay near or under 1 (the compiled "
            "form covers the language model's LSTM step only). The models are untrained, so their outputs have "
            "arbitrary lengths: compare *ms/output token* across methods.\n\n"
            + table.to_markdown(index=False, disable_numparse=True)
            + "\n"
        )
    return text
