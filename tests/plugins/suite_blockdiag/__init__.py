"""A method from outside the suite: W block-diagonal, k diagonal blocks of ceil(m / k) x ceil(n / k) (the last
ones cut to the matrix), k the smallest count that reaches the CF. Importing this module registers it; the
entry point ``suite.methods: blockdiag = suite_blockdiag`` makes the suite import it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from suite.compressors import CompressorConfig, Method, Storage, Structured, register
from suite.compressors.registry import apply_structured, budget_detail, check_budget


@dataclass
class BlockDiagConfig(CompressorConfig):
    """k diagonal blocks, the fewest that reach the CF."""


def spans(size: int, k: int) -> list[tuple[int, int]]:
    step = math.ceil(size / k)
    return [(i, min(i + step, size)) for i in range(0, size, step)]


class BlockDiag(Structured):
    method = "blockdiag"

    def __init__(self, shape: tuple[int, int], k: int, factor: float = 1.0) -> None:
        super().__init__(shape)
        self.k, self.factor = k, factor
        rows, cols = spans(shape[0], k), spans(shape[1], k)
        self.blocks = list(zip(rows, cols))  # as many as the shorter side gives

    def forward(self, *blocks: Tensor) -> Tensor:
        w = blocks[0].new_zeros(self.shape)
        for ((r0, r1), (c0, c1)), b in zip(self.blocks, blocks):
            w[r0:r1, c0:c1] = b
        return w

    def right_inverse(self, w: Tensor) -> tuple[Tensor, ...]:
        return tuple(w[r0:r1, c0:c1].clone() for (r0, r1), (c0, c1) in self.blocks)

    def storage(self) -> Storage:
        return Storage(values=sum((r1 - r0) * (c1 - c0) for (r0, r1), (c0, c1) in self.blocks))

    def describe(self) -> dict:  # the asked CF and whether only a larger one was reachable (the contract)
        return {"blocks": len(self.blocks), **budget_detail(self.shape, self.factor, self.storage().total)}

    def matvec(self, blocks: tuple[Tensor, ...], x: Tensor) -> Tensor:
        parts = [b @ x[c0:c1] for ((_, _), (c0, c1)), b in zip(self.blocks, blocks)]
        y = torch.cat(parts)
        return (
            torch.cat([y, y.new_zeros(self.shape[0] - y.size(0), *y.shape[1:])])
            if y.size(0) < self.shape[0]
            else y
        )


def make(name: str, w: Tensor, cfg: BlockDiagConfig, ctx=None) -> BlockDiag:
    m, n = w.shape
    k = max(1, math.ceil(cfg.factor))
    while k <= min(m, n) and m * n / BlockDiag((m, n), k).storage().total < cfg.factor:
        k += 1
    k = min(k, min(m, n))
    best = BlockDiag((m, n), k, cfg.factor)
    check_budget(
        name,
        (m, n),
        cfg.factor,
        best.storage().total,
        f"{min(m, n)} blocks reach CF {m * n / best.storage().total:.1f}",
    )
    return best


register(
    Method(
        name="blockdiag",
        config=BlockDiagConfig,
        apply=apply_structured(make),
        summary="block-diagonal W, the fewest blocks that reach the CF (an example plugin)",
    )
)
