"""`suite bench generate` (a whole language model's greedy decoding, compiled) and `suite bench decode`
(translation and speech decoding of exported models), each against dense in one process."""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import tasks
from ..compressors import account, registry
from ..compressors.accounting import format_cf
from ..config import load_run
from ..context import DataContext
from ..deploy import compile_generator
from ..errors import ConfigError
from .common import one_thread, result

#: (method, CF) of the softmax (``decoder.weight``) in ``bench generate``; None: dense.
SOFTMAX_FORMS: list[tuple[str, float] | None] = [None, ("groupreduce", 8.0), ("svd", 8.0)]


def zipf_counts(vocab: int) -> Tensor:
    """Word counts of a Zipf law (count of the k-th word ~ 1/k), for methods that weight rows by frequency
    when a benchmark builds a model without data; the speed depends on the block sizes and ranks, not on
    the words."""
    return 1e6 / torch.arange(1, vocab + 1, dtype=torch.float64)


def compressed_lm(
    model_cfg: dict, base: nn.Module, lstm: tuple[str, float] | None, softmax
) -> tuple[nn.Module, dict]:
    """A copy of the language model ``base`` with its LSTM and/or softmax compressed (from its weights where
    the method allows), in the deployed state; with the achieved CF of each part."""
    model = copy.deepcopy(base)
    ctx = DataContext(row_frequencies={"decoder.weight": zipf_counts(model_cfg["vocab"])})
    cfs = {}
    for spec, targets in ((lstm, None), (softmax, ["decoder.weight"])):
        if spec is None:
            continue
        name, factor = spec
        settings = {"factor": factor, **({"targets": targets} if targets else {})}
        try:
            cfg = registry.make_config(name, {**settings, "init": "trained"})
        except ConfigError:
            cfg = registry.make_config(name, settings)
        method = registry.get(name)
        method.apply(model, cfg, ctx)
        if method.finalize is not None:
            method.finalize(model, cfg)
    acc = account(model, registry.LSTM_TARGETS + ["decoder.weight"])
    for part, spec in (("lstm", lstm), ("softmax", softmax)):
        if spec is not None:  # the CF of this part's matrices alone (the accounting holds both parts')
            mine = [m for m in acc.matrices if (m.name == "decoder.weight") == (part == "softmax")]
            cfs[part] = sum(m.dense for m in mine) / sum(m.storage.total + m.shared for m in mine)
    return model.eval(), cfs


@torch.inference_mode()
def _eager_generate(model: nn.Module) -> Callable[[int, int], tuple[np.ndarray, Tensor]]:
    """Greedy decoding token by token with the model's own forward (nn.Embedding, nn.LSTM, F.linear)."""

    def generate(token: int, n: int):
        hidden, out = None, []
        x = torch.tensor([[token]])
        for _ in range(n):
            with parametrize.cached():
                logits, hidden = model(x, hidden)  # (1, 1, V)
            x = logits[0, 0].argmax().view(1, 1)
            out.append(int(x))
        return out, logits[0, 0]

    return generate


