"""Acoustic model for CTC: frame stacking, a stacked (bi)LSTM on packed sequences, a linear head over the ten
digit words plus the blank; and greedy CTC decoding.

Frame stacking joins ``stack`` consecutive 10 ms feature frames into one input step (default 3: 30 ms steps, as
"lower frame rate" CTC models do). It divides the LSTM's sequential steps, and hence its time, by ``stack``,
and a digit (at least 0.14 s) still spans several steps, more than CTC needs for its label and blanks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

BLANK = 0
"""CTC blank class; class d + 1 is the digit d."""
CLASSES = 11


class AcousticModel(nn.Module):
    """(B, T, F) features -> (B, ceil(T / stack), classes) logits, on a stock nn.LSTM (names ``lstm.weight_ih_l0``,
    ``lstm.weight_hh_l0_reverse``, ...) so that the compressors find its matrices.

    Padding never reaches a valid output: frames past each length are zeroed before stacking, and the LSTM runs
    on a packed sequence (the backward direction starts at each utterance's own last step).
    """

    def __init__(
        self,
        features: int = 40,
        hidden: int = 128,
        layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.0,
        stack: int = 3,
        classes: int = CLASSES,
    ) -> None:
        super().__init__()
        self.features, self.hidden, self.layers, self.stack = features, hidden, layers, stack
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(
            features * stack,
            hidden,
            layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, F), lengths: (B,) valid frames -> logits (B, T', C) and output lengths (B,)."""
        b, t, f = x.shape
        lengths = lengths.to(torch.long).cpu()
        valid = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
        x = x * valid.to(x.device, x.dtype)[..., None]
        pad = (-t) % self.stack
        if pad:
            x = nn.functional.pad(x, (0, 0, 0, pad))  # (B, T + pad, F)
        steps = (t + pad) // self.stack
        x = x.reshape(b, steps, self.stack * f)  # (B, T', stack * F)
        # Output steps of inputs of ``lengths`` frames: ceil(lengths / stack).
        out_lengths = torch.div(lengths + self.stack - 1, self.stack, rounding_mode="floor")
        packed = pack_padded_sequence(x, out_lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)  # (B, T', H * directions)
        return self.head(self.drop(out)), out_lengths


def build_acoustic(model_cfg: dict) -> AcousticModel:
    """Build from resolved model settings (``features`` filled in from the data); other keys are ignored."""
    return AcousticModel(
        features=int(model_cfg.get("features", 40)),
        hidden=int(model_cfg["hidden"]),
        layers=int(model_cfg["layers"]),
        bidirectional=bool(model_cfg.get("bidirectional", True)),
        dropout=float(model_cfg.get("dropout", 0.0)),
        stack=int(model_cfg.get("stack", 3)),
        classes=int(model_cfg.get("classes", CLASSES)),
    )


def greedy_decode(scores: Tensor, lengths: Tensor) -> list[list[int]]:
    """Best path: the top class of every valid step, repeats collapsed, then blanks removed.

    scores: (B, T, C) logits or log-probabilities; lengths: (B,) valid steps. Returns class ids per utterance.
    """
    best = scores.argmax(-1).cpu()  # (B, T)
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        path = row[: int(n)]
        out.append([c for i, c in enumerate(path) if c != BLANK and (i == 0 or c != path[i - 1])])
    return out
