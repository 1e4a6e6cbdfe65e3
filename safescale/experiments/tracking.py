"""Logging a finished run to an experiment tracker (MLflow).

With ``tracking: {mlflow: {uri: ..., experiment: ...}}`` in the config, ``safescale run``
logs the run once its report is written (and ``safescale export mlflow RUN_DIR`` logs
any run directory, e.g. to another URI). What is logged, all read from the run
directory (no model is loaded):

* **params**: the resolved config, flattened to dotted keys (``retrieval.k``, ...);
* **tags**: ``safescale.run`` (run name), ``safescale.config_hash``,
  ``safescale.run_dir``, ``safescale.version``, and ``safescale.not_labeled`` listing
  the rates an unlabeled item set cannot have;
* **metrics**: every rate of every cell as ``<metric>/<model>/<corpus>/<condition>/x<budget>``
  (``/dose<d>`` added when the run swept conflict doses), with ``<key>_lo`` /
  ``<key>_hi`` for its 95 % interval and ``n/<model>/<corpus>/<condition>/x<budget>``;
  a rate that is "not labeled" is not logged (rather than as 0);
* **artifacts**: ``report.md``, ``metrics.json``, ``config.yaml``, ``manifest.json``,
  ``conditions.csv``, ``comparisons.csv`` and ``plots/*.png``.

One MLflow run per safescale run: it is found again by its ``safescale.run_key`` tag
(run name + config hash), so logging a resumed or re-reported run updates the same
MLflow run instead of adding another. MLflow's plain-directory ("file") store refuses
to open since MLflow 3.7 unless ``MLFLOW_ALLOW_FILE_STORE=true``; a ``file:`` URI named in
the config is taken as that permission (for this process).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from safescale.rundir import CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, RunDir, RunDirError
from safescale.statistics.metrics import RATE_METRICS, read_metrics

__all__ = ["TrackingError", "flatten_params", "log_to_mlflow", "metric_entries", "track_run"]

_ARTIFACTS = (
    "report.md",
    METRICS_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    "conditions.csv",
    "comparisons.csv",
)
_KEY = re.compile(r"[^A-Za-z0-9_./ -]+")


class TrackingError(RuntimeError):
    """The tracker is not installed or refused the run (message names the URI)."""


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"a.b": "value"}`` strings (lists as JSON-ish text)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            text = "" if value is None else str(value)
            out[name] = text[:500]
    return out


def _key(*parts: Any) -> str:
    return "/".join(_KEY.sub("-", str(p)) for p in parts)


def metric_entries(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(key, value) of every cell rate with its interval bounds and n (see the module
    docs); rates without a value (undefined or not labeled) are left out."""
    several_doses = len(metrics["run"].get("conflict_doses") or [0]) > 1
    for cell in metrics.get("cells", []):
        where = [cell["model"], cell["corpus"], cell["condition"], f"x{cell['samples_budget']}"]
        if several_doses:
            where.append(f"dose{cell.get('conflict_dose', 0)}")
        yield _key("n", *where), float(cell["n"])
        for name in (*RATE_METRICS, "latency_ms"):
            estimate = cell["metrics"].get(name) or {}
            if estimate.get("value") is None:
                continue
            key = _key(name, *where)
            yield key, float(estimate["value"])
            for bound in ("lo", "hi"):
                if estimate.get(bound) is not None:
                    yield f"{key}_{bound}", float(estimate[bound])


def _not_labeled(metrics: Mapping[str, Any]) -> str:
    names = []
    for corpus, labels in sorted((metrics.get("labels") or {}).items()):
        missing = [k for k in ("high_risk", "unsafe") if labels.get(k) == "unlabeled"]
        if missing:
            names.append(f"{corpus}: {', '.join(missing)}")
    return "; ".join(names)


def _mlflow_client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError(
            "tracking.mlflow needs MLflow: pip install 'safescale[tracking]'"
        ) from None
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def log_to_mlflow(run_dir: str | Path, uri: str, experiment: str | None = None) -> str:
    """Log a run directory's config, metrics, plots and report to MLflow.

    The run's report must exist (``safescale report RUN_DIR`` writes it).

    Returns:
        The MLflow run id (the same one when the run was logged before).

    Raises:
        RunDirError: the run directory has no metrics.json (no report yet).
        TrackingError: MLflow is not installed or refused the run.
    """
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise RunDirError(f"{run_dir / METRICS_FILE}: missing; write the report first")
    metrics = read_metrics(run_dir)
    reader = RunDir(run_dir)
    config = reader.config_data()
    name = str(config.get("name") or run_dir.name)
    config_hash = reader.manifest().config_hash
    run_key = f"{name}-{config_hash[:16]}"
    client = _mlflow_client(uri)
    try:
        found = client.get_experiment_by_name(experiment or name)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(experiment or name)
        )
        runs = client.search_runs(
            [experiment_id], filter_string=f"tags.`safescale.run_key` = '{run_key}'"
        )
        if runs:
            run_id = runs[0].info.run_id
        else:
            run_id = client.create_run(experiment_id, run_name=name).info.run_id
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "safescale.run_key": run_key,
            "safescale.run": name,
            "safescale.config_hash": config_hash,
            "safescale.run_dir": str(run_dir.resolve()),
            "safescale.version": importlib.metadata.version("safescale"),
            "safescale.not_labeled": _not_labeled(metrics) or "none",
        }
        logged = {p for p in (client.get_run(run_id).data.params or {})}
        params = {
            k: v for k, v in flatten_params(config).items() if k not in logged and k != "output_dir"
        }
        entries = list(metric_entries(metrics))
        timestamp = int(os.path.getmtime(run_dir / METRICS_FILE) * 1000)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        items = list(params.items())
        for start in range(0, len(items), 100):
            batch = [Param(k, v) for k, v in items[start : start + 100]]
            client.log_batch(run_id, params=batch)
        for start in range(0, len(entries), 1000):
            batch = [Metric(k, v, timestamp, 0) for k, v in entries[start : start + 1000]]
            client.log_batch(run_id, metrics=batch)
        for file in _ARTIFACTS:
            if (run_dir / file).is_file():
                client.log_artifact(run_id, str(run_dir / file))
        if (run_dir / "plots").is_dir() and any((run_dir / "plots").glob("*.png")):
            for plot in sorted((run_dir / "plots").glob("*.png")):
                client.log_artifact(run_id, str(plot), artifact_path="plots")
        client.set_terminated(run_id)
    except TrackingError:
        raise
    except Exception as error:  # MLflow's own errors (bad URI, refused store, ...)
        if type(error).__module__.startswith("mlflow"):
            raise TrackingError(f"{uri}: MLflow refused the run: {error}") from None
        raise
    return run_id


def track_run(run_dir: str | Path) -> list[str]:
    """Log a run to the trackers named in its ``config.yaml`` ``tracking`` section.

    Returns:
        One line per tracker, saying where the run went (empty without trackers).
    """
    from safescale.experiments.config import TrackingConfig

    run_dir = Path(run_dir)
    config = RunDir(run_dir).config_data()
    tracking = TrackingConfig.model_validate(config.get("tracking") or {})
    lines = []
    if tracking.mlflow is not None:
        uri = tracking.mlflow.uri
        run_id = log_to_mlflow(run_dir, uri, tracking.mlflow.experiment)
        lines.append(f"mlflow: run {run_id} at {uri}")
    return lines
