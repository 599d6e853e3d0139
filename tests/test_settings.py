"""Config dataclasses: what a config serialises to and the run keys it hashes to, held to literal values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from suite.cli import main
from suite.compressors import registry
from suite.config import load_run
from suite.data import load_corpus
from suite.data.multi30k import load_multi30k
from suite.errors import ConfigError
from suite.pipeline import load_params

ROOT = Path(__file__).resolve().parents[1]
LSTM = ["*weight_ih_l*", "*weight_hh_l*", "*weight_ih", "*weight_hh"]
BASE = {"finetune_epochs": None, "finetune_lr": None, "init": "scratch", "targets": LSTM}

#: (preset, method, factor, overrides) -> (run_key, the compress dict), computed before the settings mechanism:
#: checkpoints are filed under the run key and published records are matched by the same identity, so the same
#: settings must keep giving the same dict, to the type of each number (``dense_share: 0`` stays an int).
IDENTITIES = {
    ("ptb-small", "dense", None, ()): ("59e9506317c0", {**BASE, "factor": 1.0}),
    ("ptb-small", "kp", 25, ()): ("713bfdd708de", {**BASE, "factor": 25.0, "terms": 1}),
    ("ptb-small", "doped_kp", 10, (("cmr", 0.5), ("profile", "smoke"))): (
        "442f9c457a00",
        {
            **BASE,
            "factor": 10.0,
            "terms": 1,
            "structured_share": 0.8,
            "initial_sparsity": 0.0,
            "anneal_start": 0.1,
            "anneal_end": 0.75,
            "prune_every": 100,
            "cmr": 0.5,
            "cmr_mode": "element",
        },
    ),
    ("ptb-small", "hmd", 4, (("dense_share", 0),)): (
        "5736fb1d0d37",
        {**BASE, "factor": 4.0, "dense_share": 0},
    ),
    ("ptb-small", "groupreduce", 4, (("targets", ("decoder.weight",)),)): (
        "9ef824a7be65",
        {
            **BASE,
            "factor": 4.0,
            "init": "trained",
            "finetune_epochs": 0,
            "targets": ["decoder.weight"],
            "blocks": 5,
            "rank_exponent": 0.5,
            "refine_iters": 3,
            "quantize": False,
        },
    ),
    ("ptb-medium", "prune", 8, (("seed", 2),)): (
        "877c8a2ae3f1",
        {
            **BASE,
            "factor": 8.0,
            "scope": "matrix",
            "initial_sparsity": 0.0,
            "anneal_start": 0.1,
            "anneal_end": 0.75,
            "prune_every": 100,
        },
    ),
    ("multi30k-small", "lmf", 4, ()): ("6608afa7eeae", {**BASE, "factor": 4.0}),
    ("fsdd-digits", "dense", None, (("profile", "smoke"),)): ("7d963885f4ec", {**BASE, "factor": 1.0}),
    ("fsdd-digits-speaker", "svd", 2, ()): (
        "78bfc25e9f9b",
        {**BASE, "factor": 2.0, "init": "trained", "finetune_epochs": 0},
    ),
}


def _json(d: dict) -> str:
    return json.dumps(d, sort_keys=True)  # 0 and 0.0 differ here, as they do in a run-id


@pytest.mark.parametrize("key", list(IDENTITIES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_a_config_serialises_and_hashes_as_before(key):
    preset, method, factor, sets = key
    run_key, compress = IDENTITIES[key]
    sets = {k: list(v) if isinstance(v, tuple) else v for k, v in sets}
    cfg = load_run(ROOT / "tasks" / f"{preset}.yaml", method, factor=factor, sets=sets)
    assert _json(cfg.compress) == _json(compress)
    assert cfg.run_key == run_key


def test_settings_keep_their_order_and_values():
    doped = registry.make_config("doped_kp", {"factor": 2})
    assert list(doped.to_dict()) == [
        *("factor", "targets", "init", "finetune_epochs", "finetune_lr", "terms", "structured_share"),
        *("initial_sparsity", "anneal_start", "anneal_end", "prune_every", "cmr", "cmr_mode"),
    ]
    cfg = load_run(ROOT / "tasks/fsdd-digits.yaml", "dense", sets={"profile": "smoke"})
    train = dataclasses.asdict(cfg.train)
    assert _json(train) == _json(
        {
            **{"train_utterances": 1000, "val_utterances": 100, "test_utterances": 200, "min_digits": 1},
            **{"max_digits": 7, "min_silence": 0.05, "max_silence": 0.3, "val_takes": 5},
            **{"held_out_speaker": None, "utterance_seed": 0, "epochs": 3, "batch_size": 16, "lr": 0.004},
            **{"clip": 5.0, "train_fraction": 1.0, "eval_fraction": 1.0, "precision": "32"},
            **{"lr_decay": 1.25, "decay_after": 8, "eval_batch_size": 64},
        }
    )
    assert list(train)[:3] == ["train_utterances", "val_utterances", "test_utterances"]
    assert list(cfg.to_dict())[:8] == [
        "task",
        "dataset",
        "model",
        "train",
        "method",
        "compress",
        "seed",
        "profile",
    ]
    lm = load_run(ROOT / "tasks/ptb-small.yaml", "dense")
    assert _json(lm.model) == _json(
        {"hidden": 200, "layers": 2, "dropout": 0.0, "init": 0.1, "emb_size": None, "tie_weights": False}
        | {"vocab": None}
    )
    params = dataclasses.asdict(load_params(ROOT / "params.yaml"))
    assert _json(params) == _json(
        {
            "profile": "smoke",
            "workers": 2,
            "threads": 1,
            "seeds": [0],
            "set": {},
            "figures": {"cmr_cf": None, "bench": "results/bench/infer.json"},
        }
    )


# One check for every setting: a bool is not a number, an int is whole, one wording ----------------------------


@pytest.mark.parametrize(
    "method, settings, wording",
    [
        ("hmd", {"dense_share": False}, "dense_share must be a number in [0, 1), got False"),
        ("kp", {"finetune_epochs": 1.5}, "finetune_epochs must be an integer >= 0 or null, got 1.5"),
        ("kp", {"finetune_epochs": True}, "finetune_epochs must be an integer >= 0 or null, got True"),
        ("kp", {"finetune_lr": "fast"}, "finetune_lr must be a finite number > 0 or null, got 'fast'"),
        ("kp", {"terms": 2.0}, "terms must be an integer >= 1, got 2.0"),
        ("kp", {"factor": float("nan")}, "factor must be a finite number >= 1, got nan"),
        ("doped_kp", {"cmr": True}, "cmr must be a number in [0, 1), got True"),
        ("dense", {"factor": 4}, "factor must be 1, got 4; dense does not compress: drop --factor"),
        (
            "svd",
            {"init": "scratch"},
            "init must be 'trained', got 'scratch'; this method decomposes trained weights",
        ),
        ("kp", {"colour": 1}, "method kp has no setting colour; use one of: factor, targets, init"),
    ],
)
def test_a_method_setting_out_of_its_type_or_range_is_refused_in_one_wording(method, settings, wording):
    with pytest.raises(ConfigError) as e:
        registry.make_config(method, {"factor": 1.0 if method == "dense" else 2.0, **settings})
    assert str(e.value).startswith(wording) and "\n" not in str(e.value)


def test_a_subclass_that_changes_a_default_keeps_the_range_of_its_base():
    assert registry.make_config("svd", {"factor": 2}).finetune_epochs == 0
    with pytest.raises(ConfigError, match="finetune_epochs must be an integer >= 0"):
        registry.make_config("svd", {"factor": 2, "finetune_epochs": -1})
    with pytest.raises(ConfigError, match="terms must be an integer >= 1"):
        registry.make_config("doped_kp", {"factor": 2, "terms": 0})  # KPConfig's, through DopedConfig


@pytest.mark.parametrize("seeds", [[True], [-1], [0, 2**32], ["0"], []])
def test_the_pipeline_refuses_a_seed_that_is_no_seed(tmp_path, seeds):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "smoke", "profiles": {"smoke": {"seeds": seeds}}}))
    with pytest.raises(
        ConfigError, match=r"profiles\.smoke\.seeds must be a non-empty list of integers in \[0, "
    ):
        load_params(params)


def test_the_pipeline_refuses_a_bool_as_workers_or_threads(tmp_path):
    for key in ("workers", "threads"):
        params = tmp_path / f"{key}.yaml"
        params.write_text(yaml.safe_dump({key: True}))
        with pytest.raises(ConfigError, match=rf"^{params}: {key} must be an integer >= 1"):
            load_params(params)


def test_multi30k_refuses_a_bad_min_freq_as_every_setting_is_refused(capsys):
    with pytest.raises(ConfigError, match="min_freq must be an integer >= 1, got 0"):
        load_multi30k(min_freq=0)
    with pytest.raises(ConfigError, match="min_freq must be an integer >= 1, got True"):
        load_multi30k(min_freq=True)
    preset = str(ROOT / "tasks" / "multi30k-small.yaml")
    for value in ("0", "1.5", "true"):
        assert main(["train", preset, "--set", f"min_freq={value}", "--set", "wandb=disabled"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: train.min_freq must be an integer >= 1, got ") and "\n" not in err


def test_a_users_corpus_is_refused_the_way_every_setting_is(tmp_path):
    with pytest.raises(ConfigError, match="dataset has no setting colour; use one of: path, name, max_vocab"):
        load_corpus({"path": str(tmp_path), "colour": 1})
    with pytest.raises(ConfigError, match="dataset must have path"):
        load_corpus({"name": "mine"})
    with pytest.raises(
        ConfigError, match="dataset.max_vocab must be an integer >= 2 or null, got 1; a word and <unk>"
    ):
        load_corpus({"path": str(tmp_path), "max_vocab": 1})


def test_run_level_settings_are_checked_by_their_type_and_range():
    preset = ROOT / "tasks" / "ptb-small.yaml"
    for sets, wording in [
        ({"seed": True}, "seed must be an integer in [0, 4294967295], got True"),
        ({"seed": -1}, "seed must be an integer in [0, 4294967295], got -1"),
        ({"trial": 1.5}, "trial must be an integer >= 0 or null, got 1.5"),
        ({"checkpoint": "yes"}, "checkpoint must be true or false, got 'yes'"),
        ({"wandb": "cloud"}, "wandb must be one of offline, online, disabled, got 'cloud'"),
        ({"store": ""}, "store must be a non-empty string or null, got ''"),
        ({"epochs": 2.0}, "train.epochs must be an integer >= 0, got 2.0"),
        ({"model.dropout": False}, "model.dropout must be a number in [0, 1), got False"),
        ({"train.colour": 1}, "train has no setting colour; use one of: epochs, batch_size"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_run(preset, "dense", sets=sets)
        assert str(e.value).startswith(wording), (sets, str(e.value))
