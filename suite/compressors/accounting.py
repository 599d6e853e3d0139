"""Honest storage accounting: the one place where compression factors are computed.

CF = dense parameters of the targeted matrices / what is stored for them after compression. "Stored" counts
factor values, sparse values and sparse indices, the index bytes converted to value-equivalents at fp32
(an int32 index costs exactly one fp32 value). The values-only CF is reported beside it. Biases, embeddings and
every other untouched parameter enter the whole-model CF as stored dense values.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field

from torch import nn
from torch.nn.utils import parametrize

VALUE_BYTES = 4  # fp32 values
INDEX_BYTES = 4  # int32 indices, as the deployed CSR kernels use them


@dataclass
class Storage:
    """What a compressed matrix keeps: dense factor values, sparse values and sparse index entries."""

    values: int = 0
    sparse_values: int = 0
    indices: int = 0

    @property
    def index_equiv(self) -> float:
        """Index entries expressed as fp32 value-equivalents."""
        return self.indices * INDEX_BYTES / VALUE_BYTES

    @property
    def total(self) -> float:
        return self.values + self.sparse_values + self.index_equiv

    @property
    def total_values(self) -> int:
        return self.values + self.sparse_values

    def __add__(self, other: Storage) -> Storage:
        return Storage(
            self.values + other.values,
            self.sparse_values + other.sparse_values,
            self.indices + other.indices,
        )


def format_cf(cf: float | None) -> str:
    """A CF with two decimals, rounded down: a table never shows more compression than was achieved."""
    if cf is None or not math.isfinite(cf):
        return "-"
    return f"{math.floor(cf * 100 + 1e-9) / 100:.2f}"


def csr_storage(rows: int, nnz: int) -> Storage:
    """CSR of a (rows, cols) matrix: nnz values, nnz column indices and rows + 1 row pointers."""
    return Storage(sparse_values=nnz, indices=nnz + rows + 1)


@dataclass
class MatrixAccount:
    """One targeted matrix: its dense shape, the method that compressed it and what it stores."""

    name: str
    shape: tuple[int, int]
    method: str
    storage: Storage
    detail: dict = field(default_factory=dict)

    @property
    def dense(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def cf(self) -> float:
        return self.dense / self.storage.total

    @property
    def cf_values(self) -> float:
        return self.dense / self.storage.total_values

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "method": self.method,
            "dense": self.dense,
            **asdict(self.storage),
            "stored": self.storage.total,
            "cf": self.cf,
            "cf_values": self.cf_values,
            "detail": self.detail,
        }


@dataclass
class Accounting:
    """Per-matrix table plus targeted and whole-model totals."""

    matrices: list[MatrixAccount]
    model_dense: int
    model_stored: float

    @property
    def targeted_dense(self) -> int:
        return sum(m.dense for m in self.matrices)

    @property
    def targeted_storage(self) -> Storage:
        total = Storage()
        for m in self.matrices:
            total = total + m.storage
        return total

    @property
    def cf(self) -> float:
        return self.targeted_dense / self.targeted_storage.total

    @property
    def cf_values(self) -> float:
        return self.targeted_dense / self.targeted_storage.total_values

    @property
    def model_cf(self) -> float:
        return self.model_dense / self.model_stored

    def to_dict(self) -> dict:
        return {
            "cf": self.cf,
            "cf_values": self.cf_values,
            "model_cf": self.model_cf,
            "targeted_dense": self.targeted_dense,
            "targeted_stored": self.targeted_storage.total,
            "model_dense": self.model_dense,
            "model_stored": self.model_stored,
            "matrices": [m.to_dict() for m in self.matrices],
        }


def matches(name: str, patterns: list[str]) -> bool:
    """Whether a qualified parameter name (``lstm.weight_hh_l0``) matches any fnmatch pattern."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def parametrized_tensors(model: nn.Module):
    """Yield (qualified name, module, tensor name, parametrization) for each parametrized tensor."""
    for mod_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                qual = f"{mod_name}.{tensor_name}" if mod_name else tensor_name
                yield qual, module, tensor_name, plist[0]


def _plain_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters not owned by a parametrization, deduplicated (a tied weight counts once)."""
    owned = set()
    for _, module, _, _ in parametrized_tensors(model):
        owned.update(id(p) for p in module.parametrizations.parameters())
    return {n: p for n, p in model.named_parameters() if id(p) not in owned}


def account(
    model: nn.Module,
    targets: list[str],
    reference: nn.Module | None = None,
    method: str = "dense",
) -> Accounting:
    """Count what ``model`` stores against its dense reference.

    Parametrized tensors report their own storage (``storage()``). Plain parameters matching ``targets``
    are targeted matrices stored dense (the ``dense`` and ``small_dense`` methods). ``reference`` is the dense
    model of the same configuration, needed only when compression changed the shapes themselves
    (``small_dense``); by default the reference is ``model`` with every parametrization materialized.
    """
    plain = _plain_parameters(model)
    ref_shapes: dict[str, tuple[int, int]] = {}
    if reference is not None:
        ref_shapes = {n: tuple(p.shape) for n, p in reference.named_parameters()}

    matrices: list[MatrixAccount] = []
    model_dense = 0
    model_stored = 0.0
    for qual, _, _, param in parametrized_tensors(model):
        acc = MatrixAccount(qual, tuple(param.shape), param.method, param.storage(), param.describe())
        matrices.append(acc)
        model_dense += acc.dense
        model_stored += acc.storage.total
    for name, p in plain.items():
        model_stored += p.numel()
        if matches(name, targets) and p.dim() == 2:
            shape = ref_shapes.get(name, tuple(p.shape))
            matrices.append(
                MatrixAccount(name, shape, method, Storage(values=p.numel()), {"stored_shape": list(p.shape)})
            )
    if reference is not None:
        model_dense = sum(p.numel() for p in reference.parameters())
    else:
        model_dense += sum(p.numel() for p in plain.values())
    matrices.sort(key=lambda m: m.name)
    return Accounting(matrices, model_dense, model_stored)
