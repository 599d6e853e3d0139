"""Accounting on hand-computed shapes: every table's CF comes from here."""

import pytest
import torch
from torch import nn

from suite import tasks
from suite.compressors import account, make_config, registry
from suite.compressors.accounting import Storage, csr_storage
from suite.compressors.lowrank import LowRank, rank_for
from suite.models import LSTMLanguageModel


def test_storage_counts_values_sparse_values_and_indices():
    s = csr_storage(rows=800, nnz=1000)  # 1000 values, 1000 column indices, 801 row pointers
    assert (s.values, s.sparse_values, s.indices) == (0, 1000, 1801)
    assert s.total == 1000 + 1801  # an int32 index is one fp32 value-equivalent
    assert (s + Storage(values=5)).total == 2806


def test_dense_lstm_lm_counts():
    model = LSTMLanguageModel(vocab=100, hidden=10, layers=2)
    acc = account(model, registry.LSTM_TARGETS)
    # LSTM matrices: l0: (40, 10) + (40, 10); l1: (40, 10) + (40, 10) -> 1600 values, stored dense.
    assert acc.targeted_dense == 1600 and acc.cf == 1.0
    # Whole model: embedding 1000, LSTM 1600 + biases 4 * 40, decoder 1000 + 100.
    assert acc.model_dense == 1000 + 1600 + 160 + 1100
    assert acc.model_cf == 1.0
    assert [m.name for m in acc.matrices] == [
        "lstm.weight_hh_l0",
        "lstm.weight_hh_l1",
        "lstm.weight_ih_l0",
        "lstm.weight_ih_l1",
    ]


def test_lowrank_accounting_by_hand():
    model = LSTMLanguageModel(vocab=100, hidden=10, layers=1)
    registry.get("svd").apply(model, make_config("svd", {"factor": 4}))
    acc = account(model, registry.LSTM_TARGETS)
    # (40, 10) at CF 4: rank floor(400 / (4 * 50)) = 2 -> 2 * 50 = 100 values per matrix.
    assert [m.detail["rank"] for m in acc.matrices] == [2, 2]
    assert acc.targeted_storage.total == 200 and acc.cf == pytest.approx(4.0)
    dense_total = 1000 + 800 + 80 + 1100
    assert acc.model_dense == dense_total
    assert acc.model_stored == dense_total - 800 + 200


def test_rank_is_never_rounded_up():
    for shape in [(2600, 650), (800, 200), (40, 10), (7, 3)]:
        for cf in [1.5, 4, 8, 16, 25, 50]:
            r = rank_for(shape, cf)
            if r >= 1:
                assert shape[0] * shape[1] / (r * sum(shape)) >= cf - 1e-9


def test_tied_weights_count_once():
    model = LSTMLanguageModel(vocab=100, hidden=10, layers=1, tie_weights=True)
    acc = account(model, ["embedding.weight"])
    assert acc.model_dense == 1000 + 800 + 80 + 100  # decoder reads embedding.weight: no second copy
    assert [m.name for m in acc.matrices] == ["embedding.weight"]


def test_small_dense_counts_against_the_reference():
    from suite.train import build_model

    cfg = {"vocab": 100, "hidden": 40, "layers": 2}
    model, reference = build_model(
        tasks.get("lm"), cfg, "small_dense", make_config("small_dense", {"factor": 4})
    )
    acc = account(model, registry.LSTM_TARGETS, reference=reference, method="small_dense")
    h = model.hidden
    dense = 4 * 40 * (40 + 40) + 4 * 40 * (40 + 40)
    stored = 4 * h * (40 + h) + 4 * h * (h + h)  # the embedding (input) size stays 40
    assert acc.targeted_dense == dense and acc.targeted_storage.total == stored
    assert acc.cf >= 4 and 4 * (h + 1) * (40 + h + 1) + 8 * (h + 1) ** 2 > dense / 4  # h is the largest fit


def test_aliased_parameters_are_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    with pytest.raises(Exception, match="tied"):
        registry.compress_targets(Tied(), ["a.weight"], lambda n, w: LowRank(tuple(w.shape), 1))


def test_lowrank_full_rank_equals_dense():
    w = torch.randn(12, 5)
    p = LowRank((12, 5), rank=5)
    u, v = p.right_inverse(w)
    assert torch.allclose(p(u, v), w, atol=1e-5)


def test_a_cf_is_displayed_rounded_down():
    from suite.compressors.accounting import format_cf

    assert format_cf(3.999) == "3.99" and format_cf(4.0) == "4.00" and format_cf(None) == "-"


def test_8_bit_values_count_their_bytes():
    s = Storage(values=30, q8_values=1000, indices=11)  # 1000 bytes of values with 30 fp32 scales
    assert s.q8_equiv == 250 and s.total_values == 280 and s.total == 291
    assert (s + Storage(values=2, q8_values=3)).q8_values == 1003
    assert Storage(q8_values=3).total == 0.75  # never rounded down to zero
    assert isinstance(Storage(values=3).total_values, int)  # plain counts stay integers


def test_a_shared_tensor_is_counted_once_with_shares_by_dense_size():
    from suite.compressors.registry import Structured

    pool = nn.Parameter(torch.randn(10))

    class Pooled(Structured):
        method = "pooled"

        def __init__(self, shape):
            super().__init__(shape)
            self.pool = pool

        def forward(self, scale):
            return scale * self.pool.sum() * torch.ones(self.shape)

        def right_inverse(self, w):
            return (w.mean().reshape(1),)

        def storage(self):
            return Storage(values=1)

        def shared_storage(self):
            return [("pool", self.pool, Storage(values=self.pool.numel()))]

    model = nn.Module()
    model.a, model.b = nn.Linear(10, 30, bias=False), nn.Linear(10, 10, bias=False)
    registry.compress_targets(model, ["a.weight", "b.weight"], lambda n, w: Pooled(tuple(w.shape)))
    acc = account(model, ["a.weight", "b.weight"])
    assert acc.targeted_storage.total == 10 + 2 and acc.cf == 400 / 12
    assert acc.model_stored == 12 and acc.model_dense == 400
    shares = {m.name: m.shared for m in acc.matrices}
    assert shares == {"a.weight": 7.5, "b.weight": 2.5}
    assert acc.to_dict()["shared"][0]["users"] == ["a.weight", "b.weight"]
