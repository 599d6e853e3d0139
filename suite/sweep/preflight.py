"""What every trial of a sweep would hit is found before its study is created: a results folder or storage that
cannot be written, data that is missing or too short for the batches, a method that cannot build at any of the
settings validation tries. Such a sweep is refused with one error and writes nothing; what fails only at some
settings (a CF one method cannot reach) fails those trials alone, each with its reason."""

from __future__ import annotations

import json
from dataclasses import asdict

from ..errors import ConfigError, DataError
from ..files import check_dir, check_file
from ..train import check
from . import storage as st
from .spec import SweepSpec


def preflight(spec: SweepSpec, where: str) -> None:
    """Raise the error every trial of ``spec`` would hit, if there is one; creates nothing."""
    results = spec.set.get("results_dir", "results")
    check_dir(results, "results folder")
    if not st.is_url(where):
        check_file(where, "study journal")
    loaded: dict[str, object] = {}
    for method, configs in spec.tried_runs().items():
        errors: list[ConfigError] = []
        for cfg in configs:
            key = json.dumps([cfg.family, cfg.dataset, cfg.data_dir, asdict(cfg.train)], default=str)
            try:
                loaded[key] = check(cfg, loaded.get(key))
                break
            except DataError as e:
                raise DataError(f"{spec.path}: {e}") from None
            except ConfigError as e:
                errors.append(e)
        else:
            raise ConfigError(f"{spec.path}: no run of {method} can start ({errors[0]})")
