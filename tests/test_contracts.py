"""The two contracts a new task or method plugs into, exercised from this module alone: a task family of its own
(sequence classification on synthetic data, a bidirectional LSTM, accuracy: higher is better) and a method of its
own (a low-rank factorization that asks for calibration batches), both registered here. train(), the report, a
two-trial sweep and the figures work on them with no change to suite/."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from suite import tasks
from suite.compressors import registry
from suite.compressors.lowrank import LowRank, rank_for
from suite.config import load_run
from suite.context import DataContext
from suite.figures import make_figures
from suite.report import selected, write_tables
from suite.settings import setting
from suite.sweep import load_spec, run_sweep
from suite.tasks.base import Example, Family, Metric, ModelSettings, Task, TrainSettings
from suite.train import train

# ---- a family: does token 1 occur more often than token 2 in a sequence? -----------------------------------


@dataclass
class SeqData:
    splits: dict[str, TensorDataset]
    vocab: int

    def describe(self) -> dict:
        return {"vocab": self.vocab, **{k: len(v) for k, v in self.splits.items()}}


@dataclass
class SeqModel(ModelSettings):
    hidden: int = setting(8, ge=1)
    emb: int = setting(6, ge=1)


class Classifier(nn.Module):
    def __init__(self, vocab: int, emb: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, x):
        out, _ = self.rnn(self.embedding(x))  # (B, T, 2H)
        return self.head(out.mean(1))  # (B, 2)


def bare_loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


class ClassifierTask(Task):
    """All a family's task writes: its training step and an evaluation accumulator; the base does the rest."""

    metric = Metric("acc", "maximize", "accuracy")
    optimizer = torch.optim.Adam

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def eval_begin(self, split):
        return {"loss": 0.0, "hits": 0, "seen": 0}

    def eval_step(self, acc, batch, split):
        logits = self(batch[0])
        acc["loss"] += F.cross_entropy(logits, batch[1], reduction="sum").item()
        acc["hits"] += (logits.argmax(-1) == batch[1]).sum().item()
        acc["seen"] += len(batch[1])

    def eval_end(self, acc, split, dataset):
        return acc["loss"] / acc["seen"], acc["hits"] / acc["seen"]

    def inputs(self, batch):
        return (batch[0],)


class Loaders(pl.LightningDataModule):
    def __init__(self, data: SeqData, train: TrainSettings) -> None:
        super().__init__()
        self.data, self.train = data, train

    def train_dataloader(self):
        return DataLoader(self.data.splits["train"], batch_size=self.train.batch_size, shuffle=False)

    def val_dataloader(self):
        return DataLoader(self.data.splits["valid"], batch_size=64)

    def test_dataloader(self):
        return DataLoader(self.data.splits["test"], batch_size=64)


def synthetic(n: int, seed: int, vocab: int = 6, length: int = 10) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(vocab, (n, length), generator=g)
    y = ((x == 1).sum(1) > (x == 2).sum(1)).long()
    return TensorDataset(x, y)


class SeqClassification(Family):
    name = "seqcls"
    metric = ClassifierTask.metric
    train_settings = TrainSettings
    model_settings = SeqModel
    datasets = ("synthetic",)
    units = "sequences"

    def load_data(self, dataset, data_dir, train):
        n = dataset["n"]
        return SeqData({s: synthetic(n, i) for i, s in enumerate(("train", "valid", "test"))}, 6)

    def resolve_model(self, model, data):
        return {**model, "vocab": data.vocab}

    def build_model(self, model):
        return Classifier(model["vocab"], model["emb"], model["hidden"])

    def datamodule(self, data, train):
        return Loaders(data, train)

    def task(self, model, train, lr_at):
        return ClassifierTask(model, lr_at)

    def train_units(self, datamodule):
        return len(datamodule.data.splits["train"])

    def context(self, data, datamodule, needs):
        if "calibration" in needs:
            return DataContext(calibration=[next(iter(datamodule.train_dataloader()))], loss=bare_loss)
        return DataContext()

    def example(self, seed=0):
        ds = synthetic(5, seed)
        return Example(
            {"hidden": 8, "emb": 6, "vocab": 6}, (ds.tensors[0], ds.tensors[1]), bare_loss, DataContext()
        )


# ---- a method: low rank, and it insists on calibration batches --------------------------------------------


@dataclass
class CalibratedConfig(registry.CompressorConfig):
    """Low rank W = U V; counts the calibration batches it was given (a stand-in for a data-aware method)."""


SEEN: list[int] = []


def make_calibrated(name, w, cfg, ctx):
    if not ctx.calibration:
        raise AssertionError("train() must fill the calibration batches this method needs")
    SEEN.append(len(ctx.calibration))
    rank = rank_for(tuple(w.shape), cfg.factor)
    return LowRank(tuple(w.shape), rank, cfg.factor)


