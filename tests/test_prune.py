"""Gradual magnitude pruning: torch's L1 mask, never reviving, one global threshold, CSR accounting, a run."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from suite.compressors import account, registry
from suite.compressors.prune import Pruned, final_nnz_for
from suite.compressors.sparse import SparsityAnnealing, finish, prune_to, sparse_tensors
from suite.config import load_run
from suite.errors import ConfigError
from suite.train import train


class Matrices(nn.Module):
    def __init__(self, shapes=((96, 24),), scales=(1.0,)) -> None:
        super().__init__()
        self.w = nn.ParameterList(nn.Parameter(torch.randn(s) * c) for s, c in zip(shapes, scales))


def pruned(factor: float = 4, shapes=((96, 24),), scales=(1.0,), **settings) -> Matrices:
    torch.manual_seed(0)
    model = Matrices(shapes, scales)
    cfg = registry.make_config("prune", {"factor": factor, "targets": ["w.*"], **settings})
    registry.get("prune").apply(model, cfg)
    return model


def test_mask_equals_torch_l1_unstructured_at_the_same_sparsity():
    model = pruned()
    (t,) = sparse_tensors(model)
    dense = t.values.detach().clone()  # Gaussian: no ties
    for keep in (1500, 700, 123):
        prune_to(t, keep)
        ref = nn.Linear(24, 96, bias=False)
        with torch.no_grad():
            ref.weight.copy_(dense)
        torch_prune.l1_unstructured(ref, "weight", amount=dense.numel() - keep)
        assert torch.equal(t.param.mask, ref.weight_mask)
        assert torch.equal(model.w[0], dense * ref.weight_mask)


def test_pruning_never_revives_an_entry_across_events():
    model = pruned(factor=6)
    (t,) = sparse_tensors(model)
    callback = SparsityAnnealing(0.0, 0.0, 1.0, 1)
    trainer = SimpleNamespace(estimated_stepping_batches=30, global_step=0)
    callback.on_train_start(trainer, model)
    g = torch.Generator().manual_seed(1)
    previous = t.param.mask.clone()
    counts = [t.param.nnz]
    for step in range(1, 31):
        with torch.no_grad():  # weights move, pruned entries included: still never chosen back
            t.values.add_(torch.randn(t.values.shape, generator=g) * 3)
        callback.advance(model, step)
        assert not ((t.param.mask > 0) & (previous == 0)).any(), step
        previous = t.param.mask.clone()
        counts.append(t.param.nnz)
    assert counts == sorted(counts, reverse=True)
    assert t.param.nnz == t.param.final_nnz  # the last event lands exactly on s_f


def test_final_nnz_is_solved_from_the_cf_with_csr_indices_counted():
    m, n = 96, 24
    nnz = final_nnz_for((m, n), 4)
    assert nnz == (m * n // 4 - (m + 1)) // 2  # 576 stored: values + column indices + 97 row pointers
    model = pruned(4)
    finish(model)
    acc = account(model, ["w.*"], method="prune")
    row = acc.matrices[0]
    assert (row.storage.sparse_values, row.storage.indices) == (nnz, nnz + m + 1)
    assert acc.cf >= 4 and m * n / (2 * (nnz + 1) + m + 1) < 4  # one more nonzero would not fit


def test_global_scope_prunes_every_matrix_with_one_threshold():
    shapes, scales = ((96, 24), (48, 24), (96, 12)), (1.0, 3.0, 0.3)
    model = pruned(5, shapes, scales, scope="global")
    finish(model)
    tensors = sparse_tensors(model)
    kept = torch.cat([t.values.detach()[t.param.live].abs() for t in tensors])
    gone = torch.cat([t.values.detach()[~t.param.live].abs() for t in tensors])
    budgets = [final_nnz_for(s, 5) for s in shapes]
    assert kept.numel() == sum(budgets)  # the total budget, spread by magnitude
    torch.manual_seed(0)
    pre = Matrices(shapes, scales)  # the same draw: the magnitudes before pruning
    everything = torch.cat([p.detach().abs().flatten() for p in pre.w])
    threshold = everything.topk(sum(budgets)).values[-1]
    assert kept.min() >= threshold and (gone.numel() == 0 or gone.max() == 0)
    for t, p in zip(tensors, pre.w):
        assert torch.equal(t.param.live, p.detach().abs() >= threshold)  # one threshold for all
    nnz = [t.param.nnz for t in tensors]
    assert nnz[1] > budgets[1] and nnz[2] < budgets[2]  # the large matrix keeps more than its share
    acc = account(model, ["w.*"], method="prune")
    assert acc.cf >= 5 * (1 - 1e-9)


def test_matrix_scope_prunes_each_matrix_to_its_own_budget():
    shapes = ((96, 24), (48, 24))
    model = pruned(5, shapes, (1.0, 3.0))
    finish(model)
    assert [t.param.nnz for t in sparse_tensors(model)] == [final_nnz_for(s, 5) for s in shapes]


def test_deployment_is_the_csr_of_the_kept_entries():
    model = pruned(4)
    finish(model)
    p: Pruned = model.w.parametrizations["0"][0]
    closure, csr = registry.deployed_parts(model.w, "0")
    assert csr.col_indices().dtype == torch.int32 and csr.values().numel() == p.final_nnz
    x = torch.randn(24)
    assert torch.allclose(closure(x) + csr @ x, model.w[0] @ x, atol=1e-5)
    assert torch.allclose(registry.deployed_matvec(model.w, "0")(x), model.w[0] @ x, atol=1e-5)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="scope must be one of matrix, global"):
        registry.make_config("prune", {"factor": 4, "scope": "layer"})
    with pytest.raises(ConfigError, match="anneal_end"):
        registry.make_config("prune", {"factor": 4, "anneal_start": 0.5, "anneal_end": 0.4})


@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_a_pruning_run_ends_at_the_cf(tiny_preset, results, scope):
    sets = {"results_dir": str(results), "wandb": "disabled", "scope": scope, "prune_every": 2}
    rec = train(load_run(tiny_preset, "prune", 5, sets=sets), progress_bar=False)
    assert rec.status == "ok"
    assert 5 <= rec.accounting["cf"] <= 5 * 1.01
    if scope == "matrix":
        assert all(m["detail"]["nnz"] == m["detail"]["final_nnz"] for m in rec.accounting["matrices"])
