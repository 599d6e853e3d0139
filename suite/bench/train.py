"""`suite bench train`: training steps of each method against dense, same shapes, same process."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .. import tasks
from ..compressors import registry
from ..config import load_run
from ..context import DataContext
from ..errors import ConfigError
from ..models.lm import detach
from ..provenance import provenance
from ..record import write_json
from .common import check_device


def _train_step(model, opt, x, y, hidden, clip):
    with parametrize.cached():  # each compressed weight evaluated once per forward, as the tasks do
        logits, hidden = model(x, hidden)  # (T, B, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum") / x.size(1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return detach(hidden)


def bench_train(
    preset: str,
    methods: list[str],
    factors: list[float],
    steps: int = 30,
    warmup: int = 5,
    vocab: int = 10_000,
    device: str = "cpu",
    out: str | Path | None = "results/bench/train.json",
    echo: bool = True,
) -> dict:
    """Median training-step time (forward, backward, clip, SGD) of each method vs dense, same shapes (a
    language-model preset: the step is truncated BPTT)."""
    check_device(device)
    cfg = load_run(preset, "dense")
    if cfg.family != "lm":
        raise ConfigError(f"bench train times language-model steps; {preset} is a {cfg.family} task")
    build = tasks.get("lm").build_model
    model_cfg = {**cfg.model, "vocab": vocab}
    torch.manual_seed(0)
    entries: list[tuple[str, float, torch.nn.Module]] = [("dense", 1.0, build(model_cfg))]
    for name in methods:
        for factor in factors:
            method = registry.get(name)
            if method.needs:
                raise ConfigError(
                    f"bench train builds models without data; {name} needs {sorted(method.needs)}"
                )
            mcfg = registry.make_config(name, {"factor": factor})
            mc = method.resize(model_cfg, mcfg, build) if method.resize else model_cfg
            model = build(mc)
            method.apply(model, mcfg, DataContext())
            entries.append((name, factor, model))
    T, B = cfg.train.bptt, cfg.train.batch_size
    x = torch.randint(vocab, (T, B), device=device)
    y = torch.randint(vocab, (T, B), device=device)
    state = []
    for _, _, model in entries:
        model.to(device).train()
        state.append([torch.optim.SGD(model.parameters(), lr=0.01), model.init_hidden(B)])
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    times: list[list[float]] = [[] for _ in entries]
    for r in range(warmup + steps):
        for i in [(r + k) % len(entries) for k in range(len(entries))]:  # rotate who goes first
            opt, hidden = state[i]
            sync()
            t0 = time.perf_counter()
            state[i][1] = _train_step(entries[i][2], opt, x, y, hidden, cfg.train.clip)
            sync()
            if r >= warmup:
                times[i].append(time.perf_counter() - t0)
        if echo and (r + 1) % 10 == 0:
            print(f"bench train: round {r + 1}/{warmup + steps}", file=sys.stderr, flush=True)
    dense_ms = statistics.median(times[0]) * 1e3
    rows = []
    for (name, factor, _), ts in zip(entries, times):
        ms = statistics.median(ts) * 1e3
        rows.append({"method": name, "factor": factor, "median_ms": ms, "speed_vs_dense": dense_ms / ms})
    result = {
        "benchmark": "train_step",
        "preset": str(preset),
        "shape": {"bptt": T, "batch": B, "vocab": vocab, **{k: cfg.model[k] for k in ("hidden", "layers")}},
        "steps": steps,
        "warmup": warmup,
        "device": device,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "provenance": provenance(),
    }
    if out is not None:
        write_json(Path(out), result)
    return result


def format_rows(rows: list[dict], ratio: str) -> str:
    lines = [f"{'method':<14}{'CF':>6}{'median ms':>12}{ratio:>18}"]
    for r in rows:
        lines.append(f"{r['method']:<14}{r['factor']:>6g}{r['median_ms']:>12.3f}{r[ratio]:>17.2f}x")
    return "\n".join(lines)