def bench_generate(
    presets: list[str],
    lstm_methods: list[str],
    factors: list[float],
    softmax: list[tuple[str, float] | None] | None = None,
    vocab: int = 10_000,
    tokens: int = 32,
    reps: int = 20,
    warmup: int = 2,
    out: str | Path | None = "results/bench/generate.json",
    echo: bool = True,
) -> dict:
    """Batch-1 greedy generation, tokens per second of the whole language model (embedding, LSTM layers,
    softmax, argmax) at each preset's shapes, one thread: the dense model in eager PyTorch and compiled, and
    each (LSTM method, softmax form) compiled (``suite.deploy``), interleaved; speed-ups against the fastest
    dense form. Each compiled model's first logits are checked against its eager forward."""
    softmax = SOFTMAX_FORMS if softmax is None else softmax
    rows, gens = [], []
    with one_thread():
        for preset in presets:
            cfg = load_run(preset, "dense")
            if cfg.family != "lm":
                raise ConfigError(f"bench generate decodes language models; {preset} is a {cfg.family} task")
            model_cfg = {**cfg.model, "vocab": vocab, "dropout": 0.0}
            torch.manual_seed(0)
            base = tasks.get("lm").build_model(model_cfg).eval()
            configs = [(None, sm) for sm in softmax] + [
                ((m, f), sm) for m in lstm_methods for f in factors for sm in softmax
            ]
            for lstm, sm in configs:
                model, cfs = compressed_lm(model_cfg, base, lstm, sm)
                compiled = compile_generator(model)
                if compiled is None:
                    raise ConfigError(f"{lstm or sm} has no compiled deployment form; leave it out")
                err = (
                    (torch.from_numpy(compiled(0, 1)[1]) - _eager_generate(model)(0, 1)[1]).abs().max().item()
                )
                if err > 1e-3:
                    raise RuntimeError(f"compiled decoding differs from the model's forward by {err:.2e}")
                row = {
                    "preset": str(preset),
                    "shape": {k: cfg.model[k] for k in ("hidden", "layers")} | {"vocab": vocab},
                    "lstm": "dense" if lstm is None else lstm[0],
                    "lstm_factor": 1.0 if lstm is None else lstm[1],
                    "lstm_cf": cfs.get("lstm", 1.0),
                    "softmax": "dense" if sm is None else sm[0],
                    "softmax_factor": 1.0 if sm is None else sm[1],
                    "softmax_cf": cfs.get("softmax", 1.0),
                    "form": "compiled",
                    "compile_s": compiled.compile_s,
                    "macs_per_token": compiled.macs,
                    "weight_bytes_per_token": compiled.nbytes,
                    "max_abs_err": err,
                }
                rows.append(row)
                gens.append(compiled)
                if lstm is None and sm is None:
                    rows.append({**row, "form": "eager", "compile_s": 0.0, "max_abs_err": 0.0})
                    gens.append(_eager_generate(model))
        times: list[list[float]] = [[] for _ in gens]
        for r in range(warmup + reps):
            for i in [(r + k) % len(gens) for k in range(len(gens))]:  # rotate who goes first
                t0 = time.perf_counter()
                gens[i](r % 100, tokens)
                if r >= warmup:
                    times[i].append((time.perf_counter() - t0) / tokens)
            if echo and (r + 1) % 5 == 0:
                print(f"bench generate: round {r + 1}/{warmup + reps}", file=sys.stderr, flush=True)
    for row, ts in zip(rows, times):
        row["us_per_token"] = statistics.median(ts) * 1e6
        row["tokens_per_s"] = 1e6 / row["us_per_token"]
    for preset in presets:
        mine = [r for r in rows if r["preset"] == str(preset)]
        dense = [r for r in mine if r["lstm"] == "dense" and r["softmax"] == "dense"]
        fastest = min(dense, key=lambda r: r["us_per_token"])
        for r in mine:
            r["dense_baseline"] = fastest["form"]
            r["speedup_vs_dense"] = fastest["us_per_token"] / r["us_per_token"]
    fields = {
        "tokens": tokens,
        "reps": reps,
        "warmup": warmup,
        "softmax_counts": "Zipf (count of the k-th word ~ 1/k)",
        "rows": rows,
    }
    return result("lm_generate_batch1", fields, out)


def format_generate(result: dict) -> str:
    lines = [
        f"{'preset':<22}{'lstm':<10}{'CF':>6}{'softmax':<13}{'CF':>6}{'form':>10}{'us/token':>10}"
        f"{'tokens/s':>10}{'speed-up':>10}{'KB/token':>10}"
    ]
    for r in result["rows"]:
        lines.append(
            f"{Path(r['preset']).stem:<22}{r['lstm']:<10}{format_cf(r['lstm_cf']):>6} {r['softmax']:<12}"
            f"{format_cf(r['softmax_cf']):>6}{r['form']:>10}{r['us_per_token']:>10.1f}{r['tokens_per_s']:>10.0f}"
            f"{r['speedup_vs_dense']:>9.2f}x{r['weight_bytes_per_token'] / 1024:>10.0f}"
        )
    return "\n".join(lines)


