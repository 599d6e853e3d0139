"""What a compression method may ask of a task's data: a narrow, typed context that train() fills from the task
family. Compressors read it and never import data code or tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn


@dataclass(frozen=True)
class DataContext:
    """What a method may ask of the task's data. train() fills only the fields a method lists in its ``needs``;
    compressors read this and never import data code or tasks."""

    row_frequencies: Mapping[str, Tensor] = field(default_factory=dict)
    """Qualified parameter name (``embedding.weight``, ``decoder.weight``) -> (rows,) training-split counts of
    the vocabulary entry each row of that matrix stands for. Only vocabulary matrices appear."""
    calibration: Sequence[Any] = ()
    """A few training batches, as the family's data loader yields them."""
    loss: Callable[[nn.Module, Any], Tensor] | None = None
    """``loss(model, batch)``: the training loss of the bare model on one calibration batch."""

    FIELDS: ClassVar[tuple[str, ...]] = ("row_frequencies", "calibration")
