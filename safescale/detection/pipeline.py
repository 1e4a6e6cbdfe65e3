"""Detection on a run's frozen responses: features → detectors → triage table.

:func:`run_detection` is the entry point of the experiments layer and the CLI. For
one backbone it

1. selects the model's frozen :class:`~safescale.rundir.ResponseRecord` s,
   labels them (:mod:`.labels`) and splits them train / validation / test grouped by the
   item's ``evidence_id`` (:func:`safescale.corpora.split.grouped_split`, stratified by
   task), so no evidence group crosses splits;
2. extracts features once per record (:mod:`.extraction`; cached) and writes
   ``features.parquet``;
3. fits every requested detector on train, picks its threshold on validation to reach
   the target unsafe-recall (:func:`.thresholds.pick_threshold`) and freezes it; models
   are saved as JSON (XGBoost JSON for the triage heads) under ``models/<detector>/``
   (what the viewer and transfer evaluation score with);
4. computes out-of-fold predictions under the config's protocol (:mod:`.evaluation`:
   repeated nested grouped K-fold by default, or the single split), for every detector
   and the two controls (input-only text, ECRT on permuted labels), into
   ``oof.parquet`` / ``oof.json``;
5. evaluates (:func:`evaluate_detection`, which reads only the written artifacts and
   never calls the model): every endpoint with a clustered 95 % interval, paired ΔBA vs
   ECRT and vs the input-only control, the counts and the verdicts in words, into
   ``triage.json`` / ``triage.md``;
6. writes the evidence-calibrated softmax report ``calibration.json``.
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
from safescale.detection.evaluation import OutOfFold, cross_validate, interval_rows
from safescale.detection.labels import triage_classes
from safescale.detection.metrics import Stage1Metrics, Stage2Metrics
from safescale.detection.power import study_power
from safescale.detection.registry import (
    SAFE,
    DetectorUnavailable,
    available_detectors,
    get_detector,
)
from safescale.detection.thresholds import pick_threshold
from safescale.detection.transfer import TransferCell, TransferSet, transfer_matrix
from safescale.detection.triage_report import (
    CONTROL_INPUT,
    CONTROL_PERMUTED,
    TriageReport,
    TriageRow,
    comparison_table,
    report_verdicts,
    row_verdict,
)
from safescale.rundir import (
    DETECTION_DIR,
    ResponseRecord,
    RunDir,
    RunDirError,
    RunLock,
    atomic_write_bytes,
    atomic_write_text,
)

if TYPE_CHECKING:
    from safescale.detection.extraction import DetectionInputStore
    from safescale.models.backend import LanguageModel

__all__ = [
    "DEFAULT_DETECTORS",
    "DetectionConfig",
    "TriageReport",
    "TriageRow",
    "comparison_table",
    "evaluate_detection",
    "evaluate_run_dir",
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
#: The transfer cells whose test set is this directory's (written by the run's detection
#: stage when the run has more than one model x corpus x condition).
TRANSFER_FILE = "transfer.json"


class DetectionConfig(BaseModel):
    """Settings of one detection run (``extra="forbid"``: a typo names the key).

    Attributes:
        detectors: registered detector names to train and evaluate.
        target_recall: unsafe-recall the validation threshold must reach.
        seed: split seed (also the classifiers' ``random_state``).
        split_fractions: train / validation / test shares of ``protocol: split``
            (grouped by evidence_id); the detectors saved under ``models/`` (the viewer's
            verdicts, transfer) are always trained on this split.
        protocol: ``cv`` (repeated nested grouped K-fold: every response tested once per
            repeat) or ``split`` (the paper's single seeded split); see
            :mod:`.evaluation`.
        folds / repeats: K and the number of repeats of ``cv``.
        replicates: cluster-bootstrap replicates of every interval.
        controls: also evaluate the input-only control and the label-permutation
            control (ECRT on shuffled labels).
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
    protocol: Literal["cv", "split"] = "cv"
    folds: int = Field(5, ge=3, le=20)
    repeats: int = Field(5, ge=1, le=50)
    replicates: int = Field(1000, ge=100, le=20000)
    controls: bool = True
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
            "prompt_text": [r.message for r in records],  # the input-only control's input
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
    from safescale.detection.extraction import ExtractionPlan, FeatureCache, extract_features

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
    atomic_write_bytes(out_dir / "features.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    atomic_write_text(
        out_dir / "detection.json",
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
        ),
    )
    train_detectors(frame, config, out_dir / "models")
    write_out_of_fold(frame, config, out_dir)
    calibration = calibration_report(
        records, corpus, config.grade_weights, replicates=config.replicates, seed=config.seed
    )
    atomic_write_text(out_dir / "calibration.json", calibration.model_dump_json(indent=2))
    return evaluate_detection(out_dir)


def _evaluated_methods(config: DetectionConfig) -> list[str]:
    methods = list(config.detectors)
    if config.controls and CONTROL_INPUT not in methods:
        methods.append(CONTROL_INPUT)
    return methods


def permuted_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """The labels of the permutation control: a seeded shuffle over the responses."""
    return np.random.default_rng(seed + 104729).permutation(np.asarray(labels, dtype=int))


def write_out_of_fold(frame: pd.DataFrame, config: DetectionConfig, out_dir: Path) -> None:
    """Out-of-fold predictions of every detector and control under the config's
    protocol: ``oof.parquet`` (method, repeat, row, score, flag, pred_gap of every
    scored response) and ``oof.json`` (per method: thresholds, validation recall, or why
    it could not run; the permuted labels of the permutation control)."""
    common = {
        "protocol": config.protocol,
        "folds": config.folds,
        "repeats": config.repeats,
        "seed": config.seed,
        "target_recall": config.target_recall,
        "n_estimators": config.n_estimators,
        "split_fractions": config.split_fractions,
    }
    results = cross_validate(frame, _evaluated_methods(config), **common)
    permuted = None
    if config.controls and "ecrt" in config.detectors:
        permuted = permuted_labels(frame["label"].to_numpy(), config.seed)
        control = cross_validate(frame, ["ecrt"], labels=permuted, **common)["ecrt"]
        control.method = CONTROL_PERMUTED
        results[CONTROL_PERMUTED] = control
    parts, info = [], {}
    for name, oof in results.items():
        info[name] = {
            "reason": oof.reason,
            "thresholds": oof.thresholds,
            "val_recall": oof.val_recall,
            "subtype": oof.pred_gap is not None,
            "skipped": oof.skipped,
        }
        if not oof.ok:
            continue
        for fold, (r, test, val, val_scores) in enumerate(oof.folds):
            parts.append(
                pd.DataFrame(
                    {
                        "method": name,
                        "repeat": np.int32(r),
                        "fold": np.int32(fold),
                        "part": "test",
                        "row": test.astype(np.int32),
                        "score": oof.scores[r, test],
                        "flag": oof.flags[r, test],
                        "pred_gap": (
                            oof.pred_gap[r, test]
                            if oof.pred_gap is not None
                            else np.zeros(len(test), dtype=bool)
                        ),
                    }
                )
            )
            parts.append(
                pd.DataFrame(
                    {
                        "method": name,
                        "repeat": np.int32(r),
                        "fold": np.int32(fold),
                        "part": "val",
                        "row": val.astype(np.int32),
                        "score": val_scores,
                        "flag": False,
                        "pred_gap": False,
                    }
                )
            )
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    tmp = out_dir / ".oof.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(out_dir / "oof.parquet")
    payload = {
        "n": len(frame),
        "repeats": 1 if config.protocol == "split" else config.repeats,
        "methods": info,
        "permuted_labels": None if permuted is None else permuted.tolist(),
    }
    atomic_write_text(out_dir / "oof.json", json.dumps(payload))


def read_out_of_fold(out_dir: Path) -> tuple[dict[str, OutOfFold], dict]:
    """The predictions :func:`write_out_of_fold` wrote, as :class:`OutOfFold` s."""
    info = json.loads((out_dir / "oof.json").read_text())
    table = pd.read_parquet(out_dir / "oof.parquet")
    R, n = int(info["repeats"]), int(info["n"])
    out: dict[str, OutOfFold] = {}
    for name, meta in info["methods"].items():
        empty = np.zeros((R, n), dtype=bool)
        if meta["reason"] is not None:
            out[name] = OutOfFold(name, empty, np.zeros((R, n)), empty, reason=meta["reason"])
            continue
        part = table[table["method"] == name]
        test = part[part["part"] == "test"]
        r, i = test["repeat"].to_numpy(), test["row"].to_numpy()
        o = OutOfFold(
            name,
            np.zeros((R, n), dtype=bool),
            np.full((R, n), np.nan),
            np.zeros((R, n), dtype=bool),
            np.zeros((R, n), dtype=bool) if meta["subtype"] else None,
            thresholds=list(meta["thresholds"]),
            val_recall=list(meta["val_recall"]),
            skipped=list(meta.get("skipped") or []),
        )
        o.scored[r, i] = True
        o.scores[r, i] = test["score"].to_numpy()
        o.flags[r, i] = test["flag"].to_numpy()
        if o.pred_gap is not None:
            o.pred_gap[r, i] = test["pred_gap"].to_numpy()
        for _fold, rows in part.groupby("fold", sort=True):
            t, v = rows[rows["part"] == "test"], rows[rows["part"] == "val"]
            o.folds.append(
                (
                    int(rows["repeat"].iloc[0]),
                    t["row"].to_numpy(),
                    v["row"].to_numpy(),
                    v["score"].to_numpy(dtype=float),
                )
            )
        out[name] = o
    return out, info


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
            atomic_write_text(directory / "unavailable.json", json.dumps({"reason": str(error)}))
            continue
        det.save(directory)
        flagged = val_scores >= threshold
        atomic_write_text(
            directory / "policy.json",
            json.dumps(
                {
                    "threshold": threshold,
                    "target_recall": config.target_recall,
                    "val_recall": float(flagged[val["unsafe"].to_numpy()].mean()),
                    "val_flag_rate": float(flagged.mean()),
                },
                indent=2,
            ),
        )


def evaluate_detection(out_dir: Path) -> TriageReport:
    """Endpoints with intervals, counts and verdicts from the written artifacts.

    Reads ``detection.json``, ``features.parquet``, ``oof.parquet`` / ``oof.json`` and
    ``models/`` (and ``calibration.json`` when present); never calls a model. Writes
    ``triage.json`` and ``triage.md``.
    """
    out_dir = Path(out_dir)
    info = json.loads((out_dir / "detection.json").read_text())
    config = DetectionConfig.model_validate(info["config"])
    frame = pd.read_parquet(out_dir / "features.parquet")
    oof, oof_info = read_out_of_fold(out_dir)
    labels = frame["label"].to_numpy()
    groups = frame["evidence_id"].to_numpy()
    refs = ("ecrt", CONTROL_INPUT)
    real = {k: v for k, v in oof.items() if k != CONTROL_PERMUTED}
    intervals = interval_rows(
        real,
        labels,
        groups,
        replicates=config.replicates,
        seed=config.seed,
        references=refs,
        target_recall=config.target_recall,
    )
    if CONTROL_PERMUTED in oof:
        shuffled = np.asarray(oof_info["permuted_labels"], dtype=int)
        intervals |= interval_rows(
            {CONTROL_PERMUTED: oof[CONTROL_PERMUTED]},
            shuffled,
            groups,
            replicates=config.replicates,
            seed=config.seed,
            references=(),
            target_recall=config.target_recall,
        )
    scored = next((o.scored.any(0) for o in oof.values() if o.ok), np.zeros(len(frame), bool))
    names = {SAFE: "safe", 1: "gap", 2: "conflict"}
    scored_counts = {names[c]: int((labels[scored] == c).sum()) for c in (0, 1, 2)}
    n_safe = scored_counts["safe"]
    n_unsafe = scored_counts["gap"] + scored_counts["conflict"]
    rows: list[TriageRow] = []
    for name, o in oof.items():
        kind = "control" if name in (CONTROL_INPUT, CONTROL_PERMUTED) else "detector"
        if name == CONTROL_INPUT and CONTROL_INPUT in config.detectors:
            kind = "control"
        if not o.ok:
            rows.append(TriageRow(method=name, kind=kind, status="unavailable", reason=o.reason))
            continue
        iv = intervals[name]
        s1, s2 = iv.stage1, iv.stage2
        row = TriageRow(
            method=name,
            kind=kind,
            status="ok",
            threshold=float(np.mean(o.thresholds)) if o.thresholds else None,
            val_recall=float(np.mean(o.val_recall)) if o.val_recall else None,
            stage1=Stage1Metrics(
                n=int(scored.sum()),
                n_unsafe=n_unsafe,
                u_recall=s1.u_recall.estimate,
                flag_rate=s1.flag_rate.estimate,
                s1_ba=s1.s1_ba.estimate,
                auroc=s1.auroc.estimate,
            ),
            stage2=None
            if s2 is None
            else Stage2Metrics(
                n_gap=scored_counts["gap"],
                n_conflict=scored_counts["conflict"],
                gap_recall=s2.gap_recall.estimate,
                contradiction_recall=s2.contradiction_recall.estimate,
                s2_ba=s2.s2_ba.estimate,
            ),
            stage1_ci=s1,
            stage2_ci=s2,
            delta_ba=dict(iv.delta_ba),
            delta_ba_vs_ecrt=iv.delta_ba["ecrt"].estimate if "ecrt" in iv.delta_ba else None,
        )
        row.verdict = row_verdict(row, n_safe, n_unsafe)
        if o.skipped:
            total = len(o.skipped) + len(o.folds)
            row.reason = (
                f"{len(o.skipped)} of {total} folds could not be fitted and their responses "
                f"were not scored ({o.skipped[0]})"
            )
        rows.append(row)
    calibration = None
    if (out_dir / "calibration.json").is_file():
        calibration = CalibrationReport.model_validate_json(
            (out_dir / "calibration.json").read_text()
        )
    reference = oof.get("ecrt") if oof.get("ecrt") and oof["ecrt"].ok else None
    power = None
    if reference is not None:
        power = study_power(
            reference.flags[0][scored],
            labels[scored] != SAFE,
            groups[scored],
            target_recall=config.target_recall,
        )
    verdicts = report_verdicts(rows, n_safe, n_unsafe, config.target_recall)
    if power is not None:
        verdicts.append(power["sentence"])
    transfer = []
    if (out_dir / TRANSFER_FILE).is_file():
        transfer = [
            TransferCell.model_validate(c)
            for c in json.loads((out_dir / TRANSFER_FILE).read_text())
        ]
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
        protocol=config.protocol,
        folds=config.folds if config.protocol == "cv" else None,
        repeats=int(oof_info["repeats"]),
        replicates=config.replicates,
        n_groups=int(pd.Series(groups[scored]).nunique()),
        scored_counts=scored_counts,
        verdicts=verdicts,
        power=power,
        transfer=transfer,
    )
    atomic_write_text(out_dir / "triage.json", report.model_dump_json(indent=2))
    atomic_write_text(out_dir / "triage.md", report.to_markdown())
    return report


