"""Speed benchmarks. Every number is a ratio against the dense model measured in the same process, models
interleaved step by step so that machine noise hits all of them alike; medians of repeated steps."""

from __future__ import annotations

import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import tasks
from .compressors import account, registry
from .compressors.accounting import format_cf
from .config import load_run
from .context import DataContext
from .errors import ConfigError
from .models.lm import detach
from .provenance import provenance
from .record import write_json


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
    _check_device(device)
    cfg = load_run(preset, "dense")
    if cfg.family != "lm":
        raise ConfigError(f"bench train times language-model steps; {preset} is a {cfg.family} task")
    build = tasks.get("lm").build_model
    model_cfg = {**cfg.model, "vocab": vocab}
    entries: list[tuple[str, float, torch.nn.Module]] = []
    torch.manual_seed(0)
    entries.append(("dense", 1.0, build(model_cfg)))
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
    times: list[list[float]] = [[] for _ in entries]
    for r in range(warmup + steps):
        order = list(range(len(entries)))
        order = order[r % len(order) :] + order[: r % len(order)]  # rotate who goes first
        for i in order:
            opt, hidden = state[i]
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            state[i][1] = _train_step(entries[i][2], opt, x, y, hidden, cfg.train.clip)
            if device != "cpu":
                torch.cuda.synchronize()
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


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:<index>") from None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"bench runs on cpu or cuda, not {device!r}")
    if kind == "cuda":
        index = torch.device(device).index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(f"no CUDA device {device} here; use --device cpu")


def format_rows(rows: list[dict], ratio: str) -> str:
    lines = [f"{'method':<14}{'CF':>6}{'median ms':>12}{ratio:>18}"]
    for r in rows:
        lines.append(f"{r['method']:<14}{r['factor']:>6g}{r['median_ms']:>12.3f}{r[ratio]:>17.2f}x")
    return "\n".join(lines)


Step = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """nn.LSTM's cell update from the (4H,) pre-activations, gate order i, f, g, o (one sigmoid over all
    four gates: fewer kernel calls, the same for every method)."""
    i, f, _, o = torch.sigmoid(gates).chunk(4)  # (H,) each
    g = torch.tanh(gates[2 * c.numel() : 3 * c.numel()])  # (H,)
    c = torch.addcmul(f * c, i, g)
    return o * torch.tanh(c), c


def dense_step(lstm: nn.LSTM) -> Step:
    """One batch-1 step with the dense weights: one addmv of the layer's [W_ih | W_hh] on [x; h] (the usual
    fused LSTM layer; the same fusion as the sparse parts get in ``deployed_step``)."""
    w = torch.cat((lstm.weight_ih_l0, lstm.weight_hh_l0), 1).detach().contiguous()  # (4H, in + H)
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    return lambda x, h, c: lstm_cell(torch.addmv(bias, w, torch.cat((x, h))), c)


def layer_csr(parts: list[Tensor | None], shapes: list[tuple[int, int]]) -> Tensor:
    """The sparse parts of a layer's matrices side by side, [D_ih | D_hh], as one int32 CSR matrix (a
    missing part is empty). It stores one set of row pointers instead of two, so it never holds more than
    the per-matrix accounting counts."""
    device = next(p.device for p in parts if p is not None)
    blocks = [
        p.to_dense() if p is not None else torch.zeros(shape, device=device)
        for p, shape in zip(parts, shapes)
    ]
    csr = torch.cat(blocks, 1).to_sparse_csr()  # (4H, in + H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape
        )


