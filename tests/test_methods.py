"""The shared matrix: every registered method goes through the same checks.

Adding a method means adding it to the registry; it is picked up here automatically. A method that cannot
reach the default test CF on the tiny model names another in FACTORS. A method that asks for data (``needs``)
gets a made-up DataContext of the tiny model (Zipf-like word counts for its vocabulary matrices, a calibration
batch); one that refuses the default targets with a ConfigError (a method for vocabulary matrices only) is
tried on a vocabulary matrix of that context.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from suite import tasks
from suite.compressors import available, make_config, registry
from suite.compressors.accounting import parametrized_tensors
from suite.context import DataContext
from suite.errors import ConfigError
from suite.models import LSTMLanguageModel
from suite.models.lm import build_lm
from suite.train import build_model

MODEL = {"vocab": 50, "hidden": 32, "layers": 2, "dropout": 0.0, "init": 0.1}
FACTORS = {"dense": 1.0}
DEFAULT_FACTOR = 4.0


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(MODEL["vocab"], (7, 3), generator=g), torch.randint(
        MODEL["vocab"], (7, 3), generator=g
    )


def context(method: str) -> DataContext:
    """What the method asks of the data, made up for the tiny model."""
    needs = registry.get(method).needs
    fields = {}
    if "row_frequencies" in needs:
        counts = torch.arange(
            MODEL["vocab"], 0, -1
        ).float()  # Zipf-like: word i is the (i+1)-th most frequent
        fields["row_frequencies"] = {"embedding.weight": counts, "decoder.weight": counts}
    if "calibration" in needs:
        fields["calibration"] = [batch()]
        fields["loss"] = lambda model, b: nn.functional.cross_entropy(
            model(b[0])[0].reshape(-1, MODEL["vocab"]), b[1].reshape(-1)
        )
    return DataContext(**fields)


def compressed(method: str, seed: int = 0) -> nn.Module:
    ctx = context(method)
    settings = {"factor": FACTORS.get(method, DEFAULT_FACTOR)}
    torch.manual_seed(seed)
    try:
        model, _ = build_model(tasks.get("lm"), dict(MODEL), method, make_config(method, settings), ctx=ctx)
    except ConfigError:
        if not ctx.row_frequencies:
            raise
        vocabulary = list(ctx.row_frequencies)[-1:]  # the softmax: a method for vocabulary matrices only
        torch.manual_seed(seed)
        mcfg = make_config(method, {**settings, "targets": vocabulary})
        model, _ = build_model(tasks.get("lm"), dict(MODEL), method, mcfg, ctx=ctx)
    return model


@pytest.fixture(params=available())
def method(request) -> str:
    return request.param


def test_forward_shapes_and_values(method):
    model = compressed(method)
    x, _ = batch()
    logits, (h, c) = model(x)
    assert logits.shape == (7, 3, MODEL["vocab"]) and torch.isfinite(logits).all()
    assert h.shape == c.shape == (2, 3, model.hidden)
    assert isinstance(model.lstm, nn.LSTM)  # the stock module (fused kernel) stays


def test_backward_reaches_exactly_the_trainable_parameters(method):
    model = compressed(method)
    x, y = batch()
    logits, _ = model(x)
    nn.functional.cross_entropy(logits.reshape(-1, MODEL["vocab"]), y.reshape(-1)).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    reached = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == trainable
    assert not any(b.requires_grad for b in model.buffers())
    compressed_names = {q for q, *_ in parametrized_tensors(model)}
    # A compressed matrix no longer exists as a dense trainable parameter of its own.
    assert not compressed_names & set(dict(model.named_parameters()))


def test_each_parametrization_is_evaluated_once_per_forward(method):
    model = compressed(method)
    calls = []
    for _, _, _, p in parametrized_tensors(model):
        p.register_forward_hook(lambda *a: calls.append(1))
    with parametrize.cached():  # what every task's forward does (suite.tasks.base.Task)
        model(batch()[0])
    assert len(calls) == len(list(parametrized_tensors(model)))


def test_state_dict_round_trip(method):
    model = compressed(method, seed=0).eval()
    other = compressed(method, seed=123).eval()
    other.load_state_dict(model.state_dict())
    x, _ = batch()
    assert torch.equal(model(x)[0], other(x)[0])


def test_exported_model_equals_parametrized(method):
    model = compressed(method).eval()
    x, _ = batch()
    with torch.no_grad():
        before = model(x)[0]
        registry.export_dense(model)
        after = model(x)[0]
    assert not list(parametrized_tensors(model))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    plain = build_lm(model.config)  # a stock model of the resolved shape loads the export
    plain.load_state_dict(model.state_dict())
    assert isinstance(plain, LSTMLanguageModel)


def test_unknown_method_and_settings_are_config_errors():
    from suite.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        registry.get("nope")
    with pytest.raises(ConfigError, match="has no setting"):
        make_config("svd", {"factor": 4, "bogus": 1})
    with pytest.raises(ConfigError, match=">= 1"):
        make_config("svd", {"factor": 0.5})


def test_deployed_matvec_equals_the_materialized_weight(method):
    model = compressed(method).eval()
    for qual, module, tensor_name, _ in parametrized_tensors(model):
        w = getattr(module, tensor_name).detach()
        x = torch.randn(w.size(1))
        torch.testing.assert_close(registry.deployed_matvec(module, tensor_name)(x), w @ x, msg=qual)