def write_combined(root: Path, reports: Sequence[TriageReport]) -> None:
    """Write ``triage.md`` (comparison + per-report tables) and ``triage.json`` (the
    list of reports) under ``root``."""
    text = "## Triage comparison (out-of-fold, 95 % intervals)\n\n" + comparison_table(reports)
    text += "\n" + "\n".join(r.to_markdown() for r in reports)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "triage.md", text)
    atomic_write_text(
        root / "triage.json",
        json.dumps([json.loads(r.model_dump_json()) for r in reports], indent=2),
    )


def evaluate_run_dir(run_dir: str | Path) -> list[TriageReport]:
    """Re-evaluate every trained (model, corpus) of a run from its artifacts (no model
    call) and rewrite the combined triage files.

    Raises:
        RunDirError: not a run directory, or nothing trained yet.
    """
    reader = RunDir(run_dir)
    reader.require()
    root = reader.file(DETECTION_DIR)
    dirs = sorted(p.parent for p in root.glob("*/detection.json"))
    if not dirs:
        raise RunDirError(
            f"{root}: no trained detection here; run `safescale detect train {reader.path}` first"
        )
    stale = [d for d in dirs if not (d / "oof.json").is_file()]
    if stale:
        raise RunDirError(
            f"{stale[0]}: detection was trained before out-of-fold evaluation existed; run "
            f"`safescale detect train {reader.path}` again (stored inputs: no model call)"
        )
    with RunLock(reader.path):
        reports = [evaluate_detection(d) for d in dirs]
        write_combined(root, reports)
    return reports


