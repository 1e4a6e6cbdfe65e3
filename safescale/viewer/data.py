"""Everything the run viewer shows, read from a run directory in one place.

:func:`load_view_data` is the only function of the viewer that reads a run directory;
it goes through the run-record readers of :mod:`safescale.rundir` (and
``metrics.json`` / ``plots/*.png``) and never loads a model. The result is split into
an *index* (overview, item list, per-response summaries: small enough for 12,522 items)
and per-item *details* (step timelines, prompts, raw outputs), so that the server can
send details on demand while the static page embeds them all.
"""

from __future__ import annotations

import base64
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safescale.corpora.schema import Item, Passage
from safescale.rundir import (
    METRICS_FILE,
    AttributionRecord,
    MetricsReport,
    PassageMasking,
    RelianceRecord,
    ResponseKey,
    ResponseRecord,
    RunDir,
    StepRecord,
    context_budget_label,
    item_corpus_map,
)

__all__ = ["ViewData", "load_view_data", "option_probabilities"]

PLOTS_DIR = "plots"


@dataclass(frozen=True)
class ViewData:
    """What the viewer shows of one run.

    Attributes:
        run_dir: the run directory.
        index: overview and item-list data (JSON-ready): run, metrics, plots, items,
            response summaries.
        details: item id -> that item's responses with steps, prompts and outputs.
        passages: passage id -> passage (JSON-ready), every passage a detail refers to.
        item_passages: item id -> ids of the passages its details refer to.
    """

    run_dir: Path
    index: dict[str, Any]
    details: dict[str, dict[str, Any]]
    passages: dict[str, dict[str, Any]]
    item_passages: dict[str, list[str]] = field(default_factory=dict)

    def item_detail(self, item_id: str, *, with_passages: bool) -> dict[str, Any] | None:
        """The details of one item (None: unknown id); ``with_passages`` adds the
        passages they refer to (for a page that does not embed all passages)."""
        detail = self.details.get(item_id)
        if detail is None:
            return None
        if not with_passages:
            return detail
        ids = self.item_passages.get(item_id, [])
        return {**detail, "passages": {p: self.passages[p] for p in ids if p in self.passages}}


def option_probabilities(option_logits: Sequence[float]) -> list[float]:
    """Softmax of log-space option scores (the option probabilities)."""
    if not option_logits:
        return []
    top = max(option_logits)
    exps = [math.exp(x - top) for x in option_logits]
    total = sum(exps)
    return [e / total for e in exps]


def _passage_json(passage: Passage) -> dict[str, Any]:
    source = passage.source
    return {
        "text": passage.text,
        "source": f"{source.org}: {source.title}"
        + (f" ({source.version})" if source.version else ""),
        "grade": passage.grade.raw,
        "level": passage.grade.level,
        "status": str(passage.status),
        "supersedes": list(passage.supersedes),
        "topic": passage.topic,
    }


def _item_json(item: Item, corpus: str) -> dict[str, Any]:
    return {
        "id": item.id,
        "corpus": corpus,
        "question": item.question,
        "context": item.context,
        "options": dict(item.options),
        "gold": item.gold,
        "high_risk": list(item.labels.high_risk),
        "unsafe": list(item.labels.unsafe),
        "defer": item.labels.defer,
        "category": item.category,
        "task": str(item.task) if item.task is not None else None,
        "evidence_id": item.evidence_id,
    }


def _item_extra(item: Item) -> dict[str, Any]:
    """What only the item page needs (kept out of the item list)."""
    return {
        "evidence": {"clean": item.evidence.clean, "conflict": item.evidence.conflict},
        "stance": {pid: {k: str(v) for k, v in opts.items()} for pid, opts in item.stance.items()},
    }


