"""The run directory's file names and its errors.

A run directory holds ``manifest.json``, ``config.yaml``, ``responses.jsonl``,
``steps.jsonl`` and optionally ``attribution.jsonl``, ``replays.jsonl``,
``reliance.jsonl``, ``metrics.json`` and ``detection/`` (see DESIGN.md,
"Experiments"). Every module names these files through the constants here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ATTRIBUTION_FILE",
    "CONFIG_FILE",
    "DETECTION_DIR",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "RELIANCE_FILE",
    "REPLAYS_FILE",
    "RESPONSES_FILE",
    "STEPS_FILE",
    "TRIAGE_FILE",
    "RunDirError",
    "RunLockedError",
]

MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.yaml"
RESPONSES_FILE = "responses.jsonl"
STEPS_FILE = "steps.jsonl"
ATTRIBUTION_FILE = "attribution.jsonl"
REPLAYS_FILE = "replays.jsonl"
RELIANCE_FILE = "reliance.jsonl"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
DETECTION_DIR = "detection"
TRIAGE_FILE = Path(DETECTION_DIR) / "triage.json"


class RunDirError(ValueError):
    """A run directory is missing a file or holds a corrupt record (message names it
    as ``file[:line]: field: message``)."""


class RunLockedError(RunDirError):
    """Another process is writing the run directory."""