def transfer_sets(out_dirs: Sequence[Path]) -> list[TransferSet]:
    """The (model, corpus, condition) sets of detection directories' features."""
    sets = []
    for out in out_dirs:
        info = json.loads((Path(out) / "detection.json").read_text())
        frame = pd.read_parquet(Path(out) / "features.parquet")
        for condition, part in frame.groupby("condition", sort=True):
            sets.append(
                TransferSet(info["backbone"], info.get("corpus") or "?", str(condition), part)
            )
    return sets


def write_transfer(
    out_dirs: Sequence[Path], config: DetectionConfig, methods: Sequence[str] = ("ecrt",)
) -> list[TransferCell]:
    """The transfer matrix over every (model, corpus, condition) of these detection
    directories, each cell stored in the directory of its test set; nothing when there
    is a single set."""
    sets = transfer_sets(out_dirs)
    if len(sets) < 2:
        return []
    methods = [m for m in methods if m in config.detectors]
    cells = transfer_matrix(
        sets,
        methods,
        seed=config.seed,
        target_recall=config.target_recall,
        n_estimators=config.n_estimators,
        replicates=config.replicates,
        folds=config.folds,
        repeats=config.repeats,
    )
    for out in out_dirs:
        info = json.loads((Path(out) / "detection.json").read_text())
        prefix = f"{info['backbone']} · {info.get('corpus') or '?'} · "
        mine = [c.model_dump(mode="json") for c in cells if c.test.startswith(prefix)]
        atomic_write_text(Path(out) / TRANSFER_FILE, json.dumps(mine, indent=2))
    return cells
