"""What a trial returns: objective values from its runs' records (means over seeds), and measured latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from .. import tasks
from ..compressors import registry
from ..compressors.accounting import matches, parametrized_tensors
from ..context import DataContext
from ..errors import SuiteError
from ..record import Record
from .spec import SweepSpec


def mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def objective_values(spec: SweepSpec, records: list[Record]) -> list[float]:
    """One value per objective: metrics and sizes averaged over the trial's seeds; latency measured once."""
    out = []
    for obj in spec.objectives:
        if obj.is_metric:
            if missing := [r.run_id for r in records if obj.name not in r.final]:
                raise SuiteError(
                    f"objective {obj.name} is not among the final metrics of run {missing[0]} "
                    f"({', '.join(records[0].final)})"
                )
            out.append(mean([r.final[obj.name] for r in records]))
        elif obj.name == "latency_ms":
            out.append(latency_ms(records[0]))
        else:  # a size: the accounting's value of that name (``stored`` is its ``targeted_stored``)
            key = "targeted_stored" if obj.name == "stored" else obj.name
            out.append(mean([r.accounting[key] for r in records]))
    return out


def _matvecs(model: torch.nn.Module, targets: list[str]) -> list[tuple[Callable[[Tensor], Tensor], int]]:
    """(x -> W x, n) for every targeted matrix: the deployment form of parametrized ones, else the dense W."""
    out = []
    for _, module, tensor_name, structured in parametrized_tensors(model):
        matvec = registry.deployed_matvec(module, tensor_name)
        n = structured.shape[1]
        try:
            matvec(torch.zeros(n))
        except NotImplementedError:  # no compact form: time the materialized matrix
            weight = getattr(module, tensor_name).detach()
            matvec = weight.__matmul__
        out.append((matvec, n))
    for name, p in model.named_parameters():
        if ".parametrizations." not in name and p.dim() == 2 and matches(name, targets):
            out.append((p.detach().__matmul__, p.shape[1]))
    return out


@torch.no_grad()
def latency_ms(record: Record, repeats: int = 50, warmup: int = 5) -> float:
    """Median time of one batch-1 step through the run's targeted matrices, y = W x each, in their deployment
    form (Kronecker, low-rank, sparse kernels), in ms on this machine. The trained values do not change it, so
    the compressed model is rebuilt from the run's config."""
    method = registry.get(record.method)
    mcfg = registry.make_config(record.method, record.config["compress"])
    model = tasks.get(record.family).build_model(record.config["model_resolved"])
    method.apply(model, mcfg, DataContext())  # data-aware methods: their storage shapes, not their values
    steps = [(f, torch.randn(n)) for f, n in _matvecs(model, mcfg.targets)]
    times = []
    for r in range(warmup + repeats):
        t0 = time.perf_counter()
        for f, x in steps:
            f(x)
        if r >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
