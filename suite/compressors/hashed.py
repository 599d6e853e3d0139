"""HashedNets ``hashed`` (Chen et al., 2015): every entry of W is one of K shared values, chosen by a hash.

    W[i, j] = xi(i, j) * pool[h(i, j)],   h(i, j) in [0, K),  xi(i, j) in {-1, +1}

h and xi are MurmurHash3 (x86, 32-bit) of the entry's row-major index i n + j, implemented with torch integer
ops (exact in int64, so the same on every machine and run), under two seeds derived from ``hash_seed`` and the
matrix's qualified name (CRC-32): each matrix has hash functions of its own. The hashes are recomputed from
(name, shape, seed) and never stored, so a matrix stores only its pool: K = floor(mn / CF) values (no indices).

Shared pool (``shared_pool: true``): one pool for all targeted matrices, a single nn.Parameter that every
matrix's parametrization references (the optimizer sees it once; the accounting counts it once through
``shared_storage``, each matrix's row carrying its share by dense size). Each matrix then stores one value of its
own, a scale s: W[i, j] = s * xi(i, j) * pool[h(i, j)], so matrices initialised at different scales can share a
pool. Budget: K + L <= (sum of the L matrices' mn) / CF.

Inits. ``scratch``: the pool Gaussian with the standard deviation of the fresh dense weight (shared: a unit
Gaussian pool and s = that deviation). ``trained``: the least-squares pool, pool[k] = mean of xi * W over the
entries hashed to k (shared: the joint least squares over every matrix, each matrix's scale set to its RMS
first). Decomposing one weight of a shared pool fits its own scale only (least squares against the pool),
since the pool belongs to every matrix.

Deployment: the virtual matrix is expanded once (a gather of the pool by the recomputed hash) and multiplied
densely: HashedNets saves storage (what is shipped), not inference memory or time. ``matvec`` (the reference
form) gathers row blocks and never holds the whole matrix.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..context import DataContext
from ..errors import CompressionError, ConfigError
from ..settings import setting
from .accounting import Storage
from .registry import (
    CompressorConfig,
    Method,
    Structured,
    apply_structured,
    check_budget,
    compress_targets,
    find_targets,
    register,
)

MASK32 = 0xFFFFFFFF
SIGN_SALT = 0x5BD1E995


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), without int64 overflow: x split into 16-bit halves."""
    lo = (x & 0xFFFF) * c  # < 2^48
    hi = ((x >> 16) * c) & 0xFFFF  # only its low 16 bits survive the shift
    return (lo + (hi << 16)) & MASK32


def _rotl32(x: Tensor, r: int) -> Tensor:
    return ((x << r) | (x >> (32 - r))) & MASK32


def murmur3_32(keys: Tensor, seed: int) -> Tensor:
    """MurmurHash3_x86_32 of each key read as one 4-byte little-endian block: int64 in, int64 in [0, 2^32) out."""
    k = _mul32(keys.long() & MASK32, 0xCC9E2D51)
    k = _mul32(_rotl32(k, 15), 0x1B873593)
    h = _rotl32(torch.full_like(k, seed & MASK32) ^ k, 13)
    h = (h * 5 + 0xE6546B64) & MASK32
    h = h ^ 4  # the key length in bytes
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def hash_seeds(name: str, hash_seed: int) -> tuple[int, int]:
    """The (bucket, sign) seeds of one matrix: murmur of the CRC-32 of its name under ``hash_seed``."""
    base = int(murmur3_32(torch.tensor([zlib.crc32(name.encode())]), hash_seed)[0])
    return base, base ^ SIGN_SALT


def hashed_layout(shape: tuple[int, int], pool: int, name: str, hash_seed: int) -> tuple[Tensor, Tensor]:
    """(bucket (m, n) int64 in [0, pool), sign (m, n) of +-1) of a matrix."""
    m, n = shape
    if m * n >= 2**32:
        raise ConfigError(f"{name} ({m}x{n}) has more entries than a 32-bit hash key can index")
    seed_bucket, seed_sign = hash_seeds(name, hash_seed)
    keys = torch.arange(m * n, dtype=torch.int64)
    bucket = (murmur3_32(keys, seed_bucket) % pool).view(m, n)
    sign = (murmur3_32(keys, seed_sign) & 1).view(m, n) * 2 - 1
    return bucket, sign


