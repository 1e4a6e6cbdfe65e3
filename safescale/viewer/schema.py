"""The shape of the metrics the viewer page reads, and its JSON schema.

The viewer's index payload carries the parts of ``metrics.json`` the overview shows
(:class:`ViewerMetrics`, built from the typed sections of
:class:`~safescale.rundir.MetricsReport`). Its JSON schema is committed beside the page
as ``assets/metrics.schema.json``, so that what ``viewer.js`` reads can be checked
against it; regenerate it after changing a section model::

    python -m safescale.viewer.schema          # write assets/metrics.schema.json
    python -m safescale.viewer.schema --check  # exit 1 when the file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from safescale.rundir import (
    AttributionRow,
    Cell,
    Comparison,
    DistractorRow,
    MetricsReport,
    MetricsSettings,
    ScalingSection,
    Section,
    TriageReportRecord,
    ValidityRow,
)

__all__ = ["SCHEMA_FILE", "ViewerMetrics", "main", "metrics_schema", "schema_text"]

#: The committed schema of :class:`ViewerMetrics`.
SCHEMA_FILE = Path(__file__).resolve().parent / "assets" / "metrics.schema.json"


class ViewerMetrics(Section):
    """``index.metrics`` of the viewer payload: the ``metrics.json`` sections the
    overview shows, as stored (``validity`` is None for a file without the section,
    ``scaling`` None when it is absent or empty)."""

    definitions: dict[str, Any] = Field(default_factory=dict)
    settings: MetricsSettings = Field(default_factory=MetricsSettings)
    cells: list[Cell] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
    attribution: list[AttributionRow] = Field(default_factory=list)
    distractors: list[DistractorRow] = Field(default_factory=list)
    validity: list[ValidityRow] | None = None
    triage: list[TriageReportRecord] | None = None
    scaling: ScalingSection | None = None

    @classmethod
    def of(cls, report: MetricsReport) -> ViewerMetrics:
        """The viewer's part of a metrics report."""
        stored = report.model_fields_set
        return cls(
            definitions=report.definitions,
            settings=report.settings,
            cells=report.cells,
            comparisons=report.comparisons,
            attribution=report.attribution,
            distractors=report.distractors,
            validity=report.validity if "validity" in stored else None,
            triage=report.triage,
            scaling=report.scaling if report.scaling.model_fields_set else None,
        )


def metrics_schema() -> dict[str, Any]:
    """The JSON schema of :class:`ViewerMetrics` (stored key names)."""
    return ViewerMetrics.model_json_schema(by_alias=True)


def schema_text() -> str:
    """:func:`metrics_schema` as the committed file holds it."""
    return json.dumps(metrics_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check``, compare) ``assets/metrics.schema.json``."""
    parser = argparse.ArgumentParser(prog="python -m safescale.viewer.schema")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the committed schema is stale"
    )
    args = parser.parse_args(argv)
    text = schema_text()
    if args.check:
        current = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.is_file() else ""
        if current != text:
            print(f"{SCHEMA_FILE} is stale: run python -m safescale.viewer.schema", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(SCHEMA_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
