"""Export a run directory as Inspect AI ``.eval`` logs (``safescale export inspect``).

Inspect's log viewer and its ``.eval`` format are what evaluation researchers open and
share; this writes one log per model × corpus × condition (× compute budget and
conflict dose when the run has several), read entirely from the run directory through
its one reader (no model is loaded):

* **eval spec**: task ``<corpus>/<condition>`` (``/x<budget>``, ``/dose<d>`` when
  several), model ``safescale/<model>``, dataset = the corpus (name, path, item ids),
  ``task_args`` the budget and dose, ``metadata.safescale`` the run name, config hash,
  answer formulation and safety-label provenance; the plan lists the condition's graph
  nodes in step order;
* **one sample per item**: ``input`` is the exact user turn the answer was read from,
  ``choices`` the option texts, ``target`` the gold letter, ``messages`` that turn and
  the answer, ``output`` the answer; ``model_usage`` and ``total_time`` from the
  response; ``metadata`` the corpus, category, task, evidence id, letters, option
  scores, confidence, evidence and cited passage ids;
* **the steps as events**: each logged step is a span (``type: "step"``, named after
  its graph node) holding an ``info`` event with the step record (retrieved passages
  with grade and score, kept / dropped, decision, output, tokens, wall time); the
  final answer is a ``model`` event; the scores are ``score`` events;
* **scores**: ``accuracy`` (``C`` / ``I``, answer = the chosen letter) and ``safety``
  (a dict of 0/1 outcomes: ``high_risk``, ``unsafe``, ``contradiction``,
  ``dangerous_overconfidence`` — the labels an unlabeled item set lacks are left out
  and named in ``metadata.not_labeled``); the safety score's metadata holds the
  failure attribution and the **detector outputs** (backbone, method, score, frozen
  threshold, verdict, split) of every saved detector;
* **results**: the cell's estimates from ``metrics.json`` (value and 95 % bounds as
  ``<metric>``, ``<metric>_lo``, ``<metric>_hi``), so the log's headline numbers are
  the report's.

Outcomes come from :func:`safescale.statistics.metrics.outcome_frame`, the function
``metrics.json`` is computed from. ``bundle`` also writes Inspect's static viewer
(``inspect_ai.log.bundle_log_dir``) next to the logs. Needs the ``inspect`` extra
(``pip install 'safescale[inspect]'``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safescale.detection.outputs import detector_outputs
from safescale.rundir import (
    METRICS_FILE,
    ResponseRecord,
    RunDir,
    StepRecord,
    item_corpus_map,
)
from safescale.statistics.metrics import outcome_frame, read_metrics

__all__ = ["ExportError", "InspectExport", "export_inspect"]

_SAFETY = {
    "high_risk": "high_risk_error",
    "unsafe": "unsafe_answer",
    "contradiction": "contradiction",
    "dangerous_overconfidence": "dangerous_overconfidence",
}
_NEEDS = {"high_risk": "high_risk", "unsafe": "unsafe", "dangerous_overconfidence": "high_risk"}
_ACCURACY_METRICS = ("accuracy",)
_SAFETY_METRICS = ("high_risk_error", "unsafe_answer", "contradiction", "dangerous_overconfidence")


class ExportError(RuntimeError):
    """The export cannot run (Inspect not installed, no metrics yet, bad output)."""


@dataclass(frozen=True)
class InspectExport:
    """What :func:`export_inspect` wrote.

    Attributes:
        logs: the ``.eval`` files, one per model × corpus × condition (× budget, dose).
        samples: samples written in all.
        viewer: the bundled Inspect viewer directory (None without ``bundle``).
    """

    logs: list[Path]
    samples: int
    viewer: Path | None


def _require_inspect() -> None:
    try:
        import inspect_ai  # noqa: F401
    except ImportError:
        raise ExportError(
            "the Inspect export needs inspect-ai: pip install 'safescale[inspect]'"
        ) from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _time(created: dt.datetime, seconds: float) -> dt.datetime:
    return created + dt.timedelta(seconds=seconds)


def _estimates(cell: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        estimate = ((cell or {}).get("metrics") or {}).get(name) or {}
        if estimate.get("value") is None:
            continue
        out[name] = float(estimate["value"])
        for bound in ("lo", "hi"):
            if estimate.get(bound) is not None:
                out[f"{name}_{bound}"] = float(estimate[bound])
    return out


def _step_events(
    steps: Sequence[StepRecord], start: dt.datetime, sample_id: str
) -> tuple[list[Any], float]:
    from inspect_ai.event import InfoEvent, SpanBeginEvent, SpanEndEvent

    events: list[Any] = []
    clock = 0.0
    for step in sorted(steps, key=lambda s: s.step):
        span = f"{sample_id}-step-{step.step}"
        at = _time(start, clock)
        events.append(
            SpanBeginEvent(id=span, name=step.node, type="step", timestamp=at, working_start=clock)
        )
        data = {
            "node": step.node,
            "step": step.step,
            "retrieved": [r.model_dump(mode="json") for r in step.retrieved],
            "kept": list(step.kept),
            "dropped": list(step.dropped),
            "decision": step.decision,
            "output": step.output,
            "prompt_id": step.prompt_id,
            "prompt_hash": step.prompt_hash,
            "detail": step.detail,
            "prompt_tokens": step.prompt_tokens,
            "completion_tokens": step.completion_tokens,
            "wall_ms": step.wall_ms,
        }
        events.append(
            InfoEvent(
                source=step.node,
                data=json.loads(json.dumps(data, default=str)),
                span_id=span,
                timestamp=at,
                working_start=clock,
            )
        )
        clock += step.wall_ms / 1000.0
        events.append(SpanEndEvent(id=span, timestamp=_time(start, clock), working_start=clock))
    return events, clock


def _sample(
    record: ResponseRecord,
    outcome: Mapping[str, Any],
    item: Any,
    steps: Sequence[StepRecord],
    attribution: Sequence[Any],
    detectors: Sequence[Mapping[str, Any]],
    not_labeled: Sequence[str],
    model_name: str,
    start: dt.datetime,
) -> Any:
    from inspect_ai.event import ModelEvent, ScoreEvent
    from inspect_ai.log import EvalSample
    from inspect_ai.model import (
        ChatMessageAssistant,
        ChatMessageUser,
        GenerateConfig,
        ModelOutput,
        ModelUsage,
    )
    from inspect_ai.scorer import CORRECT, INCORRECT, Score

    correct = bool(outcome["correct"])
    accuracy = Score(
        value=CORRECT if correct else INCORRECT,
        answer=record.chosen,
        explanation=f"chose {record.chosen}, gold {item.gold}",
    )
    safety_value = {
        name: int(outcome[column])
        for name, column in _SAFETY.items()
        if _NEEDS.get(name) not in not_labeled
    }
    safety = Score(
        value=safety_value,
        answer=record.chosen,
        metadata={
            "not_labeled": sorted(n for n in _SAFETY if _NEEDS.get(n) in not_labeled),
            "high_risk_options": list(item.labels.high_risk),
            "unsafe_options": list(item.labels.unsafe),
            "attribution": [
                {
                    "severity": a.severity,
                    "cause": a.cause,
                    "step": a.step,
                    "node": a.node,
                    "explanation": a.explanation,
                }
                for a in attribution
            ],
            "detectors": [dict(d) for d in detectors],
        },
    )
    output = ModelOutput.from_content(model_name, record.response)
    usage = ModelUsage(
        input_tokens=record.prompt_tokens,
        output_tokens=record.completion_tokens,
        total_tokens=record.prompt_tokens + record.completion_tokens,
    )
    output.usage = usage
    events, clock = _step_events(steps, start, item.id)
    user = ChatMessageUser(content=record.message)
    events.append(
        ModelEvent(
            model=model_name,
            input=[user],
            tools=[],
            tool_choice="none",
            config=GenerateConfig(),
            output=output,
            timestamp=_time(start, clock),
            working_start=clock,
        )
    )
    for name, score in (("accuracy", accuracy), ("safety", safety)):
        events.append(
            ScoreEvent(
                score=score,
                target=item.gold,
                scorer=name,
                timestamp=_time(start, clock),
                working_start=clock,
            )
        )
    confidence = outcome.get("confidence")
    return EvalSample(
        id=item.id,
        epoch=1,
        input=record.message,
        choices=[item.options[letter] for letter in item.letters],
        target=item.gold,
        messages=[user, ChatMessageAssistant(content=record.response, model=model_name)],
        output=output,
        scores={"accuracy": accuracy, "safety": safety},
        metadata={
            "corpus": outcome["corpus"],
            "condition": record.condition,
            "category": item.category,
            "task": None if item.task is None else str(item.task),
            "evidence_id": item.evidence_id,
            "letters": list(record.letters),
            "option_scores": list(record.option_logits),
            "formulation": record.formulation,
            "confidence": None if confidence != confidence else confidence,  # NaN -> None
            "chosen": record.chosen,
            "evidence_ids": list(record.evidence_ids),
            "cited_ids": list(record.cited_ids),
            "conflict_injected": list(record.conflict_injected),
        },
        events=events,
        model_usage={model_name: usage},
        total_time=record.wall_ms / 1000.0,
        working_time=record.wall_ms / 1000.0,
        started_at=start.isoformat(),
        completed_at=_time(start, record.wall_ms / 1000.0).isoformat(),
        uuid=hashlib.sha256(repr(record.key).encode()).hexdigest()[:22],
    )


def export_inspect(
    run_dir: str | Path, out: str | Path, *, bundle: bool = True, overwrite: bool = False
) -> InspectExport:
    """Write a run directory as Inspect ``.eval`` logs into ``out`` (see the module docs).

    Args:
        run_dir: the run directory (its report must exist: ``metrics.json``).
        out: the directory to write the logs into (created).
        bundle: also write Inspect's static viewer into ``out/viewer``.
        overwrite: replace ``.eval`` logs and the viewer already in ``out``.

    Raises:
        ExportError: inspect-ai is not installed, the run has no metrics.json yet, or
            ``out`` already holds logs (without ``overwrite``).
        RunDirError: the run directory is missing or corrupt.
    """
    _require_inspect()
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalMetric,
        EvalPlan,
        EvalPlanStep,
        EvalResults,
        EvalScore,
        EvalSpec,
        EvalStats,
        write_eval_log,
    )
    from inspect_ai.model import ModelUsage

    run_dir = Path(run_dir)
    out = Path(out)
    if not (run_dir / METRICS_FILE).is_file():
        raise ExportError(
            f"{run_dir / METRICS_FILE}: missing; write the report first (safescale report RUN_DIR)"
        )
    if out.exists() and any(out.glob("*.eval")) and not overwrite:
        raise ExportError(f"{out}: already holds .eval logs (pass --overwrite to replace them)")
    reader = RunDir(run_dir)
    run = reader.load()
    metrics = read_metrics(run_dir)
    steps_by_key: dict[tuple, list[StepRecord]] = defaultdict(list)
    for step in reader.steps():
        steps_by_key[step.key].append(step)
    attribution_by_key: dict[tuple, list[Any]] = defaultdict(list)
    for row in run.attribution:
        attribution_by_key[row.key].append(row)
    detection = detector_outputs(run_dir)
    if detection:
        from safescale.rundir import record_content_key as record_key
    owner = item_corpus_map(run.corpora)
    frame = outcome_frame(
        run.responses,
        run.corpora,
        overconfidence_threshold=float(
            metrics["definitions"].get("dangerous_overconfidence_threshold", 0.95)
        ),
    )
    outcomes = frame.to_dict("records")
    cells = {
        (c["model"], c["corpus"], c["condition"], c["samples_budget"], c.get("conflict_dose", 0)): c
        for c in metrics.get("cells", [])
    }
    labels = metrics.get("labels") or {}
    manifest = run.manifest
    created = dt.datetime.fromisoformat(str(manifest.get("created")))
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    config_hash = str(manifest.get("config_hash", ""))
    run_name = str(manifest.get("name") or run_dir.name)
    formulations = manifest.get("formulations") or {}
    budgets = sorted({r.samples_budget for r in run.responses})
    doses = sorted({r.conflict_dose for r in run.responses})
    version = importlib.metadata.version("safescale")

    groups: dict[tuple, list[tuple[ResponseRecord, dict[str, Any]]]] = defaultdict(list)
    for record, outcome in zip(run.responses, outcomes, strict=True):
        key = (
            record.model,
            owner[record.item],
            record.condition,
            record.samples_budget,
            record.conflict_dose,
        )
        groups[key].append((record, outcome))

    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for old in out.glob("*.eval"):
            old.unlink()
    logs: list[Path] = []
    n_samples = 0
    stamp = created.strftime("%Y-%m-%dT%H-%M-%S+00-00")
    for key in sorted(groups, key=lambda k: tuple(str(p) for p in k)):
        model, corpus_name, condition, budget, dose = key
        members = sorted(groups[key], key=lambda pair: pair[0].item)
        corpus = run.corpora[corpus_name]
        status = labels.get(corpus_name) or corpus.safety_labels.model_dump(mode="json")
        not_labeled = [n for n in ("high_risk", "unsafe") if status.get(n) == "unlabeled"]
        task = f"{corpus_name}/{condition}"
        if len(budgets) > 1:
            task += f"/x{budget}"
        if len(doses) > 1:
            task += f"/dose{dose}"
        model_name = f"safescale/{model}"
        backbone = reader.detection_dir(model, corpus_name).name
        samples = []
        nodes: dict[str, None] = {}
        total_usage = ModelUsage()
        clock = 0.0
        for record, outcome in members:
            steps = steps_by_key.get(record.key, [])
            for step in sorted(steps, key=lambda s: s.step):
                nodes.setdefault(step.node, None)
            detectors = detection.get((backbone, record_key(record)), []) if detection else []
            sample = _sample(
                record,
                outcome,
                corpus.item(record.item),
                steps,
                attribution_by_key.get(record.key, []),
                detectors,
                not_labeled,
                model_name,
                _time(created, clock),
            )
            clock += record.wall_ms / 1000.0
            total_usage = total_usage + sample.model_usage[model_name]
            samples.append(sample)
        cell = cells.get(key)
        eval_id = hashlib.sha256(f"{run_name}|{config_hash}|{key}".encode()).hexdigest()[:22]
        results = EvalResults(
            total_samples=len(samples),
            completed_samples=len(samples),
            scores=[
                EvalScore(
                    name=name,
                    scorer=name,
                    scored_samples=len(samples),
                    unscored_samples=0,
                    metrics={
                        m: EvalMetric(name=m, value=v) for m, v in _estimates(cell, shown).items()
                    },
                    metadata={
                        "source": "metrics.json (bootstrap 95% intervals)",
                        "not_labeled": [
                            m
                            for m in shown
                            if ((cell or {}).get("metrics") or {}).get(m, {}).get("not_labeled")
                        ],
                    },
                )
                for name, shown in (("accuracy", _ACCURACY_METRICS), ("safety", _SAFETY_METRICS))
            ],
        )
        log = EvalLog(
            status="success",
            eval=EvalSpec(
                eval_id=eval_id,
                run_id=hashlib.sha256(f"{run_name}|{config_hash}".encode()).hexdigest()[:22],
                created=created.isoformat(),
                task=task,
                task_id=eval_id,
                task_display_name=f"{corpus_name} · {condition}",
                task_args={"samples_budget": budget, "conflict_dose": dose},
                solver=condition,
                dataset=EvalDataset(
                    name=corpus_name,
                    location=str(corpus.path) if corpus.path else corpus_name,
                    samples=len(samples),
                    sample_ids=[s.id for s in samples],
                ),
                model=model_name,
                config=EvalConfig(),
                packages={"safescale": version},
                metadata={
                    "safescale": {
                        "run": run_name,
                        "run_dir": str(run_dir.resolve()),
                        "config_hash": config_hash,
                        "model": model,
                        "corpus": corpus_name,
                        "condition": condition,
                        "samples_budget": budget,
                        "conflict_dose": dose,
                        "formulation": (formulations.get(model) or {})
                        .get(corpus_name, {})
                        .get("chosen"),
                        "safety_labels": status,
                    }
                },
            ),
            plan=EvalPlan(name=condition, steps=[EvalPlanStep(solver=n) for n in nodes]),
            results=results,
            stats=EvalStats(
                started_at=created.isoformat(),
                completed_at=_time(created, clock).isoformat(),
                model_usage={model_name: total_usage},
            ),
            samples=samples,
        )
        path = out / f"{stamp}_{_slug(model)}_{_slug(task)}_{eval_id}.eval"
        write_eval_log(log, location=str(path), format="eval")
        logs.append(path)
        n_samples += len(samples)
    viewer = None
    if bundle:
        from inspect_ai.log import bundle_log_dir

        viewer = out / "viewer"
        staging = out / ".logs-for-viewer"
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for path in logs:
            shutil.copy2(path, staging / path.name)
        try:
            bundle_log_dir(str(staging), str(viewer), overwrite=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return InspectExport(logs=logs, samples=n_samples, viewer=viewer)
