"""LSTM encoder-decoder with Luong attention (Luong et al., 2015) on stock nn.LSTM modules.

Encoder: embedding -> dropout -> L-layer nn.LSTM (bidirectional by default) over the packed source, so neither
direction reads padding; with two directions a bridge (Linear + tanh, one for h and one for c) maps each layer's
concatenated final states to the decoder's initial state. Decoder: embedding -> dropout -> L-layer nn.LSTM ->
attention over the encoder outputs (``general``: score(h_t, m_s) = h_t^T W_a m_s, or ``dot``) -> attentional
hidden tanh(W_c [c_t; h_t]) -> dropout -> output projection. Source padding is masked out of the attention.

Why the decoder is one nn.LSTM and not nn.LSTMCells with input feeding: teacher forcing then runs the whole
target through one fused call (cuDNN on a GPU) and the attention for all steps in two batched matmuls, and the
recurrent matrices are nn.LSTM weights (``weight_ih_l0``, ``weight_hh_l0``) that the default compressor targets
match. Measured on CPU, one thread, batch 128, source 14 and target 15 tokens, 256 units, 8k target words, one
Adam step: 0.50 s with the fused nn.LSTM against 0.61 s with LSTMCell input feeding (1.2x); on a GPU the
per-step Python loop of input feeding costs far more. Input feeding is worth about a BLEU point in Luong et
al.; a benchmark compares compression methods on one fixed architecture, so speed wins here.

Every recurrent matrix is a stock nn.LSTM weight (``encoder.lstm.weight_ih_l0``, ``..._reverse``,
``decoder.lstm.weight_hh_l1``, ...); embeddings (``encoder.embedding.weight``, ``decoder.embedding.weight``),
attention (``decoder.attention.key.weight``, ``decoder.attention.combine.weight``), bridge and output
projection (``decoder.output.weight``) are ordinary parameters. The model never enters
``parametrize.cached()`` itself: the Task wraps its forward passes and decoding in it.
"""

from __future__ import annotations

from itertools import takewhile
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..data.multi30k import BOS_ID, EOS_ID, PAD_ID

State = tuple[Tensor, Tensor]
ATTENTION = ("general", "dot")


class Memory(NamedTuple):
    """What the decoder attends to, computed once per source batch."""

    values: Tensor  # (B, S, D) encoder outputs
    keys: Tensor  # (B, S, H) the outputs projected for scoring (W_a m_s; m_s itself for ``dot``)
    mask: Tensor  # (B, S) True at real source tokens

    def repeat(self, k: int) -> Memory:
        """Each row repeated k times in place (beam search: row b * k + j is beam j of sentence b)."""
        return Memory(*(t.repeat_interleave(k, dim=0) for t in self))


class Encoder(nn.Module):
    def __init__(
        self, vocab: int, emb_size: int, hidden: int, layers: int, bidirectional: bool, dropout: float
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb_size)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            emb_size,
            hidden,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )

    def forward(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, State]:
        """src (B, S) ids, src_len (B,) -> outputs (B, S, dirs * H) (zero at padding) and (h, c), each
        (layers * dirs, B, H)."""
        emb = self.drop(self.embedding(src))  # (B, S, E)
        packed = pack_padded_sequence(emb, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, dirs * H)
        return out, state