def deployed_step(lstm: nn.LSTM) -> Step:
    """One batch-1 step with each weight's deployment form (``registry.deployed_parts``), never building W.
    Sparse parts (doped matrices, pruned ones) are fused into one CSR product on [x; h], as the dense step fuses
    W; methods whose deployment is the rebuilt matrix itself (``registry.deployed_dense``: hashed, DeepThin)
    run as the dense step on their rebuilt matrices."""
    names = ("weight_ih_l0", "weight_hh_l0")
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    rebuilt = [registry.deployed_dense(lstm, n) for n in names]
    if all(w is not None for w in rebuilt):
        w = torch.cat(rebuilt, 1).contiguous()  # (4H, in + H)
        return lambda x, h, c: lstm_cell(torch.addmv(bias, w, torch.cat((x, h))), c)
    (f_ih, sp_ih), (f_hh, sp_hh) = (registry.deployed_parts(lstm, n) for n in names)
    if sp_ih is None and sp_hh is None:

        def step(x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
            gates = f_ih(x)  # (4H,)
            gates += f_hh(h)
            gates += bias
            return lstm_cell(gates, c)

        return step
    sparse = layer_csr([sp_ih, sp_hh], [tuple(getattr(lstm, n).shape) for n in names])

    def sparse_step(x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        gates = f_ih(x)  # (4H,)
        gates += f_hh(h)
        gates.addmv_(sparse, torch.cat((x, h)))  # (4H, in + H) @ (in + H,)
        gates += bias
        return lstm_cell(gates, c)

    return sparse_step


def compressed_lstm(base: nn.LSTM, name: str, factor: float) -> tuple[nn.LSTM, dict]:
    """A copy of ``base`` compressed by a weight-level method, started from its weights where the method
    allows (so a sparse part keeps the magnitude pattern of a trained residual), annealed to its final
    sparsity; returns it with its accounting."""
    method = registry.get(name)
    if not deployable(name):
        raise ConfigError(f"bench infer times weight-level methods that need no data; {name} is not one")
    try:
        cfg = registry.make_config(name, {"factor": factor, "init": "trained"})
    except ConfigError:
        cfg = registry.make_config(name, {"factor": factor})
    lstm = copy.deepcopy(base)
    method.apply(lstm, cfg, DataContext())
    if method.finalize is not None:
        method.finalize(lstm, cfg)  # the deployed state (final sparsity, quantized factors)
    return lstm.eval(), account(lstm, cfg.targets, method=name).to_dict()


def deployable(name: str) -> bool:
    """Whether a method compresses weights in place without data, so that a bare LSTM can be deployed with it."""
    method = registry.get(name)
    return name != "dense" and method.resize is None and not method.needs


def infer_methods() -> list[str]:
    """Every registered method ``bench infer`` can time (the default of ``--methods``)."""
    return [m for m in registry.available() if deployable(m)]


def bench_infer(
    methods: list[str],
    factors: list[float],
    hidden: int = 650,
    input_size: int = 650,
    reps: int = 300,
    inner: int = 20,
    warmup: int = 10,
    out: str | Path | None = "results/bench/infer.json",
    echo: bool = True,
    device: str = "cpu",
) -> dict:
    """Median time of one batch-1 LSTM step (W_ih x + W_hh h, gates, cell update) per method and CF against
    the dense step, on one thread (``device``: or on a GPU, each step timed to its end); every deployed step is
    first checked against the materialized weights. Models are compressed on the CPU, then moved.

    A repetition runs a block of 1 + ``inner`` consecutive steps of each model, the models in a rotating
    order, each step timed alone. The block's first step follows the other models, which have evicted this
    one's weights from the caches: its median is ``cold_us``. The other ``inner`` steps are the steady state
    of a model running a sequence: ``median_us`` is their median, and ``speedup_vs_dense`` compares those.
    Timing single steps keeps a preemption by another process from inflating a whole block (a dense block is
    long enough to be preempted almost always, a compressed one rarely)."""
    _check_device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        base = nn.LSTM(input_size, hidden)
        dense = copy.deepcopy(base).to(device)
        entries: list[dict] = [{"method": "dense", "factor": 1.0, "step": dense_step(dense), "cf": 1.0}]
        for name in methods:
            for factor in factors:
                lstm, acc = compressed_lstm(base, name, factor)
                lstm = lstm.to(device)
                step = deployed_step(lstm)
                entries.append(
                    {
                        "method": name,
                        "factor": factor,
                        "step": step,
                        "cf": acc["cf"],
                        "cf_values": acc["cf_values"],
                        "max_abs_err": _check(step, lstm),
                        "matrices": {m["name"]: m["detail"] for m in acc["matrices"]},
                    }
                )
        warm, cold = _time_steps(
            [e["step"] for e in entries], input_size, hidden, reps, inner, warmup, echo, device
        )
    finally:
        torch.set_num_threads(threads)
    dense_warm, dense_cold = statistics.median(warm[0]), statistics.median(cold[0])
    rows = []
    for e, ts, cs in zip(entries, warm, cold):
        median, first = statistics.median(ts), statistics.median(cs)
        rows.append(
            {
                **{k: v for k, v in e.items() if k != "step"},
                "median_us": median * 1e6,
                "speedup_vs_dense": dense_warm / median,
                "cold_us": first * 1e6,
                "cold_speedup_vs_dense": dense_cold / first,
            }
        )
    result = {
        "benchmark": "lstm_step_batch1",
        "shape": {"hidden": hidden, "input": input_size},
        "threads": 1,
        "device": device,
        "reps": reps,
        "inner": inner,
        "warmup": warmup,
        "rows": rows,
        "provenance": provenance(),
    }
    if out is not None:
        write_json(Path(out), result)
    return result


@torch.inference_mode()
def _check(step: Step, lstm: nn.LSTM) -> float:
    """Max |h - h_ref| of one step against the same step with the materialized (dense) weights."""
    device = lstm.weight_ih_l0.device
    x, h, c = (torch.randn(n, device=device) for n in (lstm.input_size, lstm.hidden_size, lstm.hidden_size))
    ref = lstm_cell(x @ lstm.weight_ih_l0.T + h @ lstm.weight_hh_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0, c)
    err = (step(x, h, c)[0] - ref[0]).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"deployed LSTM step differs from the materialized one by {err:.2e}")
    return err


@torch.inference_mode()
def _time_steps(
    steps: list[Step],
    input_size: int,
    hidden: int,
    reps: int,
    inner: int,
    warmup: int,
    echo: bool,
    device: str = "cpu",
) -> tuple[list[list[float]], list[list[float]]]:
    """Per model: (seconds of each warm step, seconds of each block's first, cold step). On a GPU each step
    is timed until it has run (the launch alone says nothing)."""
    x = torch.randn(input_size, device=device)
    state = [(torch.zeros(hidden, device=device), torch.zeros(hidden, device=device)) for _ in steps]
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    warm: list[list[float]] = [[] for _ in steps]
    cold: list[list[float]] = [[] for _ in steps]
    for r in range(warmup + reps):
        order = list(range(len(steps)))
        order = order[r % len(order) :] + order[: r % len(order)]  # rotate who goes first
        for i in order:
            step, (h, c) = steps[i], state[i]
            sync()
            t0 = time.perf_counter()
            h, c = step(x, h, c)  # the other models have just evicted this one's weights from the caches
            sync()
            ts = [t0, time.perf_counter()]
            for _ in range(inner):  # each step timed alone: a preemption spoils one sample, not a block
                h, c = step(x, h, c)
                sync()
                ts.append(time.perf_counter())
            state[i] = (h, c)
            if r >= warmup:
                cold[i].append(ts[1] - ts[0])
                warm[i].extend(b - a for a, b in zip(ts[1:], ts[2:]))
        if echo and (r + 1) % 50 == 0:
            print(f"bench infer: round {r + 1}/{warmup + reps}", file=sys.stderr, flush=True)
    return warm, cold


def format_infer(rows: list[dict]) -> str:
    lines = [
        f"{'method':<12}{'CF':>6}{'achieved':>10}{'median us':>12}{'speed-up':>10}{'cold us':>10}{'cold':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r['method']:<12}{r['factor']:>6g}{format_cf(r['cf']):>10}{r['median_us']:>12.1f}"
            f"{r['speedup_vs_dense']:>9.2f}x{r['cold_us']:>10.1f}{r['cold_speedup_vs_dense']:>7.2f}x"
        )
    return "\n".join(lines)
