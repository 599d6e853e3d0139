"""Doped matrices: the budget split, annealing (ends exactly at s_f, never revives), CMR, CMA diagnostics."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from suite.compressors import account, registry
from suite.compressors.doping import Doped, DopedConfig, doped_tensors, finish_annealing
from suite.compressors.doping_callbacks import (
    lstm_matrix_inputs,
    sparse_disabled,
    sparse_to_structured_ratios,
)
from suite.compressors.sparse import Schedule, SparsityAnnealing, cubic_sparsity, prune_to
from suite.errors import ConfigError
from suite.models.lm import build_lm

DOPED = [m for m in registry.available() if issubclass(registry.get(m).config, DopedConfig)]


class OneMatrix(nn.Module):
    def __init__(self, m: int = 96, n: int = 24) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(m, n).uniform_(-0.1, 0.1))


def doped(name: str = "doped_kp", factor: float = 4, shape=(96, 24), **settings) -> tuple[OneMatrix, Doped]:
    torch.manual_seed(0)
    model = OneMatrix(*shape)
    cfg = registry.make_config(name, {"factor": factor, "targets": ["weight"], **settings})
    registry.get(name).apply(model, cfg)
    return model, model.parametrizations.weight[0]


def fake_trainer(total: int) -> SimpleNamespace:
    return SimpleNamespace(estimated_stepping_batches=total, global_step=0)


@pytest.mark.parametrize("name", DOPED)
def test_final_sparsity_fills_the_budget_exactly(name):
    model, p = doped(name, 6, shape=(200, 48))
    m, n = p.shape
    budget = m * n / 6
    stored = p.final_storage().total
    assert stored <= budget < stored + 2  # one more nonzero (value + index) would not fit
    assert p.final_storage().indices == p.final_nnz + m + 1  # column indices and row pointers
    assert p.structured.storage().total <= 0.8 * budget  # structured_share
    finish_annealing(model)
    assert account(model, ["weight"]).cf == pytest.approx(m * n / stored)


def test_trained_init_starts_from_the_weight_and_scratch_from_zero_d():
    torch.manual_seed(0)
    model = OneMatrix()
    w = model.weight.detach().clone()
    cfg = registry.make_config("doped_kp", {"factor": 4, "init": "trained", "targets": ["weight"]})
    registry.get("doped_kp").apply(model, cfg)
    assert torch.allclose(model.weight, w, atol=1e-6)  # S + D = W while D is dense
    (t,) = doped_tensors(model)
    assert torch.allclose(t.values, w - t.param.structured(*t.factors[:-1]), atol=1e-6)
    _, p = doped("doped_kp")
    (t,) = doped_tensors(_)
    assert not t.values.any()


def test_cubic_schedule_endpoints_and_monotone():
    values = [cubic_sparsity(k, 10, 0.1, 0.95) for k in range(11)]
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(0.95)
    assert all(a < b for a, b in zip(values, values[1:]))
    s = Schedule.build(1000, 0.1, 0.75, 100)
    assert (s.t0, s.dt, s.n) == (100, 65, 10)  # shortened so the window holds 10 events
    assert s.events_done(99) == -1 and s.events_done(100) == 0 and s.events_done(10**6) == 10


def test_annealing_reaches_s_f_exactly_and_never_revives():
    model, p = doped("doped_kp", 4, anneal_start=0.1, anneal_end=0.6, prune_every=7)
    (t,) = doped_tensors(model)
    trainer = fake_trainer(total=200)
    cb = SparsityAnnealing(0.0, 0.1, 0.6, 7)
    cb.on_train_start(trainer, model)
    schedule = cb.schedule
    end = schedule.t0 + schedule.n * schedule.dt
    torch.manual_seed(1)
    prev = p.live.clone()
    nnz = []
    for step in range(1, 201):
        with torch.no_grad():  # training pushes every entry, the pruned ones included, to large values
            t.values.add_(torch.randn_like(t.values) * 0.5)
        trainer.global_step = step
        cb.on_train_batch_end(trainer, model)
        assert not (p.live & ~prev).any(), "a pruned entry came back"
        prev = p.live.clone()
        nnz.append(p.nnz)
        if step >= end:
            assert p.nnz == p.final_nnz
        elif step < schedule.t0:
            assert p.nnz == p.mask.numel()
    assert nnz[end - 2] > p.final_nnz  # s_f is reached at the last event, not before
    finish_annealing(model)  # the method's finalize
    assert p.nnz == p.final_nnz


def test_training_cut_short_still_ends_annealed():
    model, p = doped("doped_lmf", 4)
    trainer = fake_trainer(total=1000)
    cb = SparsityAnnealing(0.0, 0.1, 0.75, 100)
    cb.on_train_start(trainer, model)
    trainer.global_step = 300
    cb.on_train_batch_end(trainer, model)
    assert p.final_nnz < p.nnz < p.mask.numel()
    finish_annealing(model)  # the method's finalize
    assert p.nnz == p.final_nnz


def test_magnitude_pruning_keeps_the_largest_live_entries():
    model, p = doped("doped_kp", 4)
    (t,) = doped_tensors(model)
    with torch.no_grad():
        t.values.copy_(torch.arange(t.values.numel(), dtype=torch.float32).view_as(t.values))
    prune_to(t, 100)
    assert p.mask.flatten()[-100:].all() and p.nnz == 100
    assert not t.values[~p.live].any()


def test_cmr_element_drops_entries_in_training_only():
    model, p = doped("doped_kp", 4, cmr=0.3)
    (t,) = doped_tensors(model)
    with torch.no_grad():
        t.values.copy_(torch.randn_like(t.values))
    finish_annealing(model)
    s = p.structured(*t.factors[:-1]).detach()
    sparse = (t.values * p.mask).detach()
    model.eval()
    assert torch.equal(model.weight, s + sparse)
    model.train()
    kept = (model.weight - s)[p.live]
    live = sparse[p.live]
    dropped = (kept.abs() < 1e-7).float()
    n = dropped.numel()
    assert abs(dropped.mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)  # binomial, 5 sigma
    scaled = kept[dropped == 0] / live[dropped == 0]
    assert torch.allclose(scaled, torch.full_like(scaled, 1 / 0.7), rtol=1e-3)


def test_cmr_matrix_drops_the_whole_d_with_probability_p():
    model, p = doped("doped_kp", 4, cmr=0.4, cmr_mode="matrix")
    (t,) = doped_tensors(model)
    with torch.no_grad():
        t.values.copy_(torch.randn_like(t.values))
    s = p.structured(*t.factors[:-1]).detach()
    sparse = (t.values * p.mask).detach()
    model.train()
    trials = 400
    drops = 0
    for _ in range(trials):
        delta = model.weight - s
        if delta.abs().max() < 1e-7:
            drops += 1
        else:
            assert torch.allclose(delta, sparse / 0.6, atol=1e-5)
    assert abs(drops / trials - 0.4) < 5 * math.sqrt(0.4 * 0.6 / trials)
    model.eval()
    assert torch.equal(model.weight, s + sparse)


def test_config_validation():
    with pytest.raises(ConfigError, match="cmr"):
        registry.make_config("doped_kp", {"factor": 4, "cmr": 1.0})
    with pytest.raises(ConfigError, match="cmr_mode"):
        registry.make_config("doped_kp", {"factor": 4, "cmr_mode": "rows"})
    with pytest.raises(ConfigError, match="anneal_end"):
        registry.make_config("doped_lmf", {"factor": 4, "anneal_start": 0.5, "anneal_end": 0.5})
    with pytest.raises(ConfigError, match="finetune_epochs"):
        registry.make_config("doped_hmd", {"factor": 4, "init": "trained", "finetune_epochs": 0})


def test_deployed_csr_stores_exactly_what_is_counted():
    model, p = doped("doped_hmd", 4)
    (t,) = doped_tensors(model)
    with torch.no_grad():
        t.values.copy_(torch.randn_like(t.values))
    finish_annealing(model)
    csr = p.csr(t.values.detach())
    assert csr.col_indices().dtype == torch.int32 and csr.crow_indices().dtype == torch.int32
    assert csr.values().numel() == p.nnz == p.final_nnz
    x = torch.randn(p.shape[1])
    assert torch.allclose(registry.deployed_matvec(model, "weight")(x), model.weight @ x, atol=1e-5)
    assert torch.allclose(p.matvec(t.factors, x), model.weight @ x, atol=1e-5)


def small_lm(method: str = "doped_kp") -> nn.Module:
    torch.manual_seed(0)
    model = build_lm({"vocab": 30, "hidden": 16, "layers": 2, "dropout": 0.0, "init": 0.1})
    registry.get(method).apply(model, registry.make_config(method, {"factor": 2}))
    return model.eval()


def test_replayed_lstm_inputs_match_nn_lstm():
    model = small_lm()
    x = torch.randint(30, (7, 3))
    inputs = lstm_matrix_inputs(model, lambda: model(x))
    assert set(inputs) == {f"lstm.weight_{k}_l{i}" for k in ("ih", "hh") for i in (0, 1)}
    emb = model.embedding(x)
    out, _ = model.lstm(emb)
    layer1_out = inputs["lstm.weight_hh_l1"].view(7, 3, 16)[1:]  # h_{t-1} of layer 1, from t = 1
    assert torch.allclose(layer1_out, out[:-1], atol=1e-5)
    assert torch.allclose(inputs["lstm.weight_ih_l0"], emb.reshape(-1, 16))


def test_sparse_ratio_and_removal():
    model = small_lm()
    x = torch.randint(30, (5, 2))
    assert all(r == 0 for r in sparse_to_structured_ratios(model, lambda: model(x)).values())  # D starts at 0
    for t in doped_tensors(model):
        with torch.no_grad():
            t.values.copy_(torch.randn_like(t.values))
    ratios = sparse_to_structured_ratios(model, lambda: model(x))
    assert len(ratios) == 4 and all(r > 0 for r in ratios.values())
    full = model(x)[0]
    with sparse_disabled(model):
        without = model(x)[0]
        assert all(not t.param.sparse_enabled for t in doped_tensors(model))
    assert not torch.allclose(full, without)
    assert all(t.param.sparse_enabled for t in doped_tensors(model))


def test_replayed_inputs_of_a_bidirectional_lstm_on_packed_sequences():
    """Both directions, two layers, padded batch: the replayed hidden states are nn.LSTM's own outputs, and
    padded steps are left out."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    lstm = nn.LSTM(5, 6, num_layers=2, bidirectional=True).eval()
    x = torch.randn(7, 3, 5)  # (T, B, in)
    lengths = torch.tensor([7, 4, 2])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    inputs = lstm_matrix_inputs(lstm, lambda: lstm(packed))
    assert set(inputs) == {
        f"weight_{k}_l{i}{d}" for k in ("ih", "hh") for i in (0, 1) for d in ("", "_reverse")
    }
    valid = int(lengths.sum())
    assert all(v.size(0) == valid for v in inputs.values())  # one vector per valid step and direction
    # Layer 1 multiplies W_ih with layer 0's outputs of both directions: those of a one-layer LSTM with
    # layer 0's weights, at the valid steps in step order (the reverse direction visits them backwards).
    first = nn.LSTM(5, 6, bidirectional=True).eval()
    first.load_state_dict({k: v for k, v in lstm.state_dict().items() if "_l0" in k})
    y, _ = pad_packed_sequence(first(packed)[0])  # (T, B, 2H)
    mask = torch.arange(7)[:, None] < lengths[None, :]
    expected = torch.stack([y[t, b] for t in range(7) for b in range(3) if mask[t, b]])
    torch.testing.assert_close(inputs["weight_ih_l1"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inputs["weight_ih_l1_reverse"].sum(0), expected.sum(0), atol=1e-4, rtol=1e-4)
    # W_hh of layer 0's forward direction sees the previous step's forward output (zero at the first step)
    prev = torch.cat([torch.zeros(1, 3, 6), y[:-1, :, :6]])
    expected_hh = torch.stack([prev[t, b] for t in range(7) for b in range(3) if mask[t, b]])
    torch.testing.assert_close(inputs["weight_hh_l0"], expected_hh, atol=1e-5, rtol=1e-5)


def test_replayed_inputs_of_lstm_cells_step_by_step():
    torch.manual_seed(0)
    cell = nn.LSTMCell(4, 3).eval()
    xs = torch.randn(5, 2, 4)

    def run():
        h = c = torch.zeros(2, 3)
        for x in xs:
            h, c = cell(x, (h, c))

    inputs = lstm_matrix_inputs(cell, run)
    assert inputs["weight_ih"].shape == (10, 4) and inputs["weight_hh"].shape == (10, 3)
    torch.testing.assert_close(inputs["weight_ih"], xs.reshape(10, 4))
    h = torch.zeros(2, 3)
    c = torch.zeros(2, 3)
    prev = []
    with torch.no_grad():
        for x in xs:
            prev.append(h)
            h, c = cell(x, (h, c))
    torch.testing.assert_close(inputs["weight_hh"], torch.cat(prev))