class Hashed(Structured):
    """W = xi * pool[h] (private pool: the one factor) or s * xi * pool[h] (shared pool: the factor is s)."""

    method = "hashed"

    def __init__(
        self,
        shape: tuple[int, int],
        pool_size: int,
        name: str,
        hash_seed: int = 0,
        shared: nn.Parameter | None = None,
        target: float | None = None,
    ) -> None:
        super().__init__(shape)
        self.pool_size, self.name, self.hash_seed, self.target = pool_size, name, hash_seed, target
        self.pool = shared  # registered as this module's parameter: the same object in every sharing matrix
        bucket, sign = hashed_layout(self.shape, pool_size, name, hash_seed)
        self.register_buffer("bucket", bucket, persistent=False)  # recomputed, never stored
        self.register_buffer("sign", sign.float(), persistent=False)

    @property
    def is_shared(self) -> bool:
        return self.pool is not None

    def forward(self, own: Tensor) -> Tensor:
        if self.is_shared:
            return own * (self.pool[self.bucket] * self.sign)  # own: the scale s, (1,)
        return own[self.bucket] * self.sign  # own: the pool, (K,)

    def least_squares_pool(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(sum of xi W per bucket, entries per bucket), both (K,)."""
        flat = self.bucket.flatten()
        sums = w.new_zeros(self.pool_size).index_add_(0, flat, (self.sign.to(w.dtype) * w).flatten())
        counts = w.new_zeros(self.pool_size).index_add_(0, flat, torch.ones_like(w).flatten())
        return sums, counts

    def right_inverse(self, w: Tensor) -> tuple[Tensor]:
        if not self.is_shared:
            sums, counts = self.least_squares_pool(w)
            return (sums / counts.clamp_min(1),)  # an empty bucket: 0
        virtual = self.pool.detach()[self.bucket] * self.sign  # the pool's matrix at scale 1
        energy = (virtual * virtual).sum()
        if energy > 0:
            return (((virtual * w).sum() / energy).reshape(1).to(w.dtype),)
        return (w.pow(2).mean().sqrt().reshape(1),)  # no pool yet: the RMS, the joint fit's starting scale

    def fresh(self, w: Tensor) -> tuple[Tensor]:
        std = w.float().std().item()
        if self.is_shared:
            return (torch.full((1,), std, dtype=w.dtype),)
        return (torch.randn(self.pool_size, dtype=w.dtype) * std,)

    def storage(self) -> Storage:
        return Storage(values=1 if self.is_shared else self.pool_size)

    def shared_storage(self) -> list[tuple[str, Tensor, Storage]]:
        if not self.is_shared:
            return []
        return [("hashed pool", self.pool, Storage(values=self.pool.numel()))]

    def describe(self) -> dict:
        detail = {"pool": self.pool_size, "shared_pool": self.is_shared, "hash_seed": self.hash_seed}
        if not self.is_shared:
            return detail | self.budget()
        if self.target is not None:
            detail["target_cf"] = self.target  # met by the totals: the pool is counted once for all matrices
        return detail

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor, rows: int = 256) -> Tensor:
        """The hashed gather, ``rows`` rows of W at a time."""
        own = factors[0]
        pool, scale = (self.pool, own) if self.is_shared else (own, 1.0)
        out = []
        for start in range(0, self.shape[0], rows):
            part = pool[self.bucket[start : start + rows]] * self.sign[start : start + rows]  # (rows, n)
            out.append(part @ x)
        return torch.cat(out) * scale

    def deploy_dense(self, factors: tuple[Tensor, ...]) -> Tensor:
        return self(*factors).contiguous()  # expanded once (module docstring)


@dataclass
class HashedConfig(CompressorConfig):
    """HashedNets: K shared values per matrix (or one pool for all), K from the CF."""

    shared_pool: bool = False
    """One pool shared by every targeted matrix (plus one scale per matrix) instead of one pool each."""
    hash_seed: int = setting(0, ge=0)
    """Seed of the hash functions (with each matrix's name): the same seed gives the same layout everywhere."""


def make_private(name: str, w: Tensor, cfg: HashedConfig, ctx=None) -> Hashed:
    shape = tuple(w.shape)
    m, n = shape
    k = math.floor(m * n / cfg.factor + 1e-9)
    check_budget(name, shape, cfg.factor, max(k, 1), f"a pool of one value is CF {m * n}")
    return Hashed(shape, k, name, cfg.hash_seed, target=cfg.factor)


@torch.no_grad()
def fit_shared_pool(pool: nn.Parameter, members: list[tuple[Hashed, Tensor, Tensor]]) -> None:
    """Joint least squares: pool[k] = sum_l s_l sum_{h_l = k} xi_l W_l / sum_l s_l^2 #{h_l = k}; members are
    (parametrization, its scale factor, its dense weight)."""
    num = torch.zeros_like(pool)
    den = torch.zeros_like(pool)
    for structured, scale, w in members:
        sums, counts = structured.least_squares_pool(w)
        s = float(scale)
        num += s * sums
        den += s * s * counts
    pool.copy_(num / den.clamp_min(1e-30))


def apply_hashed(model: nn.Module, cfg: HashedConfig, ctx: DataContext | None = None) -> None:
    if not cfg.shared_pool:
        return apply_structured(make_private)(model, cfg, ctx)
    scratch = cfg.init == "scratch"
    chosen = find_targets(model, cfg.targets)
    dense = sum(p.numel() for *_, p in chosen)
    k = math.floor(dense / cfg.factor + 1e-9) - len(chosen)  # the pool, after one scale per matrix
    if k < 1:
        raise CompressionError(
            f"the {len(chosen)} targeted matrices ({dense} weights) cannot reach CF {cfg.factor:g} with a shared "
            f"pool: their scales and a one-value pool already give CF {dense / (len(chosen) + 1):.1f}; ask for "
            "a smaller --factor"
        )
    pool = nn.Parameter(torch.randn(k) if scratch else torch.zeros(k))
    members: dict[str, tuple[Hashed, Tensor]] = {}

    def make(name: str, w: Tensor) -> Hashed:
        structured = Hashed(tuple(w.shape), k, name, cfg.hash_seed, shared=pool, target=cfg.factor)
        members[name] = (structured, w.clone())
        return structured

    with torch.no_grad():
        compress_targets(model, cfg.targets, make, fresh=scratch)
        if not scratch:
            scales = {qual: module.parametrizations[t].original0 for qual, module, t, _ in chosen}
            fit_shared_pool(pool, [(s, scales[n], w) for n, (s, w) in members.items()])


register(
    Method(
        name="hashed",
        config=HashedConfig,
        apply=apply_hashed,
        summary="HashedNets: each weight one of K values picked by a hash (recomputed, not stored); K from the CF",
    )
)
