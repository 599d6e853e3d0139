"""GroupReduce ``groupreduce`` (Chen et al., NeurIPS 2018): block-wise low-rank approximation of a vocabulary
matrix (an embedding, or a softmax / output projection: one row per word), weighted by word frequency.

Blocks. The words are sorted by their count in the training split (the task's ``row_frequencies``) and split
into c = ``blocks`` blocks of equal size (the first V mod c blocks one word larger). Block b's rows are
approximated by U_b V_b, U_b (n_b, r_b), V_b (r_b, E).

Ranks. Block b gets r_b = max(1, round(base * (f_b / f_1)^gamma)), capped at min(n_b, E), where f_b is the mean
count of its words (on the initial split), f_1 that of the most frequent block and gamma = ``rank_exponent``
(0: equal ranks; 1: proportional to frequency; default 0.5). ``base`` (the most frequent block's rank) is the
largest that meets the CF: sum_b r_b (n_b + E) values, plus the word -> block assignment stored as V int32
indices (each word's row in the block order) and c + 1 block offsets. With ``quantize`` the factors are counted
as 8-bit values with one fp32 scale per row of each U_b and V_b, and the ranks are solved for that storage.

Fit. Per block, the frequency-weighted rank-r_b fit: minimize sum_i f_i ||a_i - u_i V_b||^2 over the block's rows
a_i. The rows are scaled by sqrt(f_i) (plus 1e-9 of the largest count, so a block of unseen words is fitted
unweighted), V_b is the top r_b right singular vectors of the scaled rows, and U_b = A_b V_b^T (the unscaled rows
projected: the optimum for every weight). The scale is then split evenly between U_b and V_b per component.

Refinement (``refine_iters`` rounds). Each word's cost in block b is f_i ||a_i - a_i V_b^T V_b||^2 (the block's
subspace reconstructs it); the words move to the block that reconstructs them best, with the block sizes kept
(so the factor shapes and the budget stay those of the initial split): words in decreasing order of regret (the
cost of their second-best block less their best) take the best block that still has room. The blocks are then
refitted; a round is kept only if it lowers the total weighted error, else refinement stops.

Trained weights only (``init: trained``; a scratch GroupReduce has nothing to decompose); ``finetune_epochs``
(default 0) trains the factors after. Quantization (``quantize``) happens in ``finalize``, after any
fine-tuning: each row of every U_b and V_b is rounded to 8 bits, symmetric, with scale max|row| / 127; the
factors keep the dequantized values and the accounting counts bytes from then on.

Deployment. Embedding: a row lookup, row i = u_i V_b for i's block b (``lookup``). Softmax (the (V, H) decoder):
y = W h block by block, U_b (V_b h) scattered to the block's words (``matvec``, ``deploy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..context import DataContext
from ..errors import ConfigError
from ..settings import setting
from . import terms
from .accounting import Storage, parametrized_tensors
from .registry import (
    CompressorConfig,
    Method,
    Structured,
    TrainedConfig,
    apply_structured,
    check_budget,
    originals,
    register,
)

Q8_LEVELS = 127  # symmetric 8-bit: integers in [-127, 127]


def block_sizes(rows: int, blocks: int) -> list[int]:
    c = min(blocks, rows)
    return [rows // c + (1 if b < rows % c else 0) for b in range(c)]


def block_storage(sizes: list[int], ranks: list[int], cols: int, quantized: bool) -> Storage:
    """Factors (fp32, or 8-bit with one fp32 scale per row), the word order and the c + 1 block offsets."""
    factors = sum(r * (n + cols) for n, r in zip(sizes, ranks))
    indices = sum(sizes) + len(sizes) + 1
    if quantized:
        scales = sum(n + r for n, r in zip(sizes, ranks))
        return Storage(values=scales, q8_values=factors, indices=indices)
    return Storage(values=factors, indices=indices)


def block_ranks(sizes: list[int], means: list[float], cols: int, base: int, exponent: float) -> list[int]:
    top = max(means)
    out = []
    for n, f in zip(sizes, means):
        share = (f / top) ** exponent if top > 0 else 1.0
        out.append(min(n, cols, max(1, math.floor(base * share + 0.5))))
    return out


def plan(
    shape: tuple[int, int], freqs: Tensor, cfg: GroupReduceConfig, name: str = "matrix"
) -> tuple[Tensor, list[int], list[int]]:
    """(initial word order, block sizes, block ranks) for a target CF: the largest base rank that fits."""
    rows, cols = shape
    order = torch.sort(freqs.double(), descending=True, stable=True).indices
    sizes = block_sizes(rows, cfg.blocks)
    starts = [sum(sizes[:b]) for b in range(len(sizes))]
    means = [float(freqs[order[s : s + n]].double().mean()) for s, n in zip(starts, sizes)]
    budget = rows * cols / cfg.factor
    for base in range(min(max(sizes), cols), 0, -1):
        ranks = block_ranks(sizes, means, cols, base, cfg.rank_exponent)
        if block_storage(sizes, ranks, cols, cfg.quantize).total <= budget * (1 + 1e-12):
            return order, sizes, ranks
    least = block_storage(sizes, [1] * len(sizes), cols, cfg.quantize).total
    check_budget(
        name,
        shape,
        cfg.factor,
        least,
        f"rank 1 in each of {len(sizes)} blocks, with the word order stored, is CF {rows * cols / least:.1f}",
    )
    raise AssertionError  # check_budget raised


def quantize_rows(t: Tensor) -> Tensor:
    """Each row rounded to symmetric 8 bits with scale max|row| / 127 (dequantized: the values used)."""
    scale = t.abs().amax(dim=1, keepdim=True) / Q8_LEVELS  # (rows, 1)
    return torch.round(t / scale.clamp_min(1e-30)).clamp(-Q8_LEVELS, Q8_LEVELS) * scale


class GroupReduce(Structured):
    """Rows of block b (the words ``perm[offset_b : offset_b + n_b]``) = U_b V_b; factors U_1, V_1, ..., U_c, V_c."""

    method = "groupreduce"

    def __init__(
        self,
        shape: tuple[int, int],
        order: Tensor,
        sizes: list[int],
        ranks: list[int],
        freqs: Tensor,
        refine_iters: int = 3,
        quantize: bool = False,
        target: float | None = None,
    ) -> None:
        super().__init__(shape)
        self.sizes, self.ranks = list(sizes), list(ranks)
        self.offsets = [sum(sizes[:b]) for b in range(len(sizes) + 1)]
        self.refine_iters, self.quantize, self.target = refine_iters, quantize, target
        self.register_buffer("perm", order.clone().long())  # the words of each block, block after block
        self.register_buffer("freq", freqs.detach().double().clone(), persistent=False)
        self.register_buffer("quantized", torch.tensor(False))  # set by finalize (``quantize_model``)
        self.errors: list[float] = []
        """Total weighted error of the last decomposition: the initial fit, then each refinement round kept."""

    def forward(self, *factors: Tensor) -> Tensor:
        blocks = torch.cat([u @ v for u, v in zip(factors[::2], factors[1::2])])  # (V, E) in block order
        return torch.zeros_like(blocks).index_copy(0, self.perm, blocks)  # row perm[k] = blocks[k]

    # --- decomposition -----------------------------------------------------------------------------------
    def _fit(self, a: Tensor, perm: Tensor) -> tuple[list[Tensor], list[Tensor], float]:
        """Per block: (coefficients U_b, orthonormal basis V_b); and the total weighted error."""
        us, bases, error = [], [], 0.0
        floor = 1e-9 * max(float(self.freq.max()), 1.0)
        for b, r in enumerate(self.ranks):
            rows = perm[self.offsets[b] : self.offsets[b + 1]]
            block, f = a[rows], self.freq[rows]
            _, _, vh = torch.linalg.svd((f + floor).sqrt()[:, None] * block, full_matrices=False)
            basis = vh[:r]  # (r, E)
            coef = block @ basis.T  # (n_b, r)
            error += float((f * (block - coef @ basis).pow(2).sum(1)).sum())
            us.append(coef)
            bases.append(basis)
        return us, bases, error

    def _reassign(self, a: Tensor, bases: list[Tensor]) -> Tensor:
        """A new word order: each word to the best-reconstructing block with room, largest regret first."""
        energy = a.pow(2).sum(1)  # (V,)
        cost = torch.stack([self.freq * (energy - (a @ q.T).pow(2).sum(1)) for q in bases], 1)  # (V, c)
        ranked = cost.sort(dim=1)
        regret = ranked.values[:, 1] - ranked.values[:, 0]
        preferences = ranked.indices.tolist()  # per word, the blocks from best to worst
        room = list(self.sizes)
        block = [0] * a.size(0)
        for word in torch.sort(regret, descending=True, stable=True).indices.tolist():
            for b in preferences[word]:
                if room[b]:
                    room[b] -= 1
                    block[word] = b
                    break
        block_of = torch.tensor(block, dtype=torch.float64, device=a.device)
        key = block_of * (self.freq.max() + 1) - self.freq
        return torch.sort(key, stable=True).indices  # block after block, frequent words first

    def right_inverse(self, w: Tensor) -> tuple[Tensor, ...]:
        a = w.double()
        perm = self.perm.clone()
        us, bases, error = self._fit(a, perm)
        self.errors = [error]
        for _ in range(self.refine_iters if len(self.sizes) > 1 else 0):
            new = self._reassign(a, bases)
            us2, bases2, error2 = self._fit(a, new)
            if not error2 < error * (1 - 1e-9):
                break
            perm, us, bases, error = new, us2, bases2, error2
            self.errors.append(error)
        self.perm.copy_(perm)
        factors = []
        for coef, basis in zip(us, bases):
            scale = coef.norm(dim=0).clamp_min(1e-30).sqrt()  # (r,): basis rows have norm 1
            factors += [(coef / scale).to(w.dtype), (basis * scale[:, None]).to(w.dtype)]
        return tuple(factors)

    # --- accounting ----------------------------------------------------------------------------------------
    def storage(self) -> Storage:
        return block_storage(self.sizes, self.ranks, self.shape[1], bool(self.quantized))

    def final_storage(self) -> Storage:
        return block_storage(self.sizes, self.ranks, self.shape[1], self.quantize)

    def describe(self) -> dict:
        detail = {
            "blocks": len(self.sizes),
            "sizes": self.sizes,
            "ranks": self.ranks,
            "quantize": self.quantize,
            "quantized": bool(self.quantized),
        }
        if self.errors:
            detail.update(weighted_error=self.errors[-1], refinements=len(self.errors) - 1)
        return detail | self.budget()

    # --- deployment ----------------------------------------------------------------------------------------
    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        out = torch.cat([u @ (v @ x) for u, v in zip(factors[::2], factors[1::2])])  # (V, ...) in block order
        return torch.zeros_like(out).index_copy(0, self.perm, out)

    def deploy(self, factors: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
        pairs = [(u.contiguous(), v.contiguous()) for u, v in zip(factors[::2], factors[1::2])]
        perm, rows = self.perm.clone(), self.shape[0]

        def mv(x: Tensor) -> Tensor:
            out = torch.cat([torch.mv(u, torch.mv(v, x)) for u, v in pairs])  # per block U_b (V_b x)
            return x.new_empty(rows).index_copy_(0, perm, out)  # scattered to the blocks' words

        return mv

    def deploy_terms(self, factors: tuple[Tensor, ...]) -> list[terms.Term]:
        return [
            terms.LowRank(u.contiguous(), v.contiguous(), index=self.perm[lo:hi].int())
            for u, v, lo, hi in zip(factors[::2], factors[1::2], self.offsets, self.offsets[1:])
        ]

    def lookup(self, factors: tuple[Tensor, ...], ids: Tensor) -> Tensor:
        """Rows ``ids`` of W (an embedding lookup) without building W: u_i V_b for each word's block."""
        where = torch.empty_like(self.perm)
        where[self.perm] = torch.arange(self.perm.numel(), device=self.perm.device)  # word -> block-order row
        pos = where[ids]
        out = factors[1].new_empty(*ids.shape, self.shape[1])
        for b, (u, v) in enumerate(zip(factors[::2], factors[1::2])):
            inside = (pos >= self.offsets[b]) & (pos < self.offsets[b + 1])
            out[inside] = u[pos[inside] - self.offsets[b]] @ v
        return out