def bench_decode(
    presets: list[str],
    methods: list[str],
    factors: list[float],
    items: int = 40,
    reps: int = 3,
    out: str | Path | None = "results/bench/decode.json",
    echo: bool = True,
) -> dict:
    """Batch-1 decoding speed of exported models (translation: greedy and beam sentences/s; speech: utterances/s)
    on the first ``items`` test examples of each preset's real data, one thread. The dense model and each method
    at each CF (compressed from the same random dense model, finalized), each written with ``Compressed.export``
    and read back into a fresh model (``suite.load``), decoded in eager PyTorch (a compressed weight rebuilt
    once per batch); models interleaved, median over items and repetitions; speed-ups against dense. An exported
    model must decode exactly as the model it was exported from."""
    import dataclasses
    import tempfile
    from itertools import islice

    from .. import api

    rows, calls = [], []
    with one_thread():
        for preset in presets:
            cfg = load_run(preset, "dense")
            family = tasks.get(cfg.family)
            data = family.load_data(cfg.dataset, cfg.data_dir, cfg.train)
            train = dataclasses.replace(cfg.train, eval_batch_size=1)
            batches = list(islice(iter(family.datamodule(data, train).test_dataloader()), items))
            model_cfg = family.resolve_model(cfg.model, data)
            torch.manual_seed(0)
            base = family.build_model(model_cfg).eval()
            lr_at = family.lr_at(train)
            if not family.task(base, train, lr_at).decoders():
                raise ConfigError(
                    f"{preset} is a {cfg.family} task; bench decode times translation and speech"
                )
            specs = [("dense", 1.0)] + [(m, f) for m in methods for f in factors]
            for name, factor in specs:
                model, cf, exported = copy.deepcopy(base), 1.0, None
                if name != "dense":
                    try:
                        c = api.compress(model, name, factor=factor, init="trained")
                    except ConfigError:
                        c = api.compress(model, name, factor=factor)
                    c.finalize()
                    cf = c.accounting.cf
                    with tempfile.TemporaryDirectory() as tmp:
                        c.export(Path(tmp) / "model.safetensors")
                        again = api.load(Path(tmp) / "model.safetensors", family.build_model(model_cfg))
                    exported = again.model.eval()
                mine = family.task(exported if exported is not None else model, train, lr_at).eval()
                for mode, decode in mine.decoders().items():
                    if exported is not None:  # the file must decode as the model it came from
                        ref = family.task(model.eval(), train, lr_at).eval().decoders()[mode]
                        with torch.inference_mode():
                            if decode(batches[0]) != ref(batches[0]):
                                raise RuntimeError(
                                    f"exported {name} decodes otherwise than the model it came from"
                                )
                    rows.append(
                        {
                            "preset": str(preset),
                            "task": cfg.task,
                            "method": name,
                            "factor": factor,
                            "cf": cf,
                            "mode": mode,
                        }
                    )
                    calls.append((decode, batches))
        times: list[list[float]] = [[] for _ in calls]
        tokens = [0 for _ in calls]
        with torch.inference_mode():
            for r in range(reps):
                for i in [(r + k) % len(calls) for k in range(len(calls))]:  # rotate who goes first
                    decode, batches = calls[i]
                    for batch in batches:
                        t0 = time.perf_counter()
                        hyps = decode(batch)
                        times[i].append(time.perf_counter() - t0)
                        tokens[i] += sum(len(h) for h in hyps) if r == 0 else 0
                if echo:
                    print(f"bench decode: round {r + 1}/{reps}", file=sys.stderr, flush=True)
    for row, ts, n in zip(rows, times, tokens):
        row["ms_per_item"] = statistics.median(ts) * 1e3
        row["items_per_s"] = 1e3 / row["ms_per_item"]
        # an untrained model's outputs have arbitrary lengths, so decoding time is also given per output token
        row["output_tokens"] = n
        row["ms_per_output_token"] = sum(ts[: len(ts) // reps]) * 1e3 / max(n, 1)
    for row in rows:
        dense = next(
            r
            for r in rows
            if r["preset"] == row["preset"] and r["mode"] == row["mode"] and r["method"] == "dense"
        )
        row["speedup_vs_dense"] = dense["ms_per_item"] / row["ms_per_item"]
    return result("decode_batch1", {"items": items, "reps": reps, "rows": rows}, out)


def format_decode(result: dict) -> str:
    lines = [
        f"{'task':<18}{'method':<12}{'CF':>7}  {'decoding':<10}{'ms/item':>9}{'items/s':>9}{'speed-up':>10}"
        f"{'ms/token':>10}"
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['task']:<18}{r['method']:<12}{format_cf(r['cf']):>7}  {r['mode']:<10}{r['ms_per_item']:>9.2f}"
            f"{r['items_per_s']:>9.1f}{r['speedup_vs_dense']:>9.2f}x{r['ms_per_output_token']:>10.3f}"
        )
    return "\n".join(lines)
