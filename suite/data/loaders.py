"""DataLoaders that leave torch's global random generator alone.

A DataLoader draws a base seed for its workers from the global generator every time an iterator is made (every
epoch, every evaluation), even with no worker processes. Dropout and co-matrix dropout draw from that same
generator, so those draws would tie a model's random stream to when loaders happen to be iterated, and a run
resumed from a checkpoint (whose loaders are made at other moments) would drift from the run it continues. Each
loader gets a generator of its own instead; batch order is the samplers' business (seeded by run seed and epoch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader


def loader(dataset: Any, **kwargs: Any) -> DataLoader:
    """``DataLoader(dataset, **kwargs)`` with its own generator (never the global one)."""
    return DataLoader(dataset, generator=torch.Generator().manual_seed(0), **kwargs)
