"""`suite bench infer`: one batch-1 LSTM step of each deployed method, every form (eager, compiled) against
every dense form (addmv, nn.LSTM, compiled), in one process."""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..compressors import account, registry
from ..compressors.accounting import format_cf
from ..context import DataContext
from ..deploy import compile_step, layer_csr
from ..errors import ConfigError
from .common import check_device, one_thread, result

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
    check_device(device)
    with one_thread():
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
    fields = {
        "shape": {"hidden": hidden, "input": input_size},
        "device": device,
        "reps": reps,
        "inner": inner,
        "warmup": warmup,
        "dense_baseline": best_warm["form"],
        "dense_baseline_cold": best_cold["form"],
        "baselines": baselines,
        "rows": rows,
    }
    return result("lstm_step_batch1", fields, out)


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
    inputs, state = [], []
    for f in forms:
        zeros = (torch.zeros(hidden, device=device), torch.zeros(hidden, device=device))
        inputs.append(x.numpy() if f.get("numpy") else x)
        state.append(tuple(z.numpy() for z in zeros) if f.get("numpy") else zeros)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    warm: list[list[float]] = [[] for _ in forms]
    cold: list[list[float]] = [[] for _ in forms]
    for r in range(warmup + reps):
        for i in [(r + k) % len(forms) for k in range(len(forms))]:  # rotate who goes first
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