class Bridge(nn.Module):
    """A bidirectional encoder's final states -> the decoder's initial state, per layer."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.h = nn.Linear(2 * hidden, hidden)
        self.c = nn.Linear(2 * hidden, hidden)

    def forward(self, state: State) -> State:
        h, c = state  # (L * 2, B, H), forward and backward interleaved per layer

        def join(x: Tensor) -> Tensor:
            layers2, batch, hidden = x.shape
            return (
                x.view(layers2 // 2, 2, batch, hidden)
                .permute(0, 2, 1, 3)
                .reshape(layers2 // 2, batch, 2 * hidden)
            )

        return torch.tanh(self.h(join(h))), torch.tanh(self.c(join(c)))  # (L, B, H) each


class LuongAttention(nn.Module):
    """Global attention: scores of the decoder states against the keys, masked softmax, context, then the
    attentional hidden tanh(W_c [c; h])."""

    def __init__(self, hidden: int, memory_size: int, kind: str = "general") -> None:
        super().__init__()
        if kind not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {kind!r}")
        if kind == "dot" and memory_size != hidden:
            raise ValueError(
                f"dot attention needs the encoder outputs ({memory_size}) to match hidden ({hidden})"
            )
        self.key = nn.Linear(memory_size, hidden, bias=False) if kind == "general" else nn.Identity()
        self.combine = nn.Linear(memory_size + hidden, hidden, bias=False)

    def forward(self, query: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """query (B, T, H) -> attentional hidden (B, T, H) and attention weights (B, T, S)."""
        scores = torch.bmm(query, memory.keys.transpose(1, 2))  # (B, T, S)
        scores = scores.masked_fill(~memory.mask[:, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        context = torch.bmm(weights, memory.values)  # (B, T, D)
        return torch.tanh(self.combine(torch.cat([context, query], dim=-1))), weights


class Decoder(nn.Module):
    def __init__(
        self,
        vocab: int,
        emb_size: int,
        hidden: int,
        layers: int,
        memory_size: int,
        dropout: float,
        attention: str,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb_size)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            emb_size, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.attention = LuongAttention(hidden, memory_size, attention)
        self.output = nn.Linear(hidden, vocab)

    def forward(self, tgt_in: Tensor, state: State, memory: Memory) -> tuple[Tensor, State]:
        """tgt_in (B, T) ids -> logits (B, T, V) and the final (h, c)."""
        emb = self.drop(self.embedding(tgt_in))  # (B, T, E)
        out, state = self.lstm(emb, state)  # (B, T, H)
        attentional, _ = self.attention(out, memory)  # (B, T, H)
        return self.output(self.drop(attentional)), state


class Seq2Seq(nn.Module):
    """Encoder-decoder; ``forward`` is the teacher-forced pass, ``encode`` and ``step`` serve decoding."""

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        emb_size: int = 256,
        hidden: int = 256,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.3,
        attention: str = "general",
        init: float = 0.1,
    ) -> None:
        super().__init__()
        self.src_vocab, self.tgt_vocab, self.hidden, self.layers = src_vocab, tgt_vocab, hidden, layers
        memory_size = hidden * (2 if bidirectional else 1)
        self.encoder = Encoder(src_vocab, emb_size, hidden, layers, bidirectional, dropout)
        self.bridge = Bridge(hidden) if bidirectional else None
        self.decoder = Decoder(tgt_vocab, emb_size, hidden, layers, memory_size, dropout, attention)
        # Every weight and bias uniform in [-init, init] (Luong et al.; OpenNMT's default).
        for p in self.parameters():
            nn.init.uniform_(p, -init, init)

    def encode(self, src: Tensor, src_len: Tensor) -> tuple[Memory, State]:
        """The attention memory and the decoder's initial state."""
        values, state = self.encoder(src, src_len)
        if self.bridge is not None:
            state = self.bridge(state)
        mask = torch.arange(src.size(1), device=src.device) < src_len[:, None].to(src.device)  # (B, S)
        return Memory(values, self.decoder.attention.key(values), mask), state

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), src_len (B,), tgt_in (B, T) -> logits (B, T, V) (teacher forcing)."""
        memory, state = self.encode(src, src_len)
        logits, _ = self.decoder(tgt_in, state, memory)
        return logits

    def step(self, tokens: Tensor, state: State, memory: Memory) -> tuple[Tensor, State]:
        """One decoding step: tokens (N,) -> log-probabilities (N, V) of the next token and the new state."""
        logits, state = self.decoder(tokens[:, None], state, memory)  # (N, 1, V)
        return logits[:, 0].log_softmax(dim=-1), state


def build_seq2seq(model_cfg: dict) -> Seq2Seq:
    """Build from a resolved model config (``src_vocab`` and ``tgt_vocab`` filled in from the data)."""
    return Seq2Seq(
        src_vocab=int(model_cfg["src_vocab"]),
        tgt_vocab=int(model_cfg["tgt_vocab"]),
        emb_size=int(model_cfg.get("emb_size") or model_cfg["hidden"]),
        hidden=int(model_cfg["hidden"]),
        layers=int(model_cfg.get("layers", 1)),
        bidirectional=bool(model_cfg.get("bidirectional", True)),
        dropout=float(model_cfg.get("dropout", 0.0)),
        attention=str(model_cfg.get("attention", "general")),
        init=float(model_cfg.get("init", 0.1)),
    )


def length_limit(src_len: Tensor, a: float, b: int) -> Tensor:
    """(B,) the most words a hypothesis may have: floor(a * source words + b); ``<eos>`` is not counted."""
    return (a * (src_len - 1).float() + b).floor().long().clamp(min=0)


def _allowed(logp: Tensor, at_limit: Tensor) -> Tensor:
    """``<pad>`` and ``<bos>`` are never produced; rows at their length limit may only end."""
    logp = logp.index_fill(1, torch.tensor([PAD_ID, BOS_ID], device=logp.device), float("-inf"))
    forced = torch.full_like(logp, float("-inf"))
    forced[:, EOS_ID] = 0.0
    return torch.where(at_limit[:, None], forced, logp)


@torch.no_grad()
def greedy(
    model: Seq2Seq, src: Tensor, src_len: Tensor, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[list[int]]:
    """The most probable next word at each step, batched; each hypothesis as its word ids (no ``<eos>``)."""
    memory, state = model.encode(src, src_len)
    limit = length_limit(src_len, max_len_a, max_len_b)
    tokens = torch.full_like(src_len, BOS_ID)
    done = torch.zeros_like(src_len, dtype=torch.bool)
    out = []
    for t in range(int(limit.max()) + 1):
        logp, state = model.step(tokens, state, memory)
        tokens = _allowed(logp, limit == t).argmax(dim=-1)
        tokens = tokens.masked_fill(done, PAD_ID)
        out.append(tokens)
        done |= tokens == EOS_ID
        if done.all():
            break
    return _strip(torch.stack(out, dim=1))


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    beam: int = 5,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    alpha: float = 1.0,
) -> list[list[int]]:
    """Batched beam search; a finished hypothesis scores its log-probability / (words + 1) ** alpha.

    Each step ranks the 2k best extensions of the k live beams: those among the best k that end with
    ``<eos>`` are finished, the best k that do not live on (as in fairseq). A sentence is done when k of its
    hypotheses have finished or its live beams reach the length limit (where they are made to end). With
    k = 1 this is exactly greedy decoding.
    """
    batch, k = src.size(0), beam
    memory, state = model.encode(src, src_len)
    memory = memory.repeat(k)
    state = tuple(s.repeat_interleave(k, dim=1) for s in state)  # (L, B * k, H)
    limit = length_limit(src_len, max_len_a, max_len_b)  # (B,)
    rows = torch.arange(batch, device=src.device)
    scores = torch.full((batch, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # one live beam per sentence at the start
    history = torch.full((batch * k, 0), BOS_ID, dtype=torch.long, device=src.device)
    tokens = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=src.device)
    best = torch.full((batch,), float("-inf"), device=src.device)
    best_seq = torch.full((batch, int(limit.max()) + 1), PAD_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.long, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    for t in range(int(limit.max()) + 1):
        logp, state = model.step(tokens, state, memory)  # (B * k, V)
        logp = _allowed(logp, (limit == t).repeat_interleave(k))
        vocab = logp.size(-1)
        cand = (scores[:, :, None] + logp.view(batch, k, vocab)).view(batch, k * vocab)
        top, idx = cand.topk(min(2 * k, k * vocab), dim=-1)  # (B, 2k)
        origin, word = idx // vocab, idx % vocab  # beam of origin and next word
        src_row = rows[:, None] * k + origin  # (B, 2k) rows of the flat beams
        # Finish: <eos> among the best k, with a finite score, in sentences not done yet.
        ends = (word == EOS_ID) & torch.isfinite(top) & ~done[:, None]
        ends[:, k:] = False
        normalized = torch.where(ends, top / float(t + 1) ** alpha, torch.full_like(top, float("-inf")))
        cand_best, at = normalized.max(dim=-1)  # (B,)
        better = cand_best > best
        if better.any():
            b = rows[better]
            seq = history[src_row[b, at[better]]]  # (n, t)
            best_seq[b] = PAD_ID
            best_seq[b, :t] = seq
            best_seq[b, t] = EOS_ID
            best[better] = cand_best[better]
        finished += ends.sum(dim=-1)
        done |= (finished >= k) | (limit <= t)
        if done.all():
            break
        # Live on: the best k extensions that do not end.
        alive = top.masked_fill(word == EOS_ID, float("-inf"))
        scores, keep = alive.topk(k, dim=-1)  # (B, k)
        chosen = src_row.gather(1, keep).view(-1)  # (B * k,)
        tokens = word.gather(1, keep).view(-1)
        history = torch.cat([history[chosen], tokens[:, None]], dim=1)
        state = tuple(s[:, chosen] for s in state)
    return _strip(best_seq)


def _strip(ids: Tensor) -> list[list[int]]:
    """(B, T) ids -> each row's words before its first ``<eos>`` (or ``<pad>``)."""
    return [list(takewhile(lambda i: i not in (EOS_ID, PAD_ID), row)) for row in ids.tolist()]
