"""Honest storage accounting: the one place where compression factors are computed.

CF = dense parameters of the targeted matrices / what is stored for them after compression. "Stored" counts
factor values, sparse values and sparse indices, the index bytes converted to value-equivalents at fp32
(an int32 index costs exactly one fp32 value). Values kept in 8 bits (quantized factors) count their bytes: a
quarter of an fp32 value each, their fp32 scales as ordinary values. The values-only CF is reported beside it.
Biases, embeddings and every other untouched parameter enter the whole-model CF as stored dense values.

A tensor that several matrices read (a hashed pool shared across layers) is counted once, by identity: its
storage enters the targeted and whole-model totals once, and each matrix's row carries a share of it in
proportion to its dense size (the shares add up to the tensor's storage).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, astuple, dataclass, field

from torch import nn
from torch.nn.utils import parametrize

VALUE_BYTES = 4  # fp32 values
INDEX_BYTES = 4  # int32 indices, as the deployed CSR kernels use them
Q8_BYTES = 1  # 8-bit quantized values


@dataclass
class Storage:
    """What a compressed matrix keeps: dense factor values (fp32), sparse values, sparse index entries and
    8-bit values (quantized factors; their per-row fp32 scales are counted in ``values``)."""

    values: int = 0
    sparse_values: int = 0
    indices: int = 0
    q8_values: int = 0

    @property
    def index_equiv(self) -> float:
        """Index entries expressed as fp32 value-equivalents."""
        return self.indices * INDEX_BYTES / VALUE_BYTES

    @property
    def q8_equiv(self) -> float:
        """8-bit values expressed as fp32 value-equivalents (their bytes / 4)."""
        return self.q8_values * Q8_BYTES / VALUE_BYTES

    @property
    def total(self) -> float:
        return self.total_values + self.index_equiv

    @property
    def total_values(self) -> float:
        """Every stored value in fp32 value-equivalents, indices left out (the values-only CF's denominator)."""
        plain = self.values + self.sparse_values
        return plain + self.q8_equiv if self.q8_values else plain

    def __add__(self, other: Storage) -> Storage:
        return Storage(*(a + b for a, b in zip(astuple(self), astuple(other))))


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
    shared: float = 0.0
    """This matrix's share (by dense size) of the tensors it shares with others, in value-equivalents; the
    totals count each shared tensor once instead."""
    shared_values: float = 0.0
    """The same share, indices left out."""

    @property
    def dense(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def cf(self) -> float:
        return self.dense / (self.storage.total + self.shared)

    @property
    def cf_values(self) -> float:
        return self.dense / (self.storage.total_values + self.shared_values)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "method": self.method,
            "dense": self.dense,
            **asdict(self.storage),
            "shared": self.shared,
            "stored": self.storage.total + self.shared,
            "cf": self.cf,
            "cf_values": self.cf_values,
            "detail": self.detail,
        }


@dataclass
class SharedAccount:
    """A tensor several compressed matrices read (``Structured.shared_storage``), counted once."""

    label: str
    shape: tuple[int, ...]
    storage: Storage
    users: list[str] = field(default_factory=list)
    """Qualified names of the matrices that read it."""

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "shape": list(self.shape),
            **asdict(self.storage),
            "stored": self.storage.total,
            "users": list(self.users),
        }


@dataclass
class Accounting:
    """Per-matrix table, the shared tensors, and targeted and whole-model totals."""

    matrices: list[MatrixAccount]
    model_dense: int
    model_stored: float
    shared: list[SharedAccount] = field(default_factory=list)

    @property
    def targeted_dense(self) -> int:
        return sum(m.dense for m in self.matrices)

    @property
    def targeted_storage(self) -> Storage:
        """Own storage of every targeted matrix plus each shared tensor once."""
        return sum([m.storage for m in self.matrices] + [s.storage for s in self.shared], Storage())

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
            "shared": [s.to_dict() for s in self.shared],
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

    Parametrized tensors report their own storage (``storage()``) and the tensors they share with others
    (``shared_storage()``), which are counted once by identity. Plain parameters matching ``targets``
    are targeted matrices stored dense (the ``dense`` and ``small_dense`` methods). ``reference`` is the dense
    model of the same configuration, needed only when compression changed the shapes themselves
    (``small_dense``); by default the reference is ``model`` with every parametrization materialized.
    """
    plain = _plain_parameters(model)
    ref_shapes: dict[str, tuple[int, int]] = {}
    if reference is not None:
        ref_shapes = {n: tuple(p.shape) for n, p in reference.named_parameters()}

    matrices: list[MatrixAccount] = []
    shared: dict[int, SharedAccount] = {}
    model_dense = 0
    model_stored = 0.0
    for qual, _, _, param in parametrized_tensors(model):
        acc = MatrixAccount(qual, tuple(param.shape), param.method, param.storage(), param.describe())
        matrices.append(acc)
        model_dense += acc.dense
        model_stored += acc.storage.total
        for label, tensor, storage in param.shared_storage():
            entry = shared.setdefault(id(tensor), SharedAccount(label, tuple(tensor.shape), storage))
            entry.users.append(qual)
    by_name = {m.name: m for m in matrices}
    for entry in shared.values():
        model_stored += entry.storage.total
        users_dense = sum(by_name[u].dense for u in entry.users)
        for u in entry.users:
            by_name[u].shared += entry.storage.total * by_name[u].dense / users_dense
            by_name[u].shared_values += entry.storage.total_values * by_name[u].dense / users_dense
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
    return Accounting(matrices, model_dense, model_stored, list(shared.values()))