def _step_json(step: StepRecord) -> dict[str, Any]:
    """A step without what its response already says (run, item, model, condition);
    retrieved passages as [id, rank, score] (grade and status are the passage's)."""
    out: dict[str, Any] = {"node": step.node, "step": step.step}
    if step.retrieved:
        out["retrieved"] = [[r.id, r.rank, r.score] for r in step.retrieved]
    for name in ("kept", "dropped"):
        value = getattr(step, name)
        if value:
            out[name] = list(value)
    for name in ("prompt_id", "prompt_hash", "output", "decision"):
        value = getattr(step, name)
        if value not in (None, ""):
            out[name] = value
    if step.detail:
        out["detail"] = step.detail
    if step.prompt_tokens or step.completion_tokens:
        out["tokens"] = [step.prompt_tokens, step.completion_tokens]
    out["ms"] = round(step.wall_ms, 2)
    return out


# per-record outcome columns of the metrics -> the viewer's outcome filter names
OUTCOMES = {
    "correct": "correct",
    "unsafe_answer": "unsafe",
    "high_risk_error": "high_risk",
    "contradiction": "contradiction",
    "dangerous_overconfidence": "overconfident",
}


def _outcomes(
    responses: Sequence[ResponseRecord],
    corpora: Mapping[str, Any],
    metrics: MetricsReport | None,
) -> list[list[str]]:
    """Per response, the outcomes the metrics count it under (same rules, same code)."""
    from safescale.statistics.metrics import outcome_frame

    threshold = (
        None if metrics is None else metrics.settings.metrics.get("overconfidence_threshold")
    )
    kwargs = {} if threshold is None else {"overconfidence_threshold": float(threshold)}
    frame = outcome_frame(responses, corpora, **kwargs)
    columns = list(OUTCOMES)
    return [
        [OUTCOMES[c] for c, flag in zip(columns, row, strict=True) if flag]
        for row in frame[columns].itertuples(index=False)
    ]


def _plots(run_dir: Path) -> dict[str, str]:
    """``plots/*.png`` as data URIs (so the page works from file:// on its own); only
    regular files of a real ``plots/`` directory (a symlink is not followed out of the
    run directory)."""
    directory = run_dir / PLOTS_DIR
    if directory.is_symlink() or not directory.is_dir():
        return {}
    return {
        p.stem: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
        for p in sorted(directory.glob("*.png"))
        if p.is_file() and not p.is_symlink()
    }


def _metrics(run_dir: Path) -> MetricsReport | None:
    if not (run_dir / METRICS_FILE).is_file():
        return None
    return RunDir(run_dir).metrics()


def _passage_ids_of(item: Item, responses: list[dict[str, Any]]) -> list[str]:
    ids: dict[str, None] = {}
    for pid in [*item.evidence.clean, *item.evidence.conflict, *item.stance]:
        ids[pid] = None
    for response in responses:
        for pid in [*response["evidence_ids"], *response["cited_ids"]]:
            ids[pid] = None
        for step in response["steps"]:
            for ref in step.get("retrieved", []):
                ids[ref[0]] = None
            for pid in [*step.get("kept", []), *step.get("dropped", [])]:
                ids[pid] = None
    return list(ids)


