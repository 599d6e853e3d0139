"""Doped methods after annealing (the shared matrix in test_methods.py sees them fresh): gradients reach the
kept entries of D only, the round trip restores the mask, and export never bakes CMR dropout into weights."""

import pytest
import torch
import torch.nn.functional as F

from suite.compressors import account, registry
from suite.compressors.accounting import parametrized_tensors
from suite.compressors.doping import DopedConfig, doped_tensors, finish_annealing
from suite.models.lm import build_lm

METHODS = [m for m in registry.available() if issubclass(registry.get(m).config, DopedConfig)]
MODEL = {"vocab": 40, "hidden": 24, "layers": 2, "dropout": 0.0, "init": 0.1, "emb_size": 24}


def compressed(name: str, seed: int = 0, **settings):
    torch.manual_seed(seed)
    model = build_lm(MODEL)
    cfg = registry.make_config(name, {"factor": 2, **settings})
    registry.get(name).apply(model, cfg)
    for t in doped_tensors(model):  # a trained-looking D, then the deployed sparsity
        with torch.no_grad():
            t.values.copy_(torch.randn_like(t.values) * 0.05)
    finish_annealing(model)
    return model, cfg


def loss_of(model, x):
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, MODEL["vocab"]), x.reshape(-1))


@pytest.mark.parametrize("name", METHODS)
def test_forward_backward_reach_factors_and_d_only(name):
    model, cfg = compressed(name)
    model.train()
    x = torch.randint(MODEL["vocab"], (6, 3))
    loss_of(model, x).backward()
    names = {n for n, _ in model.named_parameters()}
    assert not any(".mask" in n for n in names)  # the mask is a buffer
    assert not any(n.endswith(("weight_ih_l0", "weight_hh_l1")) and "original" not in n for n in names)
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    for t in doped_tensors(model):
        assert not t.values.grad[~t.param.live].any()  # pruned entries get no gradient
        assert t.values.grad[t.param.live].abs().sum() > 0
    assert account(model, cfg.targets, method=name).cf >= 2 * (1 - 1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_into_a_fresh_model(name):
    model, _ = compressed(name, seed=0)
    fresh, _ = compressed(name, seed=1)  # other factors, another mask
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    x = torch.randint(MODEL["vocab"], (5, 2))
    assert torch.allclose(model(x)[0], fresh(x)[0], atol=1e-6)
    for a, b in zip(doped_tensors(model), doped_tensors(fresh)):
        assert torch.equal(a.param.mask, b.param.mask)


@pytest.mark.parametrize("name", METHODS)
def test_dense_export_equals_the_parametrized_model(name):
    settings = {"cmr": 0.5} if name.startswith("doped") else {}
    model, _ = compressed(name, **settings)
    model.train()  # export must not bake training-time dropout of D into the weights
    x = torch.randint(MODEL["vocab"], (5, 2))
    model.eval()
    expected = model(x)[0].detach()
    model.train()
    registry.export_dense(model)
    assert not list(parametrized_tensors(model))
    model.eval()
    assert torch.allclose(model(x)[0], expected, atol=1e-5)
