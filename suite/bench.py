"""Speed benchmarks. Every number is a ratio against the dense model measured in the same process, models
interleaved step by step so that machine noise hits all of them alike; medians of repeated steps."""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import tasks
from .compressors import account, registry
from .compressors.accounting import format_cf
from .config import load_run
from .context import DataContext
from .deploy import layer_csr
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


def caches() -> dict[str, int]:
    """This CPU's data cache sizes in bytes by level (``L2``, ``L3``), from Linux's sysfs; empty elsewhere. A
    speed-up depends on which level holds a model's weights."""
    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind, level = (index / "type").read_text().strip(), (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction" and size[:-1].isdigit():
            out[f"L{level}"] = int(size[:-1]) * {"K": 1024, "M": 1024**2}.get(size[-1], 1)
    return out


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


def module_step(lstm: nn.LSTM) -> Step:
    """One batch-1 step of nn.LSTM itself (oneDNN on a CPU, cuDNN on a GPU): what a user runs by default."""
    n, k = lstm.input_size, lstm.hidden_size

    def step(x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        _, (h, c) = lstm(x.view(1, 1, n), (h.view(1, 1, k), c.view(1, 1, k)))
        return h.view(k), c.view(k)

    return step


def deployed_step(lstm: nn.LSTM) -> Step:
    """One batch-1 step with each weight's deployment form (``registry.deployed_parts``), never building W,
    in eager PyTorch. Sparse parts (doped matrices, pruned ones) are fused into one CSR product on [x; h], as
    the dense step fuses W; methods whose deployment is the rebuilt matrix itself (``registry.deployed_dense``:
    hashed, DeepThin) run as the dense step on their rebuilt matrices."""
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


def _forms(lstm: nn.LSTM, dense: bool, device: str) -> list[dict]:
    """The deployment forms of one LSTM to time: eager PyTorch (for dense: the fused addmv and nn.LSTM
    itself) and, on a CPU, the compiled step (``suite.deploy``) where the method's form has kernels."""
    forms = [
        {"form": "addmv" if dense else "eager", "step": dense_step(lstm) if dense else deployed_step(lstm)}
    ]
    if dense:
        forms.append({"form": "nn.LSTM", "step": module_step(lstm)})
    if torch.device(device).type == "cpu":
        from .deploy import compile_step

        compiled = compile_step(lstm)
        if compiled is not None:
            forms.append(
                {
                    "form": "compiled",
                    "step": compiled,
                    "numpy": True,
                    "compile_s": compiled.compile_s,
                    "macs": compiled.macs,
                    "weight_bytes": compiled.nbytes,
                }
            )
    for f in forms:
        f["max_abs_err"] = _check(f["step"], lstm, f.get("numpy", False))
    return forms


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
    the fastest dense step, on one thread (``device``: or on a GPU, each step timed to its end). Every form of
    every model is timed: dense as a fused addmv, as nn.LSTM and compiled; a compressed model in eager
    PyTorch and compiled. A model's row reports its fastest form; the speed-ups divide the fastest dense form's
    median by it. Every form is first checked against the materialized weights; compile times are reported
    apart. Models are compressed on the CPU, then moved.

    A repetition runs a block of 1 + ``inner`` consecutive steps of each form, the forms in a rotating
    order, each step timed alone. The block's first step follows the other models, which have evicted this
    one's weights from the caches: its median is ``cold_us``. The other ``inner`` steps are the steady state
    of a model running a sequence: ``median_us`` is their median. Timing single steps keeps a preemption by
    another process from inflating a whole block."""
    _check_device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        base = nn.LSTM(input_size, hidden)
        models: list[dict] = [
            {"method": "dense", "factor": 1.0, "cf": 1.0, "forms": _forms(base, True, device)}
        ]
        for name in methods:
            for factor in factors:
                lstm, acc = compressed_lstm(base, name, factor)
                lstm = lstm.to(device)
                models.append(
                    {
                        "method": name,
                        "factor": factor,
                        "cf": acc["cf"],
                        "cf_values": acc["cf_values"],
                        "matrices": {m["name"]: m["detail"] for m in acc["matrices"]},
                        "forms": _forms(lstm, False, device),
                    }
                )
        forms = [f for m in models for f in m["forms"]]
        warm, cold = _time_steps(forms, input_size, hidden, reps, inner, warmup, echo, device)
    finally:
        torch.set_num_threads(threads)
    for f, ts, cs in zip(forms, warm, cold):
        f["median_us"], f["cold_us"] = statistics.median(ts) * 1e6, statistics.median(cs) * 1e6
        del f["step"]
        f.pop("numpy", None)
    baselines = models[0]["forms"]
    best_warm = min(baselines, key=lambda f: f["median_us"])
    best_cold = min(baselines, key=lambda f: f["cold_us"])
    rows = []
    for m in models:
        best = min(m["forms"], key=lambda f: f["median_us"])
        rows.append(
            {
                **{k: v for k, v in m.items() if k != "forms"},
                "form": best["form"],
                "median_us": best["median_us"],
                "speedup_vs_dense": best_warm["median_us"] / best["median_us"],
                "cold_us": min(f["cold_us"] for f in m["forms"]),
                "cold_speedup_vs_dense": best_cold["cold_us"] / min(f["cold_us"] for f in m["forms"]),
                "max_abs_err": best["max_abs_err"],
                "forms": m["forms"],
            }
        )
    result = {
        "benchmark": "lstm_step_batch1",
        "shape": {"hidden": hidden, "input": input_size},
        "threads": 1,
        "caches": caches(),
        "device": device,
        "reps": reps,
        "inner": inner,
        "warmup": warmup,
        "dense_baseline": best_warm["form"],
        "dense_baseline_cold": best_cold["form"],
        "baselines": baselines,
        "rows": rows,
        "provenance": provenance(),
    }
    if out is not None:
        write_json(Path(out), result)
    return result


@torch.inference_mode()
def _check(step, lstm: nn.LSTM, numpy: bool = False) -> float:
    """Max |h - h_ref| of one step against the same step with the materialized (dense) weights."""
    device = lstm.weight_ih_l0.device
    x, h, c = (torch.randn(n, device=device) for n in (lstm.input_size, lstm.hidden_size, lstm.hidden_size))
    ref = lstm_cell(x @ lstm.weight_ih_l0.T + h @ lstm.weight_hh_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0, c)
    got = torch.from_numpy(step(x.numpy(), h.numpy(), c.numpy())[0]) if numpy else step(x, h, c)[0]
    err = (got - ref[0]).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"deployed LSTM step differs from the materialized one by {err:.2e}")
    return err


@torch.inference_mode()
def _time_steps(
    forms: list[dict],
    input_size: int,
    hidden: int,
    reps: int,
    inner: int,
    warmup: int,
    echo: bool,
    device: str = "cpu",
) -> tuple[list[list[float]], list[list[float]]]:
    """Per form: (seconds of each warm step, seconds of each block's first, cold step). A compiled form
    takes numpy vectors, the others tensors. On a GPU each step is timed until it has run (the launch alone
    says nothing)."""
    x = torch.randn(input_size, device=device)
    state = []
    inputs = []
    for f in forms:
        zeros = (torch.zeros(hidden, device=device), torch.zeros(hidden, device=device))
        if f.get("numpy"):
            state.append(tuple(z.numpy() for z in zeros))
            inputs.append(x.numpy())
        else:
            state.append(zeros)
            inputs.append(x)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    warm: list[list[float]] = [[] for _ in forms]
    cold: list[list[float]] = [[] for _ in forms]
    for r in range(warmup + reps):
        order = list(range(len(forms)))
        order = order[r % len(order) :] + order[: r % len(order)]  # rotate who goes first
        for i in order:
            step, xi, (h, c) = forms[i]["step"], inputs[i], state[i]
            sync()
            t0 = time.perf_counter()
            h, c = step(xi, h, c)  # the other models have just evicted this one's weights from the caches
            sync()
            ts = [t0, time.perf_counter()]
            for _ in range(inner):  # each step timed alone: a preemption spoils one sample, not a block
                h, c = step(xi, h, c)
                sync()
                ts.append(time.perf_counter())
            state[i] = (h, c)
            if r >= warmup:
                cold[i].append(ts[1] - ts[0])
                warm[i].extend(b - a for a, b in zip(ts[1:], ts[2:]))
        if echo and (r + 1) % 50 == 0:
            print(f"bench infer: round {r + 1}/{warmup + reps}", file=sys.stderr, flush=True)
    return warm, cold


def format_infer(result: dict) -> str:
    """The rows (each model's fastest form), then the dense baselines and the compile times."""
    lines = [
        f"{'method':<12}{'CF':>6}{'achieved':>10}{'form':>10}{'median us':>11}{'speed-up':>10}"
        f"{'cold us':>10}{'cold':>8}{'eager us':>10}{'compile s':>11}"
    ]
    for r in result["rows"]:
        eager = next((f["median_us"] for f in r["forms"] if f["form"] in ("eager", "addmv")), float("nan"))
        comp = next((f["compile_s"] for f in r["forms"] if f["form"] == "compiled"), float("nan"))
        lines.append(
            f"{r['method']:<12}{r['factor']:>6g}{format_cf(r['cf']):>10}{r['form']:>10}{r['median_us']:>11.1f}"
            f"{r['speedup_vs_dense']:>9.2f}x{r['cold_us']:>10.1f}{r['cold_speedup_vs_dense']:>7.2f}x"
            f"{eager:>10.1f}{comp:>11.2f}"
        )
    base = ", ".join(
        f"{f['form']} {f['median_us']:.1f} us (cold {f['cold_us']:.1f})" for f in result["baselines"]
    )
    lines.append(f"dense baselines: {base}; speed-ups against the fastest, {result['dense_baseline']}")
    return "\n".join(lines)


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
    from .deploy import compile_generator

    softmax = SOFTMAX_FORMS if softmax is None else softmax
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, gens = [], []
    try:
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
            order = list(range(len(gens)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                t0 = time.perf_counter()
                gens[i](r % 100, tokens)
                if r >= warmup:
                    times[i].append((time.perf_counter() - t0) / tokens)
            if echo and (r + 1) % 5 == 0:
                print(f"bench generate: round {r + 1}/{warmup + reps}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
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
    result = {
        "benchmark": "lm_generate_batch1",
        "threads": 1,
        "caches": caches(),
        "tokens": tokens,
        "reps": reps,
        "warmup": warmup,
        "softmax_counts": "Zipf (count of the k-th word ~ 1/k)",
        "rows": rows,
        "provenance": provenance(),
    }
    if out is not None:
        write_json(Path(out), result)
    return result


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

    from . import api

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, calls = [], []
    try:
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
                order = list(range(len(calls)))
                order = order[r % len(order) :] + order[: r % len(order)]
                for i in order:
                    decode, batches = calls[i]
                    for batch in batches:
                        t0 = time.perf_counter()
                        hyps = decode(batch)
                        times[i].append(time.perf_counter() - t0)
                        tokens[i] += sum(len(h) for h in hyps) if r == 0 else 0
                if echo:
                    print(f"bench decode: round {r + 1}/{reps}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
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
    result = {
        "benchmark": "decode_batch1",
        "threads": 1,
        "items": items,
        "reps": reps,
        "caches": caches(),
        "rows": rows,
        "provenance": provenance(),
    }
    if out is not None:
        write_json(Path(out), result)
    return result


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
