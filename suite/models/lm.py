"""Word-level LSTM language model (Zaremba et al., 2014) on a stock nn.LSTM."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

Hidden = tuple[Tensor, Tensor]


class LSTMLanguageModel(nn.Module):
    """Embedding -> dropout -> L-layer nn.LSTM (dropout between layers) -> dropout -> linear decoder.

    Compressed weights are parametrizations; whoever runs the model evaluates them once per forward
    (``parametrize.cached()``: the task's forward does, see suite.tasks.base.Task).

    With ``tie_weights`` the decoder reads the embedding matrix in ``forward`` (it has no weight of its own),
    so a compressor sees one parameter, ``embedding.weight``, and the accounting counts it once.
    """

    def __init__(
        self,
        vocab: int,
        hidden: int = 200,
        layers: int = 2,
        dropout: float = 0.0,
        init: float = 0.1,
        emb_size: int | None = None,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        emb_size = emb_size or hidden
        if tie_weights and emb_size != hidden:
            raise ValueError("tied weights need emb_size == hidden")
        self.vocab, self.hidden, self.layers = vocab, hidden, layers
        self.tie_weights = tie_weights
        self.embedding = nn.Embedding(vocab, emb_size)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(emb_size, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab, bias=True)
        if tie_weights:
            del self.decoder.weight  # the decoder uses embedding.weight in forward
        for p in self.parameters():  # every weight and bias uniform in [-init, init], as Zaremba et al.
            nn.init.uniform_(p, -init, init)

    def init_hidden(self, batch: int) -> Hidden:
        w = next(self.parameters())
        shape = (self.layers, batch, self.hidden)
        return w.new_zeros(shape), w.new_zeros(shape)

    def forward(self, x: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """x: (T, B) token ids -> logits (T, B, V) and the final (h, c), each (L, B, H)."""
        emb = self.drop(self.embedding(x))  # (T, B, E)
        out, hidden = self.lstm(emb, hidden)  # (T, B, H)
        out = self.drop(out)
        weight = self.embedding.weight if self.tie_weights else self.decoder.weight
        logits = F.linear(out, weight, self.decoder.bias)  # (T, B, V)
        return logits, hidden


def build_lm(model_cfg: dict) -> LSTMLanguageModel:
    """Build from a resolved model config (``vocab`` filled in from the data)."""
    return LSTMLanguageModel(
        vocab=int(model_cfg["vocab"]),
        hidden=int(model_cfg["hidden"]),
        layers=int(model_cfg["layers"]),
        dropout=float(model_cfg.get("dropout", 0.0)),
        init=float(model_cfg.get("init", 0.1)),
        emb_size=model_cfg.get("emb_size"),
        tie_weights=bool(model_cfg.get("tie_weights", False)),
    )


def detach(hidden: Hidden) -> Hidden:
    return tuple(h.detach() for h in hidden)  # type: ignore[return-value]
