"""HashedNets: the hash (MurmurHash3 against an independent reference), the gather, the least-squares pool, and
a pool shared by every matrix: one parameter, counted once, trained once, saved and exported."""

import math

import pytest
import torch

from suite.compressors import account, registry
from suite.compressors.hashed import Hashed, hashed_layout, murmur3_32
from suite.models import LSTMLanguageModel

M32 = 0xFFFFFFFF


def murmur_reference(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 on Python integers, straight from the published algorithm."""

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & M32

    def scramble(k):
        return (rotl((k * 0xCC9E2D51) & M32, 15) * 0x1B873593) & M32

    h = seed & M32
    whole = len(data) // 4 * 4
    for i in range(0, whole, 4):
        h = (rotl(h ^ scramble(int.from_bytes(data[i : i + 4], "little")), 13) * 5 + 0xE6546B64) & M32
    if data[whole:]:
        h ^= scramble(int.from_bytes(data[whole:], "little"))
    h ^= len(data)
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & M32
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def test_the_reference_matches_published_murmur3_values():
    assert murmur_reference(b"") == 0 and murmur_reference(b"", 1) == 0x514E28B7
    assert murmur_reference(b"test") == 0xBA6BD213
    assert murmur_reference(b"Hello, world!", 1234) == 0xFAF6CDB3


def test_the_torch_hash_equals_the_reference():
    g = torch.Generator().manual_seed(0)
    keys = torch.cat((torch.tensor([0, 1, 2**31, 2**32 - 1]), torch.randint(0, 2**32, (200,), generator=g)))
    for seed in (0, 1, 0xDEADBEEF, M32):
        got = murmur3_32(keys, seed).tolist()
        assert got == [murmur_reference(k.to_bytes(4, "little"), seed) for k in keys.tolist()]


def test_the_layout_is_fixed_by_name_shape_and_seed():
    bucket, sign = hashed_layout((40, 30), 97, "lstm.weight_hh_l0", 0)
    again = hashed_layout((40, 30), 97, "lstm.weight_hh_l0", 0)
    assert torch.equal(bucket, again[0]) and torch.equal(sign, again[1])
    assert not torch.equal(bucket, hashed_layout((40, 30), 97, "lstm.weight_ih_l0", 0)[0])
    assert not torch.equal(bucket, hashed_layout((40, 30), 97, "lstm.weight_hh_l0", 1)[0])
    assert bucket.min() >= 0 and bucket.max() < 97 and set(sign.unique().tolist()) == {-1, 1}
    counts = torch.bincount(bucket.flatten(), minlength=97).float()
    assert counts.min() > 0 and counts.std() / counts.mean() < 0.3  # 1200 entries spread over 97 values
    assert abs(float(sign.float().mean())) < 0.1
    first = bucket.flatten()[:5].tolist()  # pinned: the same on every machine and run
    assert first == [
        murmur_reference(k.to_bytes(4, "little"), hashed_seed("lstm.weight_hh_l0")) % 97 for k in range(5)
    ]


def hashed_seed(name: str) -> int:
    import zlib

    return murmur_reference(zlib.crc32(name.encode()).to_bytes(4, "little"), 0)


def test_private_pool_matvec_gather_and_least_squares():
    torch.manual_seed(0)
    p = Hashed((70, 30), 300, "w")
    (pool,) = p.fresh(torch.randn(70, 30))
    w = p(pool)
    x, xs = torch.randn(30), torch.randn(30, 4)
    assert torch.allclose(p.matvec((pool,), x, rows=16), w @ x, atol=1e-5)
    assert torch.allclose(p.matvec((pool,), xs), w @ xs, atol=1e-5)
    assert torch.allclose(p.deploy((pool,))(x), w @ x, atol=1e-5)
    assert torch.allclose(p.right_inverse(w)[0], pool, atol=1e-6)  # a hashed matrix comes back
    other = torch.randn(70, 30)
    (fit,) = p.right_inverse(other)
    k = int(p.bucket[3, 4])
    chosen = p.bucket == k
    assert fit[k] == pytest.approx(float((p.sign * other)[chosen].mean()), abs=1e-5)  # the bucket's mean


def shared_lm(factor: float = 8, init: str = "scratch", seed: int = 0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    model = LSTMLanguageModel(vocab=50, hidden=20, layers=2)
    cfg = registry.make_config("hashed", {"factor": factor, "shared_pool": True, "init": init})
    registry.get("hashed").apply(model, cfg)
    return model


def pools(model):
    return [m[0].pool for m in model.lstm.parametrizations.values()]


def test_the_shared_pool_is_one_parameter_counted_once():
    model = shared_lm(8)
    ps = pools(model)
    assert len(ps) == 4 and all(p is ps[0] for p in ps)
    dense = 4 * 80 * 20  # four (4H, 20) matrices
    k = math.floor(dense / 8) - 4  # the pool, after one scale per matrix
    assert ps[0].numel() == k
    named = [n for n, p in model.named_parameters() if p is ps[0]]
    assert len(named) == 1  # what an optimizer sees
    acc = account(model, registry.LSTM_TARGETS, method="hashed")
    assert acc.targeted_storage.total == k + 4 and acc.cf == dense / (k + 4) >= 8
    assert [sorted(s.users) for s in acc.shared] == [[m.name for m in acc.matrices]]
    assert sum(m.shared for m in acc.matrices) == pytest.approx(k)  # the per-matrix shares add up to one pool
    others = 50 * 20 + 4 * 80 + 50 * 20 + 50  # embedding, LSTM biases, decoder weight and bias
    assert acc.model_stored == others + k + 4
    assert acc.model_dense == others + dense
    assert acc.model_cf == pytest.approx((others + dense) / (others + k + 4))


def test_one_sgd_step_moves_the_shared_pool_once():
    model = shared_lm(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pool = pools(model)[0]
    before = pool.detach().clone()
    logits, _ = model(torch.randint(50, (5, 2)))
    logits.sum().backward()
    grad = pool.grad.clone()
    opt.step()
    assert torch.allclose(pool.detach(), before - 0.1 * grad)


def test_the_shared_pool_survives_state_dict_and_export():
    model, other = shared_lm(8, seed=0).eval(), shared_lm(8, seed=1).eval()
    other.load_state_dict(model.state_dict())
    x = torch.randint(50, (6, 2))
    assert torch.equal(model(x)[0], other(x)[0])
    assert all(p is pools(other)[0] for p in pools(other))  # still one object after loading
    with torch.no_grad():
        before = model(x)[0]
        registry.export_dense(model)
        assert torch.allclose(model(x)[0], before, atol=1e-6)
    assert not any("pool" in n for n, _ in model.named_parameters())


def test_the_trained_shared_pool_is_the_joint_least_squares_fit():
    torch.manual_seed(0)
    dense = LSTMLanguageModel(vocab=50, hidden=20, layers=2)  # the weights shared_lm fits (same seed)
    weights = {n: p.detach().clone() for n, p in dense.lstm.named_parameters() if "weight" in n}
    model = shared_lm(4, init="trained")
    pool = pools(model)[0]
    loss = sum(((getattr(model.lstm, n) - w) ** 2).sum() for n, w in weights.items())
    (grad,) = torch.autograd.grad(loss, pool)
    assert grad.abs().max() < 1e-5 * pool.abs().max()  # stationary in the pool: the least-squares optimum


def test_a_shared_pool_run_trains_and_counts_the_pool_once(tiny_preset, results):
    from suite.config import load_run
    from suite.train import train

    sets = {"results_dir": str(results), "wandb": "disabled", "shared_pool": True}
    rec = train(load_run(tiny_preset, "hashed", 6, sets=sets), progress_bar=False)
    assert rec.status == "ok" and rec.accounting["cf"] >= 6
    (pool,) = rec.accounting["shared"]
    assert len(pool["users"]) == 4 and rec.accounting["targeted_stored"] == pool["values"] + 4
