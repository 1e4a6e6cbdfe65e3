"""Running a study: configs, the resumable sweep runner (in process or on Ray), answer
calibration, reliance, replay and tracking. The metrics (:mod:`safescale.statistics`) and
the report (:mod:`safescale.presentation`) are re-exported here.

Importing this package is light; the runner (which needs the models) is imported
on use::

    from safescale.experiments import load_config, run_experiment, write_report
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safescale.presentation.report import write_report
from safescale.rundir import RunDirError, load_run
from safescale.statistics.bootstrap import BootstrapConfig, Estimate
from safescale.statistics.metrics import (
    METRIC_DEFINITIONS,
    METRICS,
    MetricsConfig,
    compute_metrics,
    read_metrics,
    write_metrics,
)

if TYPE_CHECKING:
    from safescale.experiments.config import ConfigError, ExperimentConfig, load_config
    from safescale.experiments.runner import (
        RunConflictError,
        RunSummary,
        run_detection_stage,
        run_experiment,
    )

__all__ = [
    "METRICS",
    "METRIC_DEFINITIONS",
    "BootstrapConfig",
    "ConfigError",
    "Estimate",
    "ExperimentConfig",
    "MetricsConfig",
    "RunConflictError",
    "RunDirError",
    "RunSummary",
    "compute_metrics",
    "load_config",
    "load_run",
    "read_metrics",
    "run_detection_stage",
    "run_experiment",
    "write_metrics",
    "write_report",
]

_LAZY = {
    "ConfigError": "safescale.experiments.config",
    "ExperimentConfig": "safescale.experiments.config",
    "load_config": "safescale.experiments.config",
    "RunConflictError": "safescale.experiments.runner",
    "RunSummary": "safescale.experiments.runner",
    "run_detection_stage": "safescale.experiments.runner",
    "run_experiment": "safescale.experiments.runner",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'safescale.experiments' has no attribute {name!r}")
