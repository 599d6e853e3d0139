"""The library API on models the suite does not define: every registered method that applies to a module type
goes through forward and backward, the accounting, a plain training loop with the method's hooks, finalize and
the export round trip; one that does not apply says why in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import suite
from suite.compressors import available, make_config
from suite.errors import SuiteError
from suite.export import read

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 40


class GRULM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 16)
        self.rnn = nn.GRU(16, 32, num_layers=2, batch_first=True)
        self.decoder = nn.Linear(32, VOCAB)

    def forward(self, x):
        return self.decoder(self.rnn(self.embedding(x))[0])


class ConvGRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.rnn = nn.GRU(16, 24, batch_first=True, bidirectional=True)
        self.head = nn.Linear(48, 5)

    def forward(self, x):  # (B, T, 8)
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.head(self.rnn(h)[0].mean(1))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


class CellTagger(nn.Module):
    """An embedding and an nn.LSTMCell stepped by hand: both the cell's matrices and the embedding compressed."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 16)
        self.cell = nn.LSTMCell(16, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):  # (B, T) ids -> (B, T, 5)
        h = c = torch.zeros(x.size(0), 24)
        out = []
        for t in range(x.size(1)):
            h, c = self.cell(self.embedding(x[:, t]), (h, c))
            out.append(self.head(h))
        return torch.stack(out, 1)


def _batch(kind: str):
    g = torch.Generator().manual_seed(0)
    if kind == "gru_lm":
        x = torch.randint(0, VOCAB, (4, 9), generator=g)
        return x[:, :-1], x[:, 1:]
    if kind == "cell_tagger":
        return torch.randint(0, VOCAB, (4, 6), generator=g), torch.randint(0, 5, (4, 6), generator=g)
    if kind == "conv_gru":
        return torch.randn(4, 12, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
    return torch.randn(4, 7, 32, generator=g), torch.randint(0, 5, (4,), generator=g)


MODELS = {
    "gru_lm": (GRULM, None),
    "conv_gru": (ConvGRUClassifier, None),
    "transformer": (Encoder, ["*linear1.weight", "*linear2.weight", "*out_proj.weight"]),
    "cell_tagger": (CellTagger, ["cell.weight_ih", "cell.weight_hh", "embedding.weight"]),
}


def _loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    out = model(x)
    return nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))


def _compress(kind: str, method: str, seed: int = 0) -> suite.Compressed:
    cls, targets = MODELS[kind]
    torch.manual_seed(seed)
    model = cls()
    settings: dict = {"factor": 2.0}
    try:
        make_config(method, settings)
    except SuiteError:
        settings = {}  # a method without a factor (dense)
    try:
        return suite.compress(model, method, targets=targets, **settings)
    except SuiteError as first:
        if kind != "gru_lm":
            pytest.skip(f"{method} does not apply to {kind}: {first}")
        freqs = {"decoder.weight": torch.arange(VOCAB, 0, -1).float()}  # a vocabulary method: the softmax
        try:
            return suite.compress(model, method, targets="decoder.weight", row_frequencies=freqs, **settings)
        except SuiteError as e:
            assert "\n" not in str(e)
            pytest.skip(f"{method} does not apply to {kind}: {e}")


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("method", available())
def test_every_method_on_models_the_suite_does_not_define(kind, method, tmp_path):
    c = _compress(kind, method)
    model, batch = c.model, _batch(kind)
    loss = _loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)

    # A plain loop with the hooks: every schedule event, then finalize.
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = 6
    for step in range(steps):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
        c.on_step(step + 1, steps)
    c.finalize()
    acc = c.accounting
    if method != "dense":
        assert acc.cf >= 2.0 * (1 - 1e-9), acc.to_dict()["cf"]  # the asked CF, reached after finalize

    # Export and reload into a fresh instance: the same outputs, and the file holds what the accounting counts.
    info = c.export(tmp_path / "model.safetensors")
    cls, _ = MODELS[kind]
    torch.manual_seed(123)
    extra = {}
    if c.config.targets == ["decoder.weight"]:
        extra["row_frequencies"] = {"decoder.weight": torch.arange(VOCAB, 0, -1).float()}
    again = suite.load(tmp_path / "model.safetensors", cls(), **extra)
    model.eval(), again.model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch[0]), again.model(batch[0]))
    stored = lambda a: [(m.name, m.storage) for m in a.matrices]  # noqa: E731 (details hold fit diagnostics)
    assert stored(again.accounting) == stored(acc) and again.accounting.cf == acc.cf
    if not acc.targeted_storage.q8_values:  # 8-bit factors are counted at a quarter, kept in fp32 tensors
        assert info["tensor_bytes"] == pytest.approx(info["accounted_bytes"], rel=0.02), info
    assert info["bytes"] - info["tensor_bytes"] < 64 * 1024  # the container's header


