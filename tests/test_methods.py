"""The shared matrix: every registered method on every registered task family's tiny model goes through the same
checks, and the invariants every method keeps.

Methods and families come from their registries (nothing here lists them): adding a method or a family adds its
rows. A method that does not apply to a family's default targets (a vocabulary-matrix method on the recurrent
matrices) is tried on the family's vocabulary matrices; one that applies nowhere on a family is skipped there
with its reason, and must apply to the language model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from suite import tasks
from suite.compressors import available, make_config, registry
from suite.compressors.accounting import VALUE_BYTES, account, parametrized_tensors
from suite.compressors.sparse import Masked
from suite.errors import CompressionError, ConfigError
from suite.train import build_model

DEFAULT_FACTOR = 4.0
LADDER = (4.0, 3.0, 2.0, 1.5)
"""Test CFs, largest first: a method is tested at the first one it reaches on the tiny shapes (an 8-bit method
reaches just under 4)."""


def factor_for(method: str, factor: float = DEFAULT_FACTOR) -> float:
    """The test CF: ``factor``, or 1 for methods that do not compress by a factor (dense)."""
    try:
        make_config(method, {"factor": factor})
        return factor
    except ConfigError:
        return 1.0


def _build(fam, ex, method: str, cfg: dict, seed: int):
    """The tiny model compressed at the first CF of the ladder (from ``cfg["factor"]`` down) the method reaches."""
    ladder = [f for f in LADDER if f <= cfg["factor"]] if cfg["factor"] > 1 else [cfg["factor"]]
    for i, factor in enumerate(ladder):
        try:
            torch.manual_seed(seed)
            mcfg = make_config(method, {**cfg, "factor": factor})
            return (*build_model(fam, dict(ex.model), method, mcfg, ctx=ex.context), mcfg)
        except CompressionError:
            if i == len(ladder) - 1:
                raise


def compressed(family: str, method: str, seed: int = 0, **settings) -> tuple[nn.Module, object, list[str]]:
    """(model, example, targets) of a family's tiny model compressed by ``method``."""
    fam = tasks.get(family)
    ex = fam.example()
    cfg = {"factor": factor_for(method), **settings}
    try:
        model, _, mcfg = _build(fam, ex, method, cfg, seed)
    except ConfigError as first:
        vocab = list(ex.context.row_frequencies)
        if not vocab or "targets" in settings:
            pytest.skip(f"{method} does not apply to {family}: {first}")
        model, _, mcfg = _build(fam, ex, method, {**cfg, "targets": vocab[-1:]}, seed)
    return model, ex, mcfg.targets


def run(model: nn.Module, ex) -> torch.Tensor:
    with parametrize.cached():  # what every task's forward does (suite.tasks.base.Task)
        return ex.loss(model, ex.batch)


@pytest.fixture(params=available())
def method(request) -> str:
    return request.param


@pytest.fixture(params=tasks.available())
def family(request) -> str:
    return request.param


def test_forward_is_finite(family, method):
    model, ex, _ = compressed(family, method)
    assert torch.isfinite(run(model, ex))


def test_backward_reaches_exactly_the_trainable_parameters(family, method):
    model, ex, _ = compressed(family, method)
    run(model, ex).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    reached = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == trainable
    assert not any(b.requires_grad for b in model.buffers())
    compressed_names = {q for q, *_ in parametrized_tensors(model)}
    # A compressed matrix no longer exists as a dense trainable parameter of its own.
    assert not compressed_names & set(dict(model.named_parameters()))


def test_each_parametrization_is_evaluated_once_per_forward(family, method):
    model, ex, _ = compressed(family, method)
    calls = []
    for _, _, _, p in parametrized_tensors(model):
        p.register_forward_hook(lambda *a: calls.append(1))
    run(model, ex)
    assert len(calls) == len(list(parametrized_tensors(model)))


def test_state_dict_round_trip(family, method):
    model, ex, _ = compressed(family, method, seed=0)
    other, _, _ = compressed(family, method, seed=123)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    assert torch.equal(run(model, ex), run(other, ex))


def test_exported_model_equals_parametrized(family, method):
    model, ex, _ = compressed(family, method)
    model.eval()
    with torch.no_grad():
        before = run(model, ex)
        registry.export_dense(model)
        after = run(model, ex)
    assert not list(parametrized_tensors(model))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    plain = tasks.get(family).build_model(
        model.config
    )  # a stock model of the resolved shape loads the export
    plain.load_state_dict(model.state_dict())


