"""What every trial of a sweep would hit is found before its study is created: a results folder or storage that
cannot be written, data that is missing or too short for the batches, settings with which no method can build.
Such a sweep is refused with one error and writes nothing. A method that cannot start at any of the settings
validation tries (say ``methods: all`` picks one that applies only to other matrices) gets a note, and its
trials fail, each with that reason, while the others run."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from ..errors import ConfigError, DataError, SuiteError
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
    stuck: dict[str, SuiteError] = {}
    for method, configs in spec.tried_runs().items():
        errors: list[SuiteError] = []
        for cfg in configs:
            key = json.dumps([cfg.family, cfg.dataset, cfg.data_dir, asdict(cfg.train)], default=str)
            try:
                loaded[key] = check(cfg, loaded.get(key))
                break
            except (ConfigError, DataError) as e:
                errors.append(e)
        else:  # no tried setting of this method can start
            stuck[method] = errors[0]
    if len(stuck) == len(spec.methods):
        first = stuck[spec.methods[0]]
        raise type(first)(f"{spec.path}: {first}")
    for method, e in stuck.items():
        print(
            f"note: {spec.path}: no run of {method} can start at the settings tried ({e}); its trials will "
            "fail with this reason",
            file=sys.stderr,
        )
