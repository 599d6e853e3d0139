"""A method in one file, from outside the suite: each weight row kept in 8 bits with its own fp32 scale
(max |row| / 127), trained through the rounding with a straight-through gradient. It stores m n 8-bit values and
m scales, so its CF is just under 4 (m n / (m n / 4 + m)); a larger CF is out of its reach."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from suite.compressors import CompressorConfig, Method, Storage, Structured, register
from suite.compressors.registry import apply_structured, budget_detail, check_budget


@dataclass
class Int8Config(CompressorConfig):
    """8-bit rows with fp32 scales; the CF only checks what the method reaches."""


class Int8Rows(Structured):
    method = "int8"

    def __init__(self, shape: tuple[int, int], factor: float = 1.0) -> None:
        super().__init__(shape)
        self.factor = factor

    def forward(self, w: Tensor) -> Tensor:
        scale = w.detach().abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        q = (w / scale).round().clamp(-127, 127) * scale
        return w + (q - w).detach()  # the rounded weight forward, the identity backward

    def right_inverse(self, w: Tensor) -> Tensor:
        return w.clone()

    def storage(self) -> Storage:
        return Storage(values=self.shape[0], q8_values=self.shape[0] * self.shape[1])

    def describe(self) -> dict:  # the asked CF and whether only a larger one was reachable (the contract)
        return budget_detail(self.shape, self.factor, self.storage().total)

    def matvec(self, factors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return self.forward(factors[0]) @ x


def make(name: str, w: Tensor, cfg: Int8Config, ctx=None) -> Int8Rows:
    m, n = w.shape
    stored = Int8Rows((m, n)).storage().total
    check_budget(name, (m, n), cfg.factor, stored, f"8-bit rows reach CF {m * n / stored:.2f}")
    return Int8Rows((m, n), cfg.factor)


register(
    Method(
        name="int8",
        config=Int8Config,
        apply=apply_structured(make),
        summary="8-bit weight rows with fp32 per-row scales, straight-through training (an example plugin)",
    )
)
