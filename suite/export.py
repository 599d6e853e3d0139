"""The compressed form of a model as a file: safetensors of what the accounting counts, and back.

``save`` writes the model's state with every sparse part in CSR (values, int32 column indices, int32 row
pointers) instead of the dense tensor and its 0/1 mask, index tensors (a word order) as int32, and everything
else (factors, biases, untouched parameters) as it is. So the file holds what the accounting stores, in its
units, plus the container's header: ``size_check`` compares the two. The metadata names the method and its
settings (``suite.load`` compresses a fresh model the same way before loading the tensors back).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .compressors.accounting import VALUE_BYTES, Accounting, parametrized_tensors
from .compressors.sparse import Masked
from .errors import ConfigError

FORMAT = "suite.compressed/1"
CSR = (".csr_values", ".csr_col", ".csr_crow")


def _masked_keys(model: nn.Module) -> dict[str, str]:
    """state_dict key of each masked tensor -> the key of its 0/1 mask."""
    out = {}
    for qual, module, tensor_name, param in parametrized_tensors(model):
        if not isinstance(param, Masked):
            continue
        prefix = f"{qual[: -len(tensor_name)]}parametrizations.{tensor_name}"
        plist = module.parametrizations[tensor_name]
        stored = (
            "original" if hasattr(plist, "original") else f"original{param.sparse_factor % plist.ntensors}"
        )
        out[f"{prefix}.{stored}"] = f"{prefix}.0.mask"
    return out


def pack(model: nn.Module) -> dict[str, Tensor]:
    """The tensors to store: CSR for every masked tensor, int32 for index tensors, the rest as they are."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    for values_key, mask_key in _masked_keys(model).items():
        d, keep = state.pop(values_key), state.pop(mask_key) != 0
        d2, keep2 = d.reshape(d.size(0), -1), keep.reshape(keep.size(0), -1)
        out[values_key + CSR[0]] = d2[keep2].contiguous()
        out[values_key + CSR[1]] = keep2.nonzero()[:, 1].to(torch.int32)
        out[values_key + CSR[2]] = nn.functional.pad(keep2.sum(1).cumsum(0), (1, 0)).to(torch.int32)
    for key, t in state.items():
        if t.dtype == torch.int64 and t.numel() and int(t.abs().max()) < 2**31:
            t = t.to(torch.int32)
        out[key] = t.contiguous()
    return out


def unpack(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Load ``pack``'s tensors into ``model``, compressed the same way: CSR back to the dense tensor and its
    mask, every tensor into the model's own dtype."""
    state = dict(tensors)
    own = model.state_dict()
    for values_key, mask_key in _masked_keys(model).items():
        values, col, crow = (state.pop(values_key + s) for s in CSR)
        shape = own[values_key].shape
        rows = torch.repeat_interleave(torch.arange(shape[0]), (crow[1:] - crow[:-1]).long())
        d = torch.zeros(shape[0], own[values_key][0].numel(), dtype=own[values_key].dtype)
        mask = torch.zeros_like(d)
        d[rows, col.long()] = values.to(d.dtype)
        mask[rows, col.long()] = 1
        state[values_key], state[mask_key] = d.view(shape), mask.view(shape).to(own[mask_key].dtype)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ConfigError(
            f"the file does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); load it into "
            "the model class it was exported from"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def save(model: nn.Module, path: str | Path, meta: dict[str, Any], accounting: Accounting) -> dict[str, Any]:
    """Write the compressed form of ``model`` to ``path`` (atomically); returns the file's size beside
    ``size_check``'s numbers."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = pack(model)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)
    return {"path": str(path), "bytes": path.stat().st_size, **size_check(accounting, tensors)}


def read(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, meta) of a file ``save`` wrote; a file of another kind is a ConfigError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"cannot read {path} as a compressed model ({e}); export it again") from None
    if header.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a compressed model written by suite export (format {FORMAT})")
    return tensors, json.loads(header["meta"])


def tensor_bytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def size_check(accounting: Accounting, tensors: dict[str, Tensor]) -> dict[str, float]:
    """The stored bytes the accounting counts for the whole model against the bytes of the file's tensors."""
    accounted = accounting.model_stored * VALUE_BYTES
    stored = tensor_bytes(tensors)
    return {"accounted_bytes": accounted, "tensor_bytes": stored, "ratio": stored / accounted}


def export_run(run: str | Path, out: str | Path | None = None, check: bool = False) -> dict[str, Any]:
    """``suite export``: the trained model of a finished run (its ``model.pt``) as a compressed file
    ``<task>-<method>-<run-id>.safetensors`` in ``out`` (a folder; by default the run's own). With ``check``, the file is read back into a fresh model and its outputs on a
    batch of the run's real validation data are compared with the trained model's (max abs difference)."""
    from . import api, tasks
    from .compressors import registry
    from .config import RunConfig
    from .files import make_dir
    from .record import Record
    from .store import record_path
    from .train import MODEL_FILE, method_context

    run = Path(run)
    if not record_path(run).is_file():
        raise ConfigError(
            f"{run} holds no record.json; give a run folder (results/runs/<task>/<method>/<run-id>)"
        )
    rec = Record.load(record_path(run))
    if rec.status != "ok":
        raise ConfigError(f"run {rec.run_id} {rec.status}; export a finished run")
    weights = run / MODEL_FILE
    if not weights.is_file():
        raise ConfigError(
            f"run {rec.run_id} kept no weights ({MODEL_FILE}); train it again with --set checkpoint=true"
        )
    keep = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig.from_dict({k: v for k, v in rec.config.items() if k in keep})
    family, method = tasks.get(cfg.family), registry.get(cfg.method)
    model_cfg = rec.config["model_resolved"]
    data = datamodule = None
    if method.needs or check:  # word counts for the method, a real batch for the check
        data = family.load_data(cfg.dataset, cfg.data_dir, cfg.train)
        datamodule = family.datamodule(data, cfg.train)
    ctx = method_context(cfg, family, data, datamodule) if method.needs else None

    model = family.build_model(model_cfg)
    api.apply(model, cfg.method, cfg.method_config, ctx or api.DataContext())
    model.load_state_dict(torch.load(weights, weights_only=True))
    done = api.Compressed(model, cfg.method, cfg.method_config, finalized=True)
    folder = Path(out) if out is not None else run
    make_dir(folder, "export folder (--out)")
    path = folder / f"{rec.task}-{rec.method}-{rec.run_id}.safetensors"
    info = {"run_id": rec.run_id, **done.export(path), "record_cf": rec.accounting.get("cf")}
    if check:
        again = api.load(
            path, family.build_model(model_cfg), **({"row_frequencies": ctx.row_frequencies} if ctx else {})
        )
        datamodule.setup("validate")
        batch = next(iter(datamodule.val_dataloader()))
        task_a, task_b = (family.task(m, cfg.train, lambda e: 0.0) for m in (model, again.model))
        with task_a.evaluating(), task_b.evaluating():
            a, b = task_a(*task_a.inputs(batch)), task_b(*task_b.inputs(batch))
        first = lambda x: x[0] if isinstance(x, (tuple, list)) else x  # noqa: E731 (logits before any state)
        info["max_abs_error"] = float((first(a) - first(b)).abs().max())
    return info
