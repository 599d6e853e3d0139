"""The compressor registry: one dict, name -> Method, is the source of truth (``suite methods`` lists it).

A method is a validated config dataclass plus an ``apply(model, cfg)`` function that compresses in place. Weight-level
methods only say how one matrix is compressed (a ``Structured`` parametrization); ``compress_targets`` walks
the model once for all of them, and ``torch.nn.utils.parametrize`` keeps the stock modules (and nn.LSTM's fused
kernel) in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..context import DataContext
from ..errors import CompressionError, ConfigError
from ..settings import Settings, build, describe, setting
from . import terms
from .accounting import Storage, matches, parametrized_tensors

#: Default targets: the recurrent weight matrices, nn.LSTM's (``weight_ih_l0``, ``weight_hh_l1_reverse``, ...)
#: and nn.LSTMCell's (``weight_ih``, ``weight_hh``). Embeddings, attention and softmax / output projections
#: (``embedding.weight``, ``decoder.weight``) are opt-in.
LSTM_TARGETS = ["*weight_ih_l*", "*weight_hh_l*", "*weight_ih", "*weight_hh"]
INITS = ("scratch", "trained")


@dataclass
class CompressorConfig(Settings):
    """Settings every method shares."""

    factor: float = setting(1.0, ge=1)
    """Target compression factor of the targeted matrices (dense parameters / stored, indices counted)."""
    targets: list[str] = field(default_factory=lambda: list(LSTM_TARGETS))
    """fnmatch patterns on qualified parameter names (``lstm.weight_hh_l0``, ``decoder.weight``)."""
    init: str = setting("scratch", choices=INITS)
    """``scratch``: compress the freshly initialised model and train it; ``trained``: start from the trained
    dense baseline of the same task and seed (trained first if it is not there yet)."""
    finetune_epochs: int | None = setting(None, ge=0)
    """Epochs of training after compressing a trained model (``init=trained``); None: the preset's epochs."""
    finetune_lr: float | None = setting(None, gt=0)
    """Constant learning rate for fine-tuning; None: the rate the dense baseline ended with."""

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        super().__post_init__()
        self.factor = float(self.factor)  # 4 and 4.0 are one factor, and one run-id

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainedConfig(CompressorConfig):
    """Settings of a method that decomposes trained weights (no scratch init; no fine-tuning unless asked)."""

    init: str = setting(
        "trained",
        choices=("trained",),
        hint="this method decomposes trained weights (use lmf to train low-rank factors from scratch)",
    )
    finetune_epochs: int | None = 0


@dataclass(frozen=True)
class Column:
    """A value the views show: its key in the records (a history key, a setting), its label and its unit."""

    key: str
    label: str
    unit: str = ""
    """An axis's unit (``fraction of zeros``), or for a setting its short name (``CMR``)."""


@dataclass(frozen=True)
class Diagnostics:
    """What a method logs per validation epoch beside the task's metric, and the rate its figures sweep. The
    figures (F2, F3), the dashboards and the points tables read these and name no method."""

    title: str
    """What the diagnostics show (``co-matrix adaptation``); ``abbrev`` its short form (``CMA``)."""
    abbrev: str
    methods: str
    """The word the methods that log them share (``doped``: ``doped methods``, ``doped runs``)."""
    during: str
    """When the diagnostics change (``while annealing``)."""
    part: str
    """The added part whose effect they show (``D``)."""
    schedule: Column
    """The per-epoch history key of the part's schedule (``d_sparsity``; ``unit``: what it counts)."""
    without: str
    """Suffix of the history key of the validation metric with the part removed (``val_<metric><without>``)."""
    setting: Column
    """The method's rate that the figures sweep (``cmr``); ``unit``: its short name (``CMR``)."""
    symbol: str = "p"
    """The rate's symbol in legends (``CMR p=0.5``)."""
    extra: tuple[Column, ...] = ()
    """Further per-epoch history keys (dashboards only)."""


