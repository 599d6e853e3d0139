"""Doped structured matrices: W = S(theta) + M * D, S a Kronecker (``doped_kp``), low-rank (``doped_lmf``) or
hybrid (``doped_hmd``) matrix, D a trainable dense-shaped matrix and M a binary mask buffer.

Budget. The structured part gets ``structured_share`` of the stored budget mn / CF: it is built at CF
CF / structured_share (its closest achievable shape at or above that). D gets exactly what S leaves: its final
number of nonzeros is the largest nnz whose CSR (nnz values, nnz column indices, m + 1 row pointers, all
counted as fp32 value-equivalents) fits, so s_f = 1 - nnz_f / mn and the whole matrix meets the target CF.
The accounting always counts D's current nonzeros; before annealing ends that is more than the budget.

Co-matrix dropout (CMR, rate ``cmr``, training only): mode ``element`` drops each entry of M * D with
probability p, mode ``matrix`` drops the whole of M * D with probability p per training step; both scale what
is kept by 1 / (1 - p) (inverted dropout), so the evaluated matrix is the expectation of the trained one.
Sparsity annealing is the shared sparse piece (``sparse``: mask, magnitude pruning, Zhu-Gupta schedule); the
CMA diagnostics are the Lightning callback of ``doping_callbacks``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CompressionError, ConfigError
from ..settings import setting
from . import terms
from .accounting import Storage, csr_storage
from .hybrid import HMDConfig, make_hmd
from .kronecker import KPConfig, make_kp
from .lowrank import LMFConfig, make_lowrank
from .registry import (
    Column,
    CompressorConfig,
    Diagnostics,
    Method,
    Structured,
    apply_structured,
    register,
)
from .sparse import (
    Masked,
    SparseTensor,
    SparsityAnnealing,
    check_annealing,
    finish,
    sparse_tensors,
)


def drop_entries(sparse: Tensor, p: float) -> Tensor:
    """CMR ``element``: inverted dropout on the entries of M * D."""
    return F.dropout(sparse, p, training=True)


def drop_matrix(sparse: Tensor, p: float) -> Tensor:
    """CMR ``matrix``: the whole of M * D kept with probability 1 - p (scaled by 1 / (1 - p)), else zero."""
    keep = torch.rand((), device=sparse.device) >= p  # a tensor, so no host sync on an accelerator
    return sparse * (keep / (1 - p))


CMR_MODES: dict[str, Callable[[Tensor, float], Tensor]] = {"element": drop_entries, "matrix": drop_matrix}


class Doped(Masked, Structured):
    """W = S(factors) + M * D. Factors: the structured part's, then D. Decomposing a weight (a ``trained`` init)
    takes S from it (the structured part's decomposition) and D = the residual W - S; a scratch init draws S
    fresh and D = 0."""

    def __init__(
        self,
        structured: Structured,
        final_nnz: int,
        method: str,
        cmr: float = 0.0,
        cmr_mode: str = "element",
        target: float | None = None,
    ) -> None:
        super().__init__(structured.shape)
        self.structured = structured
        self.method = method
        self.final_nnz = final_nnz
        self.cmr, self.cmr_mode = cmr, cmr_mode
        self._drop = CMR_MODES[cmr_mode]
        self.target = target
        self.sparse_enabled = True
        """False evaluates S alone (the CMA diagnostic 'val ppl with D removed')."""
        self.register_buffer("mask", torch.ones(self.shape))
        """M: 1 where D keeps an entry, 0 where it was pruned. Stored in D's dtype, as a multiplier: in
        training, S + D * M (one fused addcmul) costs a third of what a boolean torch.where costs."""

    def forward(self, *factors: Tensor) -> Tensor:
        s = self.structured(*factors[:-1])
        if not self.sparse_enabled:
            return s
        if self.training and self.cmr > 0:
            return s + self._drop(factors[-1] * self.mask, self.cmr)  # S + M * D with co-matrix dropout
        return torch.addcmul(s, factors[-1], self.mask)  # S + D * M

    def right_inverse(self, w: Tensor) -> tuple[Tensor, ...]:
        factors = self.structured.right_inverse(w)
        factors = factors if isinstance(factors, tuple) else (factors,)
        d = (w - self.structured(*factors)) * self.mask  # the residual at the entries D still has
        return (*factors, d)

    def fresh(self, w: Tensor) -> tuple[Tensor, ...]:
        return (*self.structured.fresh(w), torch.zeros_like(w))

    def storage(self) -> Storage:
        return self.structured.storage() + csr_storage(self.shape[0], self.nnz)

    def final_storage(self) -> Storage:
        """What is stored once annealing has reached s_f."""
        return self.structured.storage() + csr_storage(self.shape[0], self.final_nnz)

    def describe(self) -> dict:
        return {
            "structured": {"method": self.structured.method, **self.structured.describe()},
            **self.sparsity(),
            "annealed": self.nnz <= self.final_nnz,
            "cmr": self.cmr,
            "cmr_mode": self.cmr_mode,
            **self.budget(),
        }

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return self.structured.matvec(factors[:-1], x) + self.csr(factors[-1]) @ x

    def deploy(self, factors: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
        s_mv = self.structured.deploy(factors[:-1])
        csr = self.csr(factors[-1])
        return lambda x: s_mv(x).addmv_(csr, x)  # (m,) structured, plus the sparse product in place

    def deploy_parts(self, factors: tuple[Tensor, ...]) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        return self.structured.deploy(factors[:-1]), self.csr(factors[-1])

    def deploy_terms(self, factors: tuple[Tensor, ...]) -> list[terms.Term] | None:
        structured = self.structured.deploy_terms(factors[:-1])
        return None if structured is None else [*structured, terms.Sparse(self.csr(factors[-1]))]


def doped_tensors(model: nn.Module) -> list[SparseTensor]:
    """The doped weights of a model (``factors``: S's then D; ``values``: D)."""
    return [t for t in sparse_tensors(model) if isinstance(t.param, Doped)]


def finish_annealing(model: nn.Module) -> None:
    """Prune every doped weight to its final sparsity s_f (the deployed state)."""
    finish(model)


@dataclass
class DopedConfig(CompressorConfig):
    """Settings every doped method shares (the structured part's own settings come from its method)."""

    structured_share: float = setting(0.8, gt=0, lt=1)
    """Fraction of the stored budget (mn / CF) given to the structured part S; D's CSR gets the rest."""
    initial_sparsity: float = setting(0.0, ge=0, lt=1)
    """s_0, the sparsity of D when annealing starts (capped at s_f)."""
    anneal_start: float = setting(0.1, ge=0, lt=1)
    """Annealing starts at this fraction of the training steps ..."""
    anneal_end: float = setting(0.75, gt=0, le=1)
    """... and reaches s_f at this fraction."""
    prune_every: int = setting(100, ge=1)
    """dt: steps between magnitude-pruning events (fewer when the window is under 10 dt, see the callback)."""
    cmr: float = setting(0.0, ge=0, lt=1)
    """Co-matrix dropout rate p, training only (0: off)."""
    cmr_mode: str = setting("element", choices=CMR_MODES)
    """``element``: dropout on D's entries; ``matrix``: the whole D dropped with probability p per step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_annealing(self)
        if self.init == "trained" and self.finetune_epochs == 0:
            raise ConfigError(
                "doping anneals D while training: finetune_epochs must be > 0 with init=trained"
            )


@dataclass
class DopedKPConfig(DopedConfig, KPConfig):
    """Doped Kronecker product: S = sum of ``terms`` Kronecker products."""


@dataclass
class DopedLMFConfig(DopedConfig, LMFConfig):
    """Doped low-rank factorization: S = U V."""


@dataclass
class DopedHMDConfig(DopedConfig, HMDConfig):
    """Doped hybrid matrix decomposition: S = [dense rows; U V]."""


def make_doped(method: str, make_structured: Callable[[str, Tensor, CompressorConfig], Structured]):
    """A per-matrix constructor for ``apply_structured``: S at CF / structured_share, D in what is left."""

    def make(name: str, w: Tensor, cfg: DopedConfig, ctx) -> Doped:
        m, n = w.shape
        s_factor = cfg.factor / cfg.structured_share
        try:
            structured = make_structured(name, w, dataclasses.replace(cfg, factor=s_factor), ctx)
        except CompressionError as e:
            raise CompressionError(
                f"{name} ({m}x{n}) cannot reach CF {cfg.factor:g} with {method}: its structured part gets "
                f"structured_share {cfg.structured_share:g} of the budget and so needs CF {s_factor:g}, but "
                f"{getattr(e, 'best', e)}; ask for a smaller --factor"
            ) from None
        room = m * n / cfg.factor - structured.storage().total - (m + 1)  # less the CSR row pointers
        final_nnz = min(m * n, math.floor(room / 2 + 1e-9))  # a value and a column index per nonzero
        if final_nnz < 1:
            raise CompressionError(
                f"{name} ({m}x{n}) cannot reach CF {cfg.factor:g} with {method}: the structured part stores "
                f"{structured.storage().total:g} values and D's CSR row pointers {m + 1}, leaving no room for "
                "sparse values; ask for a smaller --factor or a smaller structured_share"
            )
        return Doped(structured, final_nnz, method, cfg.cmr, cfg.cmr_mode, cfg.factor)

    return make


def doping_callbacks(cfg: DopedConfig) -> list:
    """The Lightning callbacks a doped run trains with: sparsity annealing, then the CMA diagnostics."""
    from .doping_callbacks import CMADiagnostics  # imports this module

    annealing = SparsityAnnealing(cfg.initial_sparsity, cfg.anneal_start, cfg.anneal_end, cfg.prune_every)
    return [annealing, CMADiagnostics()]


#: What a doped run logs per validation epoch (``doping_callbacks.CMADiagnostics``) and the setting F3 sweeps.
CMA = Diagnostics(
    title="co-matrix adaptation",
    abbrev="CMA",
    methods="doped",
    during="while annealing",
    part="D",
    schedule=Column("d_sparsity", "sparsity of D", "fraction of zeros"),
    without="_without_d",
    setting=Column("cmr", "co-matrix dropout rate p (CMR)", "CMR"),
    extra=(Column("d_to_s_ratio", "||(M * D) x|| / ||S x||"),),
)

for _name, _config, _make, _what in (
    ("doped_kp", DopedKPConfig, make_kp, "a Kronecker product"),
    ("doped_lmf", DopedLMFConfig, make_lowrank, "a low-rank U V"),
    ("doped_hmd", DopedHMDConfig, make_hmd, "a hybrid (dense rows + low-rank)"),
):
    register(
        Method(
            name=_name,
            config=_config,
            apply=apply_structured(make_doped(_name, _make)),
            summary=f"{_what} plus a sparse D annealed to the CF's sparsity (cubic schedule), optional CMR",
            callbacks=doping_callbacks,
            finalize=lambda model, cfg: finish(model),
            diagnostics=CMA,
        )
    )