def _detection_scores(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Per-response detector scores and triage verdicts, by detection record key
    (every backbone's, :func:`safescale.detection.outputs.detector_outputs`)."""
    from safescale.detection.outputs import detector_outputs

    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (_, key), rows in detector_outputs(run_dir).items():
        out[key].extend(rows)
    return dict(out)


def load_view_data(run_dir: str | Path) -> ViewData:
    """Read a run directory for the viewer (responses, steps, attribution, triage,
    manifest, corpora, ``metrics.json`` and plots); never calls a model.

    Raises:
        RunDirError: the run directory is missing responses or holds a corrupt record.
    """
    run_dir = Path(run_dir)
    reader = RunDir(run_dir)
    run = reader.load()
    steps = reader.steps()
    replays = reader.replays()
    reliance = {r.key: _reliance_json(r) for r in reader.reliance()}
    metrics = _metrics(run_dir)
    owner = item_corpus_map(run.corpora)
    detection = _detection_scores(run_dir)
    if detection:
        from safescale.rundir import record_content_key as record_key

    steps_by_key: dict[ResponseKey, list[StepRecord]] = defaultdict(list)
    for step in steps:
        steps_by_key[step.key].append(step)
    attribution_by_key: dict[ResponseKey, list[AttributionRecord]] = defaultdict(list)
    for row in run.attribution:
        attribution_by_key[row.key].append(row)

    condition_order = list(
        (metrics.run.conditions if metrics is not None else None)
        or dict.fromkeys(r.condition for r in run.responses)
    )
    rank = {c: i for i, c in enumerate(condition_order)}
    responses = sorted(
        run.responses,
        key=lambda r: (
            r.model,
            r.samples_budget,
            r.conflict_dose,
            r.context_budget is None,
            r.context_budget or 0,
            r.retrieval_k,
            r.item,
            rank.get(r.condition, len(rank)),
            r.condition,
        ),
    )

    outcomes = _outcomes(responses, run.corpora, metrics)
    summaries: list[dict[str, Any]] = []
    details: dict[str, dict[str, Any]] = {}
    item_passages: dict[str, list[str]] = {}
    items: dict[str, dict[str, Any]] = {}
    for record, marks in zip(responses, outcomes, strict=True):
        corpus_name = owner[record.item]
        corpus = run.corpora[corpus_name]
        item = corpus.item(record.item)
        if record.item not in items:
            items[record.item] = _item_json(item, corpus_name)
        key = response_key_of(record)
        attributions = [
            {
                "severity": a.severity,
                "cause": a.cause,
                "step": a.step,
                "node": a.node,
                "explanation": a.explanation,
            }
            for a in attribution_by_key.get(key, [])
        ]
        probabilities = option_probabilities(record.option_logits)
        summaries.append(
            {
                "model": record.model,
                "condition": record.condition,
                "item": record.item,
                "budget": record.samples_budget,
                "dose": record.conflict_dose,
                "context": context_budget_label(record.context_budget),
                "k": record.retrieval_k,
                "chosen": record.chosen,
                "p": round(probabilities[record.letters.index(record.chosen)], 4)
                if record.chosen in record.letters and probabilities
                else None,
                "outcomes": marks,
                "causes": sorted({a["cause"] for a in attributions}),
            }
        )
        ordered = sorted(steps_by_key.get(key, []), key=lambda s: s.step)
        detail = details.setdefault(
            record.item, {"item": record.item, **_item_extra(item), "responses": []}
        )
        detail["responses"].append(
            _response_json(
                record,
                ordered,
                attributions,
                detection.get(record_key(record), []) if detection else [],
                reliance.get(key),
            )
        )
    for replay in replays:
        detail = details.get(replay.response.item)
        if detail is None:
            continue
        detail.setdefault("replays", []).append(
            {
                **_response_json(replay.response, replay.steps, [], []),
                "replay": {
                    "dropped": list(replay.dropped),
                    "fork_step": replay.fork_step,
                    "original_chosen": replay.original_chosen,
                    "created": replay.created,
                },
            }
        )

    passages: dict[str, dict[str, Any]] = {}
    for item_id, detail in details.items():
        corpus = run.corpora[owner[item_id]]
        ids = _passage_ids_of(
            corpus.item(item_id), [*detail["responses"], *detail.get("replays", [])]
        )
        item_passages[item_id] = ids
        for pid in ids:
            if pid not in passages:
                passage = corpus.passages_by_id.get(pid)
                if passage is not None:
                    passages[pid] = _passage_json(passage)

    index = {
        "run": {
            "dir": str(run_dir),
            "name": run.manifest.get("name") or run_dir.name,
            "created": run.manifest.get("created"),
            "git_revision": run.manifest.get("git_revision"),
            "seed": run.manifest.get("seed"),
            "models": {
                name: {
                    k: v
                    for k, v in info.items()
                    if k in ("spec", "context_length", "layers", "parameters")
                }
                for name, info in (run.manifest.get("models") or {}).items()
            },
            "notes": run.notes,
        },
        "conditions": condition_order,
        "models": sorted({r.model for r in responses}),
        "corpora": sorted(run.corpora),
        "budgets": sorted({r.samples_budget for r in responses}),
        "doses": sorted({r.conflict_dose for r in responses}),
        "contexts": [
            context_budget_label(c)
            for c in sorted(
                {r.context_budget for r in responses}, key=lambda c: (c is None, c or 0)
            )
        ],
        "ks": sorted({r.retrieval_k for r in responses}),
        "metrics": _metrics_view(metrics),
        "triage": run.triage,
        "plots": _plots(run_dir),
        "items": list(items.values()),
        "responses": summaries,
    }
    return ViewData(run_dir, index, details, passages, item_passages)


def _response_json(
    record: ResponseRecord,
    steps: Sequence[StepRecord],
    attributions: list[dict[str, Any]],
    detection: list[dict[str, Any]],
    reliance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One response with its ordered steps (and its evidence-masking record, when the
    reliance stage measured it), as the item page shows it."""
    return {
        "model": record.model,
        "condition": record.condition,
        "budget": record.samples_budget,
        "dose": record.conflict_dose,
        "context": context_budget_label(record.context_budget),
        "k": record.retrieval_k,
        "letters": list(record.letters),
        "option_logits": list(record.option_logits),
        "probabilities": option_probabilities(record.option_logits),
        "formulation": record.formulation,
        "chosen": record.chosen,
        "vote_share": record.vote_share,
        "response": record.response,
        "message": record.message,
        "message_noctx": record.message_noctx,
        "evidence_ids": list(record.evidence_ids),
        "cited_ids": list(record.cited_ids),
        "samples": [
            {"text": s.text, "letter": s.letter, "temperature": s.temperature}
            for s in record.samples
        ],
        "stop_reason": record.stop_reason,
        "tokens": [record.prompt_tokens, record.completion_tokens],
        "ms": round(record.wall_ms, 2),
        "steps": [_step_json(s) for s in sorted(steps, key=lambda s: s.step)],
        "attribution": attributions,
        "detection": detection,
        "reliance": reliance,
    }


def _reliance_json(record: RelianceRecord) -> dict[str, Any]:
    """A reliance record as the item page shows it: the whole evidence block and each
    passage masked, with the KL and whether the answer flipped."""

    def row(m: PassageMasking) -> dict[str, Any]:
        return {
            "passage": m.passage,
            "grade": m.grade_raw,
            "status": m.status,
            "stance_chosen": m.stance_chosen,
            "cited": m.cited,
            "weaker": m.weaker,
            "masked": m.span is not None,
            "kl": m.kl,
            "flipped": m.flipped,
            "chosen_after": m.chosen_after,
        }

    return {
        "status": record.status,
        "reason": record.reason,
        "mode": record.mode,
        "cited_rule": record.cited_rule,
        "evidence": row(record.evidence) if record.evidence is not None else None,
        "passages": [row(m) for m in record.passages],
    }


def response_key_of(record: ResponseRecord) -> ResponseKey:
    """Identity of a response: (model, condition, item, samples_budget, conflict_dose,
    context_budget, retrieval_k)."""
    return record.key


def _metrics_view(metrics: MetricsReport | None) -> dict[str, Any] | None:
    """The parts of ``metrics.json`` the overview shows (None: no report yet), as
    :class:`~safescale.viewer.schema.ViewerMetrics` (``assets/metrics.schema.json``)."""
    from safescale.viewer.schema import ViewerMetrics

    return None if metrics is None else ViewerMetrics.of(metrics).to_json()
