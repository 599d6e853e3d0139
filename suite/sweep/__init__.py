"""Optuna sweeps over methods and their settings: ``suite sweep sweeps/<name>.yaml [--workers N] [--storage URL]``.

spec.py validates a sweep file; runner.py creates or resumes the study and runs its workers; storage.py is where
the study lives and how workers share it; build.py holds the Optuna parts; objectives.py what a trial returns;
launch.py what the command does around the study (a worker's command line, --status, the exit code).
"""

from . import launch
from .runner import export, open_study, run_sweep, status, trials_table, work
from .spec import Objective, Param, SweepSpec, load_spec

__all__ = [
    "Objective",
    "Param",
    "SweepSpec",
    "export",
    "launch",
    "load_spec",
    "open_study",
    "run_sweep",
    "status",
    "trials_table",
    "work",
]