@pytest.fixture(scope="module", autouse=True)
def registered():
    family = tasks.register(SeqClassification())
    registry.register(
        registry.Method(
            name="calibrated_lr",
            config=CalibratedConfig,
            apply=registry.apply_structured(make_calibrated),
            summary="low rank, built from calibration batches",
            needs=frozenset({"calibration"}),
        )
    )
    yield family
    tasks.unregister("seqcls")
    registry.REGISTRY.pop("calibrated_lr")


@pytest.fixture
def preset(tmp_path):
    path = tmp_path / "seq.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "family": "seqcls",
                "dataset": {"n": 96},
                "model": {"hidden": 8, "emb": 6},
                "train": {"epochs": 2, "batch_size": 16, "lr": 0.02},
                "profiles": {"smoke": {"epochs": 1}},
            }
        )
    )
    return path


def test_train_report_sweep_and_figures_on_a_family_and_method_of_this_module(preset, tmp_path, capsys):
    results = tmp_path / "results"
    sets = {"results_dir": str(results), "wandb": "disabled"}
    dense = train(load_run(preset, "dense", sets=sets), progress_bar=False)
    assert dense.status == "ok" and dense.metric == "acc" and dense.direction == "maximize"
    assert set(dense.final) == {"val_acc", "test_acc"} and 0 <= dense.test <= 1
    assert dense.config["family"] == "seqcls" and dense.code_version
    before = len(SEEN)
    own = train(load_run(preset, "calibrated_lr", 2, sets=sets), progress_bar=False)
    assert own.status == "ok" and len(SEEN) > before  # the context reached the method
    assert {m["name"] for m in own.accounting["matrices"]} == {
        f"rnn.weight_{k}_l0{d}" for k in ("ih", "hh") for d in ("", "_reverse")
    }  # bidirectional layers are default targets

    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "task": str(preset),
                "methods": ["calibrated_lr"],
                "space": {"factor": [2, 3]},
                "sampler": "grid",
            }
        )
    )
    spec = load_spec(spec_path, "smoke", sets)
    assert [o.name for o in spec.objectives] == ["val_acc"] and spec.directions == ["maximize"]
    study = run_sweep(spec)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 2

    written, chosen, left_out = write_tables(results, tmp_path / "tables", tmp_path / "metrics.json")
    assert left_out == 0 and set(chosen["metric"]) == {"acc"}
    head = json.loads((tmp_path / "metrics.json").read_text())
    assert head["sweeps"][spec.study_name]["complete"] == 2
    made = make_figures(tmp_path / "tables", tmp_path / "figures")
    assert made["F1"][0], made["F1"][1]
    f1 = pd.read_csv(tmp_path / "figures" / "F1_metric_vs_cf.csv")
    assert set(f1["method"]) == {"calibrated_lr"}


def test_higher_is_better_metrics_choose_the_highest_validation(tmp_path):
    """A maximized metric: the configuration with the higher validation accuracy is chosen, whatever its test."""
    rows = []
    for lr, val, test in ((0.1, 0.9, 0.6), (0.01, 0.7, 0.95)):
        rows.append(
            {
                "task": "t",
                "setup_id": "s",
                "method": "m",
                "factor": 2.0,
                "targets": "x",
                "lr": lr,
                "direction": "maximize",
                "val_mean": val,
                "test_mean": test,
            }
        )
    chosen = selected(pd.DataFrame(rows))
    assert chosen["lr"].tolist() == [0.1]


def test_family_settings_are_validated_and_unknown_keys_refused(preset):
    from suite.errors import ConfigError

    with pytest.raises(ConfigError, match="model has no setting depth; use one of: hidden, emb"):
        load_run(preset, "dense", sets={"model.depth": 3})
    with pytest.raises(ConfigError, match="model.hidden must be an integer >= 1, got 0"):
        load_run(preset, "dense", sets={"model.hidden": 0})
    with pytest.raises(ConfigError, match="unknown override 'bptt'"):
        load_run(preset, "dense", sets={"bptt": 3})  # a language-model setting, not this family's
    assert dataclasses.asdict(load_run(preset, "dense").train)["lr"] == 0.02


def test_code_version_follows_the_method_and_family_modules():
    from suite.version import code_files, code_version

    kp, lmf = set(code_files("lm", "kp")), set(code_files("lm", "lmf"))
    assert "suite/compressors/kronecker.py" in kp and "suite/compressors/lowrank.py" not in kp
    assert "suite/compressors/lowrank.py" in lmf and "suite/tasks/lm.py" in lmf
    assert not any(
        f.endswith(("report.py", "figures.py", "cli.py", "bench.py")) or "/sweep/" in f for f in kp | lmf
    )
    assert "suite/compressors/lowrank.py" in set(code_files("lm", "doped_kp"))  # doping imports it
    assert code_version("lm", "kp") != code_version("lm", "lmf")
    own = code_files("seqcls", "calibrated_lr")
    assert any(f.endswith("test_contracts.py") for f in own) and "suite/tasks/lm.py" not in own