def test_hand_counted_storage_of_one_gru_matrix():
    """lmf at CF 4 on a 96x32 GRU matrix: rank r with r (96 + 32) <= 96*32/4, so r = 6 and 768 values; prune at
    CF 4: nnz values + nnz column indices + 97 row pointers <= 768, so nnz = 335."""
    lmf = suite.compress(GRULM(), "lmf", factor=4, targets="rnn.weight_hh_l0")
    (m,) = lmf.accounting.matrices
    assert m.shape == (96, 32) and m.storage.total == 6 * (96 + 32) == 768
    pruned = suite.compress(GRULM(), "prune", factor=4, targets="rnn.weight_hh_l0")
    pruned.finalize()
    (m,) = pruned.accounting.matrices
    assert (m.storage.sparse_values, m.storage.indices) == (335, 335 + 97)


def test_a_method_that_changes_the_architecture_says_it_does_not_apply():
    with pytest.raises(SuiteError, match="applies only to the suite's task families") as e:
        suite.compress(GRULM(), "small_dense", factor=2)
    assert "\n" not in str(e.value)


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SuiteError, match="export it again"):
        suite.load(bad, GRULM())


def test_the_documented_example_runs():
    """docs/library.md's first Python block, as a user would paste it."""
    text = (ROOT / "docs" / "library.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "docs/library.md", "exec"), {})


def test_the_callbacks_train_a_users_lightning_module():
    """c.callbacks() in a Trainer around a module the suite does not define: annealing reaches D's final
    sparsity at the end of fit, and the CMA diagnostics log D's sparsity alone."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    c = suite.compress(GRULM(), "doped_kp", factor=2.0, cmr=0.5, anneal_end=0.5)
    x = torch.randint(0, VOCAB, (16, 9))

    class Module(pl.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            return _loss(self.model, (batch[0][:, :-1], batch[0][:, 1:]))

        def validation_step(self, batch, _):
            self.log("val_loss", _loss(self.model, (batch[0][:, :-1], batch[0][:, 1:])))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(x), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=c.callbacks(),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Module(c.model), loader, loader)
    assert trainer.callback_metrics["d_sparsity"] > 0.5
    c.finalize()
    assert c.accounting.cf >= 2.0


def test_suite_export_writes_a_trained_run_that_reloads_with_the_same_outputs(tiny_preset, tmp_path, capsys):
    """`suite export RUN --check` on a trained smoke run: the file's tensors take the bytes the accounting counts,
    and the reloaded model gives the trained model's outputs on a real validation batch; a run that kept no
    weights is one error line."""
    from suite.cli import main

    results = tmp_path / "results"
    base = ["train", str(tiny_preset), "--method", "doped_kp", "--factor", "2", "--results", str(results)]
    assert main([*base, "--set", "epochs=1", "--set", "checkpoint=true", "--set", "cmr=0.5"]) == 0
    (run,) = [p.parent for p in results.glob("runs/*/doped_kp/*/record.json")]
    capsys.readouterr()
    assert main(["export", str(run), "--check", "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out
    assert "max abs error 0 " in line
    (path,) = (tmp_path / "out").glob("*.safetensors")
    tensors, meta = read(path)
    assert meta["method"] == "doped_kp" and meta["finalized"]
    record = json.loads((run / "record.json").read_text())
    assert (
        sum(t.numel() * t.element_size() for t in tensors.values())
        == 4 * record["accounting"]["model_stored"]
    )
    assert main([*base, "--set", "epochs=1", "--seed", "1"]) == 0  # no weights kept
    (bare,) = [p.parent for p in results.glob("runs/*/doped_kp/*/record.json") if p.parent != run]
    capsys.readouterr()
    assert main(["export", str(bare)]) == 2
    assert "checkpoint=true" in capsys.readouterr().err