def test_deployed_matvec_equals_the_materialized_weight(family, method):
    model, _, _ = compressed(family, method)
    model.eval()
    for qual, module, tensor_name, _ in parametrized_tensors(model):
        w = getattr(module, tensor_name).detach()
        x = torch.randn(w.size(1))
        try:
            y = registry.deployed_matvec(module, tensor_name)(x)
        except NotImplementedError:
            continue  # no deployment form: benchmarks time the materialized matrix
        torch.testing.assert_close(y, w @ x, rtol=1e-4, atol=1e-5, msg=qual)


def test_every_method_applies_to_the_language_model(method):
    model, ex, _ = compressed("lm", method)
    assert torch.isfinite(run(model, ex))


def test_storage_is_what_the_method_holds(method):
    """Own storage (the method's own count) is what it holds, in bytes: the stored factors at their element
    size, a sparse part's nonzeros (values only: the indices are the sparse format's), 8-bit values at one byte.
    Factors trained in fp32 and stored in 8 bits (quantization-aware training) are counted as the method says.
    Shared tensors are counted once, by identity, and the accounting adds up the methods' own counts."""
    model, ex, targets = compressed("lm", method)
    shared: dict[int, float] = {}
    for qual, module, tensor_name, param in parametrized_tensors(model):
        factors = registry.originals(module, tensor_name)
        held = sum(f.numel() * f.element_size() for f in factors)
        if isinstance(param, Masked):
            sparse = factors[param.sparse_factor]
            held += (param.nnz - sparse.numel()) * sparse.element_size()
        own = param.storage()
        if not own.q8_values:  # a quantized method holds fp32 while training and 8 bits when deployed
            assert own.total_values * VALUE_BYTES == held, qual
        for _, tensor, storage in param.shared_storage():
            shared[id(tensor)] = storage.total_values
            assert storage.total_values * VALUE_BYTES == tensor.numel() * tensor.element_size(), qual
    acc = account(model, targets, method=method)
    assert acc.targeted_storage.total_values == sum(
        param.storage().total_values for *_, param in parametrized_tensors(model)
    ) + sum(shared.values()) + sum(
        m.storage.total_values
        for m in acc.matrices
        if m.name not in {q for q, *_ in parametrized_tensors(model)}
    )


def test_decomposing_a_representable_weight_gives_it_back(method):
    """Trained init at the budget: a weight the method can represent exactly (its own materialized scratch
    weight) is decomposed back into it by ``right_inverse``."""
    try:
        make_config(method, {"factor": factor_for(method), "init": "trained"})
    except ConfigError:
        pytest.skip(f"{method} has no trained init")
    model, ex, targets = compressed("lm", method)
    weights = {q: getattr(m, t).detach().clone() for q, m, t, _ in parametrized_tensors(model)}
    for qual, module, tensor_name, param in parametrized_tensors(model):
        if not getattr(param, "exact_inverse", True):
            continue  # fitted by gradient steps, not decomposed exactly
        with torch.no_grad():
            setattr(module, tensor_name, weights[qual])  # assigning decomposes
        got = getattr(module, tensor_name).detach()
        err = (got - weights[qual]).norm() / weights[qual].norm()
        assert err < 1e-4, (qual, float(err))


def test_one_training_step_through_train_for_every_method(method, tiny_preset, tmp_path):
    """train() end to end on the tiny corpus: one optimizer step (a few tokens of training data), then the
    final evaluation, finalize and the accounting; the record says ok and its CF is at least the asked one."""
    from suite.config import load_run
    from suite.train import train

    factor = factor_for(method, 2.0)  # the tiny preset's matrices are 64x16
    sets = {
        "results_dir": str(tmp_path / "results"),
        "wandb": "disabled",
        "epochs": 1,
        "train_fraction": 0.012,
    }
    try:
        cfg = load_run(tiny_preset, method, factor, sets=sets)
    except ConfigError as e:
        pytest.skip(f"{method}: {e}")
    try:
        rec = train(cfg, progress_bar=False)
    except ConfigError:  # a method for vocabulary matrices only
        cfg = load_run(tiny_preset, method, factor, sets={**sets, "targets": ["decoder.weight"]})
        rec = train(cfg, progress_bar=False)
    assert rec.status == "ok", rec.reason
    assert rec.accounting["cf"] >= factor * (1 - 1e-9)
    if cfg.method_config.init == "scratch" and cfg.method_config.finetune_epochs != 0:
        steps = [e for e in rec.epochs if e.get("epoch") == 1]
        assert len(steps) == 1  # it trained
