"""Writing a run directory: the manifest, committed items, and repair on resume.

An item is committed by appending its steps and attribution first and its response
line last (the response line is the commit mark, :func:`commit_item`). A resuming writer
first cuts torn last lines (:func:`~safescale.rundir.io.repair_jsonl`) and then removes
the steps and attributions of items whose response never landed (:func:`drop_orphans`).
Every writer holds the run's :class:`~safescale.rundir.lock.RunLock`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from safescale.rundir.io import append_lines, atomic_write_text, read_jsonl, repair_jsonl
from safescale.rundir.layout import (
    ATTRIBUTION_FILE,
    MANIFEST_FILE,
    RESPONSES_FILE,
    STEPS_FILE,
)
from safescale.rundir.reader import with_legacy_axes
from safescale.rundir.records import DEFAULT_RETRIEVAL_K, ResponseKey, RunManifest

__all__ = ["commit_item", "drop_orphans", "repair_run_files", "write_manifest"]


def write_manifest(run_dir: str | Path, manifest: RunManifest) -> None:
    """Write ``manifest.json`` atomically."""
    atomic_write_text(Path(run_dir) / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")


def commit_item(
    run_dir: str | Path, steps: Iterable[str], attribution: str | None, response: str
) -> None:
    """Append one item's serialised records: its steps and attribution first, the
    response line last (the commit mark: an item without it is redone on resume)."""
    run_dir = Path(run_dir)
    append_lines(run_dir / STEPS_FILE, steps)
    if attribution is not None:
        append_lines(run_dir / ATTRIBUTION_FILE, [attribution])
    append_lines(run_dir / RESPONSES_FILE, [response])


def repair_run_files(run_dir: str | Path) -> None:
    """Cut a torn last line off the responses, steps and attribution files."""
    for name in (RESPONSES_FILE, STEPS_FILE, ATTRIBUTION_FILE):
        repair_jsonl(Path(run_dir) / name)


def drop_orphans(
    run_dir: str | Path, done: set[ResponseKey], legacy_axes: Mapping[str, Any] | None = None
) -> None:
    """Remove step/attribution rows of items whose response was never committed
    (``legacy_axes``: what a row without a scale axis ran at, see
    :meth:`~safescale.rundir.reader.RunDir.legacy_axes`)."""
    for name in (STEPS_FILE, ATTRIBUTION_FILE):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        rows = read_jsonl(path).rows
        keep = []
        for row in rows:
            full = with_legacy_axes(row, legacy_axes)
            key = (
                full.get("model"),
                full.get("condition"),
                full.get("item"),
                full.get("samples_budget", 1),
                full.get("conflict_dose", 0),
                full.get("context_budget"),
                full.get("retrieval_k", DEFAULT_RETRIEVAL_K),
            )
            if key in done:
                keep.append(row)
        if len(keep) != len(rows):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
