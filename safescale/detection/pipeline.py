"""Detection on a run's frozen responses: features → detectors → triage table.

:func:`run_detection` is the entry point of the experiments layer and the CLI. For
one backbone it

1. selects the model's frozen :class:`~safescale.agents.records.ResponseRecord` s,
   labels them (:mod:`.labels`) and splits them train / validation / test grouped by the
   item's ``evidence_id`` (:func:`safescale.corpora.split.grouped_split`, stratified by
   task), so no evidence group crosses splits;
2. extracts features once per record (:mod:`.extraction`; cached) and writes
   ``features.parquet``;
3. fits every requested detector on train, picks its threshold on validation to reach
   the target unsafe-recall (:func:`.thresholds.pick_threshold`) and freezes it; models
   are saved as JSON (XGBoost JSON for the triage heads) under ``models/<detector>/``;
4. evaluates once on test (:func:`evaluate_detection`, which reads only the written
   artifacts and never calls the model) and writes ``triage.json`` / ``triage.md``;
5. writes the evidence-calibrated softmax report ``calibration.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from safescale.corpora.corpus import Corpus
from safescale.corpora.split import grouped_split
from safescale.detection.calibration import CalibrationReport, GradeWeights, calibration_report
from safescale.detection.extraction import (
    DetectionInputStore,
    ExtractionPlan,
    FeatureCache,
    extract_features,
)
from safescale.detection.labels import triage_classes
from safescale.detection.metrics import Stage1Metrics, Stage2Metrics, stage1_metrics, stage2_metrics
from safescale.detection.registry import (
    SAFE,
    DetectorUnavailable,
    available_detectors,
    get_detector,
)
from safescale.detection.thresholds import pick_threshold
from safescale.records import ResponseRecord, TriageReportRecord

if TYPE_CHECKING:
    from safescale.models.backend import LanguageModel

__all__ = [
    "DEFAULT_DETECTORS",
    "DetectionConfig",
    "TriageReport",
    "TriageRow",
    "comparison_table",
    "evaluate_detection",
    "label_and_split",
    "run_detection",
    "write_combined",
]

DEFAULT_DETECTORS = (
    "ecrt",
    "ecrt_1stage",
    "hidden_probe",
    "lookback_lens",
    "perplexity",
    "msp_seq",
    "msp_step",
    "mte",
    "ln_entropy",
    "ptrue",
    "eigenscore",
    "selfcheck",
    "pmi",
    "length",
    "focus",
    "redeep",
    "refchecker",
    "uq_heads",
)
SPLITS = ("train", "val", "test")


class DetectionConfig(BaseModel):
    """Settings of one detection run (``extra="forbid"``: a typo names the key).

    Attributes:
        detectors: registered detector names to train and evaluate.
        target_recall: unsafe-recall the validation threshold must reach.
        seed: split seed (also the classifiers' ``random_state``).
        split_fractions: train / validation / test shares (grouped by evidence_id).
        label_source: ``"task"`` (RETINA-SAFE protocol) or ``"outcome"`` (see labels).
        conditions: keep only these conditions (None: all).
        n_estimators: trees per XGBoost triage head.
        probe_layer_fraction: depth of the hidden-state probe layer.
        grade_weights: evidence-calibrated softmax weights.
        cache_dir: feature cache (None: ``out_dir/cache``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    target_recall: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 13
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    label_source: Literal["task", "outcome"] = "task"
    conditions: tuple[str, ...] | None = None
    n_estimators: int = Field(160, ge=1)
    probe_layer_fraction: float = Field(0.75, ge=0.0, le=1.0)
    grade_weights: GradeWeights = Field(default_factory=GradeWeights)
    cache_dir: Path | None = None

    @field_validator("detectors")
    @classmethod
    def _known(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in available_detectors()]
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; available: {available_detectors()}")
        if not names:
            raise ValueError("at least one detector is needed")
        return names


class TriageRow(BaseModel):
    """One detector's test-split result (or why it could not run)."""

    model_config = ConfigDict(extra="forbid")

    method: str
    status: Literal["ok", "unavailable"]
    reason: str | None = None
    threshold: float | None = None
    val_recall: float | None = None
    stage1: Stage1Metrics | None = None
    stage2: Stage2Metrics | None = None
    delta_ba_vs_ecrt: float | None = None


class TriageReport(TriageReportRecord):
    """Triage results of one backbone on one run's frozen responses: the stored
    :class:`~safescale.records.TriageReportRecord` with typed rows and calibration."""

    rows: list[TriageRow]  # type: ignore[assignment]
    calibration: CalibrationReport | None = None  # type: ignore[assignment]

    def row(self, method: str) -> TriageRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(f"no detector {method!r} in the report")

    def to_markdown(self) -> str:
        """The per-backbone triage table (Stage 1 and Stage 2) as markdown."""
        head = (
            f"### Triage — {self.backbone} (labels: {self.label_source}, target recall "
            f"{self.target_recall:.2f}, n = {self.n_records}: "
            + ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
            + ")\n\n"
            "| method | U-recall | flag rate | S1 BA | AUROC | ΔBA vs ECRT | gap recall "
            "| contra. recall | S2 BA |\n|---|---|---|---|---|---|---|---|---|\n"
        )
        lines = []
        for r in self.rows:
            if r.status != "ok" or r.stage1 is None:
                lines.append(f"| {r.method} | unavailable: {r.reason} |||||||| ")
                continue
            s1, s2 = r.stage1, r.stage2
            lines.append(
                f"| {r.method} | {_f(s1.u_recall)} | {_f(s1.flag_rate)} | {_f(s1.s1_ba)} | "
                f"{_f(s1.auroc)} | {_f(r.delta_ba_vs_ecrt, signed=True)} | "
                f"{_f(s2.gap_recall) if s2 else '–'} | "
                f"{_f(s2.contradiction_recall) if s2 else '–'} | {_f(s2.s2_ba) if s2 else '–'} |"
            )
        text = head + "\n".join(lines) + "\n"
        if self.calibration is not None:
            c = self.calibration
            text += (
                "\nEvidence-calibrated softmax "
                f"(n = {c.n}, accuracy {c.accuracy:.3f}, {c.n_bins} ECE bins):\n\n"
                "| | ECE | Brier | dangerous overconfidence | mean confidence |\n"
                "|---|---|---|---|---|\n"
                f"| before | {c.before.ece:.4f} | {c.before.brier:.4f} | "
                f"{c.before.dangerous_overconfidence:.4f} | {c.before.mean_confidence:.4f} |\n"
                f"| after | {c.after.ece:.4f} | {c.after.brier:.4f} | "
                f"{c.after.dangerous_overconfidence:.4f} | {c.after.mean_confidence:.4f} |\n"
            )
        return text


def _f(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def comparison_table(reports: Sequence[TriageReport]) -> str:
    """Method × backbone table in the form of the ECRT paper's Table 5.

    Columns per backbone: U-recall (Rec.), flag rate (F.R.), Stage-1 BA and the BA
    difference to ECRT on that backbone.
    """
    methods: list[str] = []
    for rep in reports:
        for r in rep.rows:
            if r.method not in methods:
                methods.append(r.method)
    header = "| Method | " + " | ".join(
        f"{rep.backbone}{f' ({rep.corpus})' if rep.corpus else ''} Rec. | F.R. | S1 BA | ΔBA"
        for rep in reports
    )
    sep = "|---|" + "---|---|---|---|" * len(reports)
    lines = [header + " |", sep]
    for method in methods:
        cells = []
        for rep in reports:
            try:
                r = rep.row(method)
            except KeyError:
                cells.append("– | – | – | –")
                continue
            if r.stage1 is None:
                cells.append("n/a | n/a | n/a | n/a")
                continue
            delta = "–" if method == "ecrt" else _f(r.delta_ba_vs_ecrt, signed=True)
            s1 = r.stage1
            cells.append(f"{_f(s1.u_recall)} | {_f(s1.flag_rate)} | {_f(s1.s1_ba)} | {delta}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- running


def _select(
    responses: Sequence[ResponseRecord], model_name: str, conditions: Sequence[str] | None
) -> list[ResponseRecord]:
    selected = [
        r
        for r in responses
        if r.model == model_name and (conditions is None or r.condition in conditions)
    ]
    if not selected:
        present = sorted({(r.model, r.condition) for r in responses})
        raise ValueError(
            f"no responses of model {model_name!r}"
            + (f" under conditions {list(conditions)}" if conditions else "")
            + f"; the run has (model, condition) pairs {present}"
        )
    return selected


def label_and_split(
    records: Sequence[ResponseRecord], corpus: Corpus, config: DetectionConfig
) -> pd.DataFrame:
    """Identity, label and split columns per record (split grouped by evidence_id)."""
    items = [corpus.item(r.item) for r in records]
    unique = list({item.id: item for item in items}.values())
    split = grouped_split(unique, fractions=config.split_fractions, seed=config.seed)
    split_of = {item_id: name for name, ids in split.as_dict().items() for item_id in ids}
    classes = triage_classes(records, corpus, config.label_source)
    return pd.DataFrame(
        {
            "item": [r.item for r in records],
            "evidence_id": [item.evidence_id for item in items],
            "task": [None if item.task is None else str(item.task) for item in items],
            "label": classes,
            "unsafe": classes != SAFE,
            "split": [split_of[item.id] for item in items],
        }
    )


def run_detection(
    responses: Sequence[ResponseRecord],
    corpus: Corpus,
    lm: LanguageModel | Callable[[], LanguageModel],
    config: DetectionConfig,
    out_dir: Path,
    *,
    model_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    stored: DetectionInputStore | None = None,
    model_hash: str | None = None,
    idf: np.ndarray | Callable[[LanguageModel], np.ndarray] | None = None,
) -> TriageReport:
    """Extract features, train every detector, evaluate once on test; write artifacts.

    Args:
        responses: frozen records (others' models are ignored; ``config.conditions``
            filters conditions).
        corpus: the corpus the items come from (labels, evidence groups, grades).
        lm: the backbone the responses came from (``lm.name`` selects records), or a
            function that loads it (then ``model_name`` and ``model_hash`` are needed;
            it is called only for responses without ``stored`` inputs).
        config: detection settings.
        out_dir: receives ``features.parquet``, ``models/``, ``detection.json``,
            ``triage.json``, ``triage.md`` and ``calibration.json``.
        model_name: the records' ``model`` field to select (default ``lm.name``); also
            the backbone name in the report.
        progress: called with (done, total) after each record's features.
        stored: detection inputs recorded by the answer step.
        model_hash: the model's hash (default ``lm.model_hash``).
        idf: Focus's IDF table over the run's evidence corpora (or a function making
            it from the model; default: over ``corpus``), used for records whose inputs
            are computed here.

    Returns:
        The test-split triage report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = model_name or lm.name
    model_hash = model_hash or lm.model_hash
    records = _select(responses, backbone, config.conditions)
    meta = label_and_split(records, corpus, config)
    for name in SPLITS:
        if not (meta["split"] == name).any():
            raise ValueError(f"the {name} split is empty; need more evidence groups")
    plan = ExtractionPlan.for_detectors(config.detectors, config.probe_layer_fraction)
    cache = FeatureCache(config.cache_dir or out_dir / "cache")
    if idf is None:
        idf = partial(_corpus_idf, corpora=[corpus])
    features = extract_features(
        records,
        lm,
        plan,
        cache=cache,
        progress=progress,
        stored=stored,
        model_hash=model_hash,
        idf=idf,
    )
    frame = pd.concat([meta, features.drop(columns=["item"])], axis=1)
    frame.to_parquet(out_dir / "features.parquet", index=False)
    (out_dir / "detection.json").write_text(
        json.dumps(
            {
                "backbone": backbone,
                "model_hash": model_hash,
                "corpus": corpus.name,
                "corpus_hash": corpus.content_hash,
                "config": config.model_dump(mode="json"),
                "cache": {"hits": cache.hits, "misses": cache.misses},
            },
            indent=2,
        )
    )
    train_detectors(frame, config, out_dir / "models")
    calibration = calibration_report(records, corpus, config.grade_weights)
    (out_dir / "calibration.json").write_text(calibration.model_dump_json(indent=2))
    return evaluate_detection(out_dir)


def _corpus_idf(lm: LanguageModel, corpora: Sequence[Corpus]) -> np.ndarray:
    from safescale.detection.extraction import token_idf

    return token_idf(lm, corpora)


def train_detectors(frame: pd.DataFrame, config: DetectionConfig, models_dir: Path) -> None:
    """Fit each detector on train, freeze its validation threshold, save it as JSON."""
    train = frame[frame["split"] == "train"]
    val = frame[frame["split"] == "val"]
    for name in config.detectors:
        directory = Path(models_dir) / name
        directory.mkdir(parents=True, exist_ok=True)
        for stale in ("unavailable.json", "policy.json"):
            (directory / stale).unlink(missing_ok=True)
        cls = get_detector(name)
        params = {}
        if "random_state" in cls().get_params():
            params["random_state"] = config.seed
        if "n_estimators" in cls().get_params():
            params["n_estimators"] = config.n_estimators
        det = cls(**params)
        try:
            X_train = det.design_matrix(train)
            X_val = det.design_matrix(val)
            det.fit(X_train, train["label"].to_numpy())
            val_scores = det.risk_score(X_val)
            threshold = pick_threshold(val_scores, val["unsafe"].to_numpy(), config.target_recall)
        except (DetectorUnavailable, ValueError) as error:
            (directory / "unavailable.json").write_text(json.dumps({"reason": str(error)}))
            continue
        det.save(directory)
        flagged = val_scores >= threshold
        (directory / "policy.json").write_text(
            json.dumps(
                {
                    "threshold": threshold,
                    "target_recall": config.target_recall,
                    "val_recall": float(flagged[val["unsafe"].to_numpy()].mean()),
                    "val_flag_rate": float(flagged.mean()),
                },
                indent=2,
            )
        )


def evaluate_detection(out_dir: Path) -> TriageReport:
    """Score the frozen test split with the saved detectors and thresholds.

    Reads ``detection.json``, ``features.parquet`` and ``models/`` (and
    ``calibration.json`` when present); never calls a model. Writes ``triage.json``
    and ``triage.md``.
    """
    out_dir = Path(out_dir)
    info = json.loads((out_dir / "detection.json").read_text())
    config = DetectionConfig.model_validate(info["config"])
    frame = pd.read_parquet(out_dir / "features.parquet")
    test = frame[frame["split"] == "test"]
    labels = test["label"].to_numpy()
    rows: list[TriageRow] = []
    for name in config.detectors:
        directory = out_dir / "models" / name
        if (directory / "unavailable.json").is_file():
            reason = json.loads((directory / "unavailable.json").read_text())["reason"]
            rows.append(TriageRow(method=name, status="unavailable", reason=reason))
            continue
        if not (directory / "policy.json").is_file():
            rows.append(TriageRow(method=name, status="unavailable", reason="not trained"))
            continue
        policy = json.loads((directory / "policy.json").read_text())
        det = get_detector(name).load(directory)
        try:
            X = det.design_matrix(test)
        except DetectorUnavailable as error:
            rows.append(TriageRow(method=name, status="unavailable", reason=str(error)))
            continue
        scores = det.risk_score(X)
        s1 = stage1_metrics(scores, labels != SAFE, policy["threshold"])
        s2 = None
        if det.attributes_subtype:
            s2 = stage2_metrics(labels, det.gap_given_unsafe(X) >= 0.5)
        rows.append(
            TriageRow(
                method=name,
                status="ok",
                threshold=policy["threshold"],
                val_recall=policy["val_recall"],
                stage1=s1,
                stage2=s2,
            )
        )
    ecrt = next((r for r in rows if r.method == "ecrt" and r.stage1 is not None), None)
    if ecrt is not None:
        for r in rows:
            if r.stage1 is not None:
                r.delta_ba_vs_ecrt = r.stage1.s1_ba - ecrt.stage1.s1_ba
    calibration = None
    if (out_dir / "calibration.json").is_file():
        calibration = CalibrationReport.model_validate_json(
            (out_dir / "calibration.json").read_text()
        )
    names = {0: "safe", 1: "gap", 2: "conflict"}
    report = TriageReport(
        backbone=info["backbone"],
        model_hash=info["model_hash"],
        corpus=info.get("corpus"),
        label_source=config.label_source,
        target_recall=config.target_recall,
        seed=config.seed,
        n_records=len(frame),
        split_sizes={s: int((frame["split"] == s).sum()) for s in SPLITS},
        class_counts={
            s: {
                names[c]: int(((frame["split"] == s) & (frame["label"] == c)).sum())
                for c in (0, 1, 2)
            }
            for s in SPLITS
        },
        rows=rows,
        calibration=calibration,
    )
    (out_dir / "triage.json").write_text(report.model_dump_json(indent=2))
    (out_dir / "triage.md").write_text(report.to_markdown())
    return report


def write_combined(root: Path, reports: Sequence[TriageReport]) -> None:
    """Write ``triage.md`` (comparison + per-report tables) and ``triage.json`` (the
    list of reports) under ``root``."""
    text = "## Triage comparison (test split)\n\n" + comparison_table(reports)
    text += "\n" + "\n".join(r.to_markdown() for r in reports)
    root.mkdir(parents=True, exist_ok=True)
    _atomic_write(root / "triage.md", text)
    _atomic_write(
        root / "triage.json",
        json.dumps([json.loads(r.model_dump_json()) for r in reports], indent=2),
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