@dataclass(frozen=True)
class Method:
    """A registered compressor."""

    name: str
    config: type[CompressorConfig]
    apply: Callable[[nn.Module, CompressorConfig, DataContext], None]
    """Compress ``model`` in place (``accounting.account`` then counts what it stores). The DataContext holds
    what ``needs`` asked of the task's data (empty otherwise)."""
    summary: str
    callbacks: Callable[[CompressorConfig], list] | None = None
    """Lightning callbacks the method needs during training (schedules)."""
    resize: Callable[[dict, CompressorConfig, Callable[[dict], nn.Module]], dict] | None = None
    """Model-level methods: return a changed model config (e.g. a smaller hidden size)."""
    needs: frozenset[str] = frozenset()
    """DataContext fields the method reads (``row_frequencies``, ``calibration``); train() fills only these."""
    finalize: Callable[[nn.Module, CompressorConfig], None] | None = None
    """End-of-training step (prune to the final sparsity, quantize factors), run before the final evaluation
    and before the accounting, also when no epoch is trained."""
    diagnostics: Diagnostics | None = None
    """What it logs per epoch beside the task's metric, and the setting the figures sweep (None: nothing)."""

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(DataContext.FIELDS)
        if unknown:
            raise ValueError(
                f"{self.name}: unknown data needs {sorted(unknown)}; known: {DataContext.FIELDS}"
            )


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.name != method.name.lower():
        raise ValueError(f"method names are lowercase: {method.name!r}")
    if not (dataclasses.is_dataclass(method.config) and issubclass(method.config, CompressorConfig)):
        raise TypeError(f"{method.name}: config must be a CompressorConfig dataclass")
    REGISTRY[method.name] = method
    return method


def available() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; available: {', '.join(available())} (see `suite methods`)"
        ) from None


def diagnostics() -> list[Diagnostics]:
    """The distinct diagnostics the registered methods declare, in the registry's order."""
    return list(dict.fromkeys(m.diagnostics for m in REGISTRY.values() if m.diagnostics))


def diagnosed(methods) -> dict[Diagnostics, list[str]]:
    """The methods among ``methods`` (names) that log diagnostics, per diagnostics; unknown names left out."""
    out: dict[Diagnostics, list[str]] = {}
    for name in sorted(set(methods)):
        if name in REGISTRY and REGISTRY[name].diagnostics:
            out.setdefault(REGISTRY[name].diagnostics, []).append(name)
    return out


def swept_settings() -> dict[str, type[CompressorConfig]]:
    """Setting name -> the config class that defines it, of every setting the methods' figures sweep (``cmr``)."""
    return {m.diagnostics.setting.key: m.config for m in REGISTRY.values() if m.diagnostics}


def config_fields(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get(name).config)]


def describe_settings(name: str) -> list[tuple[str, str, Any, str, str]]:
    """(setting, type, default, range, doc) of each setting of a method (``suite methods -v``)."""
    return describe(get(name).config)


def make_config(name: str, params: dict[str, Any]) -> CompressorConfig:
    """Build and validate a method's config from a dict; unknown keys are an error that lists the known."""
    return build(get(name).config, params, f"method {name}")