@dataclass
class GroupReduceConfig(TrainedConfig):
    """GroupReduce of a vocabulary matrix (``targets``: ``embedding.weight`` or ``decoder.weight``)."""

    blocks: int = setting(5, ge=1)
    """c: the number of word blocks (equal sizes, by frequency)."""
    rank_exponent: float = setting(0.5, ge=0, le=4)
    """gamma: block b's rank grows as (mean count of b / mean count of the most frequent block)^gamma."""
    refine_iters: int = setting(3, ge=0)
    """Rounds of moving words to the block that reconstructs them best (0: the frequency split only)."""
    quantize: bool = False
    """Quantize the factors to 8 bits (per-row fp32 scales) at the end; the ranks are solved for that storage."""


def make_groupreduce(name: str, w: Tensor, cfg: GroupReduceConfig, ctx: DataContext) -> GroupReduce:
    freqs = ctx.row_frequencies.get(name)
    if freqs is None:
        vocab = list(ctx.row_frequencies)
        hint = (
            f"set targets={vocab[-1]} (vocabulary matrices: {', '.join(vocab)})"
            if vocab
            else "give its rows' word counts (suite.compress(..., row_frequencies={name: counts}))"
        )
        raise ConfigError(
            f"groupreduce applies only to vocabulary matrices (an embedding or a softmax, one row per word); "
            f"{name} has no word frequencies; {hint}"
        )
    if freqs.numel() != w.size(0):
        raise ConfigError(f"{name} has {w.size(0)} rows but {freqs.numel()} word frequencies")
    order, sizes, ranks = plan(tuple(w.shape), freqs, cfg, name)
    return GroupReduce(tuple(w.shape), order, sizes, ranks, freqs, cfg.refine_iters, cfg.quantize, cfg.factor)


@torch.no_grad()
def quantize_model(model: nn.Module, cfg: CompressorConfig | None = None) -> None:
    """``finalize``: quantize the factors of every GroupReduce matrix that asks for it (idempotent)."""
    for _, module, tensor_name, param in parametrized_tensors(model):
        if isinstance(param, GroupReduce) and param.quantize and not param.quantized:
            for factor in originals(module, tensor_name):
                factor.copy_(quantize_rows(factor))
            param.quantized.fill_(True)


register(
    Method(
        name="groupreduce",
        config=GroupReduceConfig,
        apply=apply_structured(make_groupreduce),
        summary="GroupReduce: frequency-blocked, frequency-weighted low-rank of an embedding or softmax; opt. 8-bit",
        needs=frozenset({"row_frequencies"}),
        finalize=quantize_model,
    )
)
