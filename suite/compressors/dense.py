"""Baselines: ``dense`` (no compression) and ``small_dense`` (a smaller hidden size with the same budget)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CompressionError
from ..settings import setting
from .accounting import matches
from .registry import CompressorConfig, Method, register


@dataclass
class DenseConfig(CompressorConfig):
    factor: float = setting(1.0, choices=(1,), hint="dense does not compress: drop --factor")
    init: str = setting("scratch", choices=("scratch",), hint="dense trains from scratch")


def _no_change(model: nn.Module, cfg: CompressorConfig, ctx=None) -> None:
    return None


def targeted_count(model: nn.Module, targets: list[str]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and matches(n, targets))


def shrink_hidden(model_cfg: dict, cfg: CompressorConfig, build: Callable[[dict], nn.Module]) -> dict:
    """Largest hidden size whose targeted matrices fit in the dense ones' parameters / CF (never above).

    The input (embedding) size stays that of the dense model unless the weights are tied.
    """
    if not model_cfg.get("tie_weights"):
        model_cfg = {**model_cfg, "emb_size": model_cfg.get("emb_size") or model_cfg["hidden"]}
    with torch.device("meta"):
        budget = targeted_count(build(model_cfg), cfg.targets) / cfg.factor
        hidden = int(model_cfg["hidden"])
        lo, hi = 0, hidden  # invariant: lo fits (0 trivially), the answer is in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if targeted_count(build({**model_cfg, "hidden": mid}), cfg.targets) <= budget:
                lo = mid
            else:
                hi = mid - 1
    if lo < 1:
        raise CompressionError(
            f"small_dense cannot reach CF {cfg.factor:g}: even hidden size 1 is over budget"
        )
    return {**model_cfg, "hidden": lo}


register(
    Method(
        name="dense",
        config=DenseConfig,
        apply=_no_change,
        summary="the uncompressed model (CF 1): the reference every table compares against",
    )
)


@dataclass
class SmallDenseConfig(CompressorConfig):
    init: str = setting(
        "scratch", choices=("scratch",), hint="small_dense trains a smaller model from scratch"
    )


register(
    Method(
        name="small_dense",
        config=SmallDenseConfig,
        apply=_no_change,
        summary="a dense model with the hidden size shrunk until its targeted matrices fit the same budget",
        resize=shrink_hidden,
    )
)