class Structured(nn.Module):
    """A parametrization W = f(factors) of one (m, n) matrix, registered with ``parametrize``.

    Subclasses implement ``forward(*factors) -> W`` (the materialized matrix), ``right_inverse(W) -> factors``
    (always a decomposition of W: assigning a weight to a parametrized matrix decomposes it), ``fresh(W)``
    (factors drawn for a scratch init, with the scale of the freshly initialised W), ``storage()`` for the
    accounting and ``matvec(factors, x)``, the deployment form that never builds W. A parametrization that reads
    a tensor shared with others (a hashed pool) lists it in ``shared_storage`` so it is counted once.
    """

    method: str = "structured"
    target: float | None = None
    """The CF asked for; ``budget`` states it beside the CF the final storage reaches (None: not stated)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))

    def fresh(self, w: Tensor) -> tuple[Tensor, ...]:
        """Factors for a scratch init; by default the decomposition of the fresh dense weight."""
        factors = self.right_inverse(w)
        return factors if isinstance(factors, tuple) else (factors,)

    def storage(self) -> Storage:
        """What this matrix stores of its own (shared tensors are in ``shared_storage``)."""
        raise NotImplementedError

    def final_storage(self) -> Storage:
        """What this matrix stores once training ends (a sparse part annealed to its final nonzeros)."""
        return self.storage()

    def budget(self) -> dict:
        """``budget_detail`` of the final storage against ``target``, for ``describe`` ({} without a target)."""
        if self.target is None:
            return {}
        return budget_detail(self.shape, self.target, self.final_storage().total)

    def shared_storage(self) -> list[tuple[str, Tensor, Storage]]:
        """(label, tensor, storage) of each tensor this matrix shares with others; counted once per tensor."""
        return []

    def describe(self) -> dict:
        return {}

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """y = W x for x of shape (n,) or (n, k), without materializing W."""
        raise NotImplementedError

    def deploy(self, factors: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
        """The deployment closure x -> W x: the matrix rebuilt once when ``deploy_dense`` gives it, else
        ``matvec``. Subclasses precompute here what every call would otherwise redo (contiguous factors, the
        cheaper contraction order, a CSR copy of a sparse part)."""
        w = self.deploy_dense(factors)
        if w is not None:
            return lambda x: torch.mv(w, x)
        return lambda x: self.matvec(factors, x)

    def deploy_parts(self, factors: tuple[Tensor, ...]) -> tuple[Callable[[Tensor], Tensor], Tensor | None]:
        """The deployment form split as (closure of the dense-factored part, sparse CSR matrix added to it or
        None), so that a layer can fuse the sparse parts of its matrices into one sparse product."""
        return self.deploy(factors), None

    def deploy_dense(self, factors: tuple[Tensor, ...]) -> Tensor | None:
        """The matrix itself when the deployment form is the materialized matrix (a hashed or DeepThin matrix
        is rebuilt once and multiplied densely), so that a layer can fuse it with its neighbours as a dense
        layer does; None for a compact deployment form."""
        return None

    def deploy_terms(self, factors: tuple[Tensor, ...]) -> list[terms.Term] | None:
        """The deployment form as primitive terms (``terms``) for a compiled step; None when it is none of them.
        By default the rebuilt matrix of ``deploy_dense``, when there is one."""
        w = self.deploy_dense(factors)
        return None if w is None else [terms.Dense(w)]


def originals(module: nn.Module, tensor_name: str) -> tuple[Tensor, ...]:
    """The stored tensors (factors) of one parametrized weight, in the order ``forward`` takes them."""
    plist = module.parametrizations[tensor_name]
    if hasattr(plist, "original"):
        return (plist.original,)
    return tuple(getattr(plist, f"original{i}") for i in range(plist.ntensors))


def find_targets(model: nn.Module, patterns: list[str]) -> list[tuple[str, nn.Module, str, Tensor]]:
    """(qualified name, module, tensor name, parameter) of every 2-D parameter matching ``patterns`` that is not
    parametrized yet, in ``named_modules`` order; ConfigError for a tied or non-matrix target, or none at all.
    Methods that size something over all their targets (a pool shared by every matrix) call it first."""
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    already = {qual for qual, *_ in parametrized_tensors(model)}
    chosen: list[tuple[str, nn.Module, str, Tensor]] = []
    for mod_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            continue
        for tensor_name, p in module.named_parameters(recurse=False):
            qual = f"{mod_name}.{tensor_name}" if mod_name else tensor_name
            if qual in already or not matches(qual, patterns):
                continue
            if len(aliases[id(p)]) > 1:
                raise ConfigError(
                    f"{qual} is tied to {', '.join(a for a in aliases[id(p)] if a != qual)}; tie the weights in "
                    "the model's forward (as the language model does) so one parameter can be compressed"
                )
            if p.dim() != 2:
                raise ConfigError(
                    f"target {qual} has shape {tuple(p.shape)}; only matrices can be compressed"
                )
            chosen.append((qual, module, tensor_name, p))
    if not chosen:
        names = ", ".join(n for n, _ in model.named_parameters())
        raise ConfigError(f"no parameter matches targets {patterns}; the model's parameters are: {names}")
    return chosen


def compress_targets(
    model: nn.Module,
    patterns: list[str],
    make: Callable[[str, Tensor], Structured],
    fresh: bool = False,
) -> list[str]:
    """Parametrize every 2-D parameter whose qualified name matches ``patterns``; returns their names.

    Targets are collected first (``find_targets``) and swapped after, so the walk never sees its own changes. A
    parameter shared by several modules (tied weights) cannot be compressed through one of its names only. With
    ``fresh`` (a scratch init) each matrix's factors are then drawn by its parametrization (``Structured.fresh``).
    """
    chosen = find_targets(model, patterns)
    for qual, module, tensor_name, p in chosen:
        w = p.detach()
        structured = make(qual, w)
        parametrize.register_parametrization(module, tensor_name, structured)
        if fresh:
            with torch.no_grad():
                for stored, value in zip(originals(module, tensor_name), structured.fresh(w), strict=True):
                    stored.copy_(value)
    return [c[0] for c in chosen]


def export_dense(model: nn.Module) -> nn.Module:
    """Remove every parametrization in place, leaving plain dense weights equal to the parametrized ones.

    The weights are evaluated in eval mode, so training-only noise (co-matrix dropout) is never baked in.
    """
    for _, module, tensor_name, _ in list(parametrized_tensors(model)):
        module.parametrizations[tensor_name].eval()
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()
    return model


def _deployed(module: nn.Module, tensor_name: str, form: str):
    """``Structured.<form>(factors)`` of one parametrized weight, its factors detached, without autograd."""
    structured = module.parametrizations[tensor_name][0]
    factors = tuple(f.detach() for f in originals(module, tensor_name))
    with torch.no_grad():
        return getattr(structured, form)(factors)


def deployed_matvec(module: nn.Module, tensor_name: str) -> Callable[[Tensor], Tensor]:
    """The deployment form of one parametrized weight: x -> W x without building W."""
    return _deployed(module, tensor_name, "deploy")


def deployed_parts(module: nn.Module, tensor_name: str) -> tuple[Callable[[Tensor], Tensor], Tensor | None]:
    """``Structured.deploy_parts`` of one parametrized weight: (closure, sparse CSR part or None)."""
    return _deployed(module, tensor_name, "deploy_parts")


def deployed_terms(module: nn.Module, tensor_name: str) -> list[terms.Term] | None:
    """``Structured.deploy_terms`` of one parametrized weight."""
    return _deployed(module, tensor_name, "deploy_terms")


def deployed_dense(module: nn.Module, tensor_name: str) -> Tensor | None:
    """``Structured.deploy_dense`` of one parametrized weight: the rebuilt matrix, or None."""
    return _deployed(module, tensor_name, "deploy_dense")


def apply_structured(make: Callable[[str, Tensor, CompressorConfig, DataContext], Structured]):
    """Turn a per-matrix constructor ``make(name, w, cfg, ctx)`` into a method's ``apply``: parametrize every
    target; a scratch init then draws each matrix's factors."""

    def apply(model: nn.Module, cfg: CompressorConfig, ctx: DataContext | None = None) -> None:
        ctx = ctx if ctx is not None else DataContext()
        with torch.no_grad():
            compress_targets(
                model, cfg.targets, lambda name, w: make(name, w, cfg, ctx), fresh=cfg.init == "scratch"
            )

    return apply


def check_budget(name: str, shape: tuple[int, int], factor: float, stored: float, best: str) -> None:
    """Raise a CompressionError when a matrix cannot reach ``factor``; ``best`` says what it can reach."""
    m, n = shape
    if stored <= 0 or m * n / stored < factor * (1 - 1e-9):
        err = CompressionError(
            f"{name} ({m}x{n}) cannot reach CF {factor:g}: {best}; ask for a smaller --factor"
        )
        err.best = best  # what the method can reach, for methods that wrap this one
        raise err


#: A matrix whose achieved CF exceeds the target by more than this is flagged as the closest achievable.
CF_TOLERANCE = 0.05


def budget_detail(shape: tuple[int, int], factor: float, stored: float) -> dict:
    """Target vs achieved CF of one matrix for ``describe()``: the accounting then states when a method's
    granularity (rank, factor shapes) only allowed the closest achievable CF above the target."""
    achieved = shape[0] * shape[1] / stored
    return {"target_cf": factor, "closest_achievable": achieved > factor * (1 + CF_TOLERANCE)}
