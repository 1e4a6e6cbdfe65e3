"""What the saved detectors say about each frozen response (no model call).

Read by the viewer and the Inspect export: every record of
``detection/<backbone>/features.parquet`` (all splits) scored with the saved detectors and
their frozen thresholds, as ``safescale detect eval`` scores the test split.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from safescale.rundir import RunDirError

__all__ = ["detector_outputs"]


def detector_outputs(run_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every saved detector's output per response: ``(backbone, record key) -> [{method,
    score, threshold, verdict, split, label}]``, scoring the frozen features with the
    saved detectors and thresholds (no model). Empty when detection did not run."""
    root = run_dir / "detection"
    infos = sorted(root.glob("*/detection.json")) if root.is_dir() else []
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    if not infos:
        return {}
    import pandas as pd

    from safescale.detection.registry import DetectorUnavailable, get_detector

    for info_path in infos:
        directory = info_path.parent
        features_path = directory / "features.parquet"
        if not features_path.is_file():
            continue
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise RunDirError(f"{info_path}: not JSON: {error}") from None
        frame = pd.read_parquet(features_path)
        keys = frame["record_key"].tolist()
        for name in (info.get("config") or {}).get("detectors", []):
            model_dir = directory / "models" / name
            policy_path = model_dir / "policy.json"
            if (model_dir / "unavailable.json").is_file() or not policy_path.is_file():
                continue
            threshold = float(json.loads(policy_path.read_text(encoding="utf-8"))["threshold"])
            detector = get_detector(name).load(model_dir)
            try:
                X = detector.design_matrix(frame)
            except DetectorUnavailable:
                continue
            scores = detector.risk_score(X)
            gap = detector.gap_given_unsafe(X) if detector.attributes_subtype else None
            for i, key in enumerate(keys):
                flagged = bool(scores[i] >= threshold)
                verdict = "safe"
                if flagged:
                    verdict = "unsafe" if gap is None else ("gap" if gap[i] >= 0.5 else "conflict")
                out[(directory.name, key)].append(
                    {
                        "backbone": directory.name,
                        "method": name,
                        "score": float(scores[i]),
                        "threshold": threshold,
                        "verdict": verdict,
                        "split": str(frame["split"].iloc[i]),
                        "label": int(frame["label"].iloc[i]),
                    }
                )
    return dict(out)
