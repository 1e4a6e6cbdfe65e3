"""Causal reliance on evidence: the frozen answers re-read with evidence masked.

For every selected response (by default each response whose prompt held evidence) the
answer is re-read the way its formulation read it
(:func:`safescale.detection.masking.masked_rereads`): once unmasked, once with the
whole evidence block blocked from attention, and once per prompt passage (its whole
``[P#] source (grade, status): text`` line). Each masked read gives ``KL(p_before ||
p_after)`` of the option distribution (softmax of the formulation's scores) and whether
the most probable option flips. With mode ``all_later`` (the default) every query after
the span is blocked, i.e. the span is deleted without shifting the positions of what
follows.

Before masking, the unmasked re-read must reproduce the recorded ``option_logits``
within ``reliance.tolerance``; a response that does not is recorded as ``mismatch`` and
left out of the shares. ``letter_cyclic`` answers (``n`` re-ordered prompts per read),
PriDe answers that fell back to cyclic, and majority-vote answers (``samples_budget >
1``: not read from the option scores) are recorded as ``skipped`` with the reason.

Definitions (per response, see :class:`~safescale.rundir.RelianceRecord`):

* the **cited** passages are the response's own ``cited_ids`` among its prompt passages
  when it has any (the synthesis of agentic RAG); otherwise the prompt passages whose
  labelled stance *supports* the chosen option, keeping those of the strongest grade
  level among them (rule ``supporting_stance``);
* a passage is **weaker** when it is superseded/withdrawn or its grade level is weaker
  (a larger level number) than the strongest passage of the prompt.

Records go to ``reliance.jsonl`` (one line per response, appended and fsynced under the
run lock); a resumed stage skips responses already recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from safescale.agents.prompts import passage_line
from safescale.corpora import Corpus, Item, Passage
from safescale.corpora.schema import Stance, Status
from safescale.experiments.config import ExperimentConfig
from safescale.rundir import (
    RELIANCE_FILE,
    PassageMasking,
    RelianceRecord,
    ResponseRecord,
    RunDir,
    RunLock,
    append_lines,
    item_corpus_map,
    repair_jsonl,
)

__all__ = [
    "CITED_DEFINITION",
    "RelianceError",
    "RelianceJob",
    "ReliancePlan",
    "RelianceSummary",
    "cited_passages",
    "measure_jobs",
    "measure_reliance",
    "plan_reliance",
    "run_reliance_stage",
    "weaker_passages",
]

CITED_DEFINITION = (
    "the response's own cited passages (cited_ids) among its prompt passages; without "
    "citations, the prompt passages whose labelled stance supports the chosen option, "
    "of the strongest grade level among them"
)
_EVIDENCE_HEADER = "Evidence:"


@dataclass
class RelianceSummary:
    """What a stage run did."""

    measured: int = 0
    mismatched: int = 0
    skipped: int = 0
    already_done: int = 0


def _stance(item: Item, pid: str, letter: str | None) -> str:
    if letter is None:
        return str(Stance.NEUTRAL)
    return str(item.stance.get(pid, {}).get(letter, Stance.NEUTRAL))


def cited_passages(
    record: ResponseRecord, item: Item, passages: Sequence[Passage]
) -> tuple[list[str], str]:
    """The cited passage ids of a response and the rule that chose them (see the
    module docs): ``response_citations``, ``supporting_stance`` or ``none``."""
    prompt_ids = [p.id for p in passages]
    own = [pid for pid in record.cited_ids if pid in prompt_ids]
    if own:
        return own, "response_citations"
    supporting = [p for p in passages if _stance(item, p.id, record.chosen) == Stance.SUPPORTS]
    if not supporting:
        return [], "none"
    best = min(p.grade.level for p in supporting)
    return [p.id for p in supporting if p.grade.level == best], "supporting_stance"


def weaker_passages(passages: Sequence[Passage]) -> list[str]:
    """Prompt passages that are superseded/withdrawn or of a weaker grade level than the
    strongest passage of the prompt."""
    if not passages:
        return []
    best = min(p.grade.level for p in passages)
    return [p.id for p in passages if p.status is not Status.CURRENT or p.grade.level > best]


def _passage_text(message: str, passage: Passage) -> str | None:
    """The passage's whole numbered line as it appears in the message (None if absent)."""
    content = passage_line(1, passage).split("] ", 1)[1]
    at = message.find(content)
    if at < 0:
        return None
    start = message.rfind("[P", 0, at)
    return message[start if start >= 0 else at : at + len(content)]


def _evidence_text(message: str) -> str | None:
    """The evidence block of a message built by :func:`prompts.evidence_block` (the
    templates put it first, before ``Question:``)."""
    if not message.startswith(_EVIDENCE_HEADER):
        return None
    end = message.find("Question: ")
    return (message[:end] if end > 0 else message).rstrip() or None


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = np.exp(scores - scores.max())
    return z / z.sum()


def _kl(before: np.ndarray, after: np.ndarray) -> float:
    p, q = _softmax(before), _softmax(after)
    return max(float(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300)))), 0.0)


def _base_record(
    record: ResponseRecord, item: Item, mode: str, tolerance: float, **extra: Any
) -> dict[str, Any]:
    return {
        "run": record.run,
        "model": record.model,
        "condition": record.condition,
        "item": record.item,
        "samples_budget": record.samples_budget,
        "conflict_dose": record.conflict_dose,
        "context_budget": record.context_budget,
        "retrieval_k": record.retrieval_k,
        "formulation": record.formulation,
        "mode": mode,
        "tolerance": tolerance,
        "letters": list(record.letters),
        "gold": item.gold,
        "chosen": record.chosen,
        **extra,
    }


def measure_reliance(
    lm: Any,
    record: ResponseRecord,
    corpus: Corpus,
    *,
    mode: str = "all_later",
    tolerance: float = 1e-3,
    position_prior: Sequence[float] | None = None,
    neutral_logprob: Sequence[float] | None = None,
) -> RelianceRecord:
    """Mask each prompt passage of one response, and all its evidence, and record what
    happens to the answer (see the module docs).

    Args:
        lm: the :class:`~safescale.models.LanguageModel` that made the response.
        record: the frozen response.
        corpus: its corpus (passages, stances).
        mode: the masking mode.
        tolerance: largest allowed difference between the unmasked re-read and the
            recorded option scores.
        position_prior: ``letter_pride``: the prior over positions used for the answer.
        neutral_logprob: ``cloze_pmi``: the options' log-probabilities after the neutral
            prompt (computed here when not given).
    """
    from safescale.detection.masking import (
        MASKABLE_FORMULATIONS,
        find_token_spans,
        masked_rereads,
    )
    from safescale.models import NEUTRAL_MESSAGE

    started = time.perf_counter()
    item = corpus.item(record.item)
    passages = [corpus.passages_by_id[p] for p in record.evidence_ids if p in corpus.passages_by_id]
    cited, rule = cited_passages(record, item, passages)
    base = _base_record(record, item, mode, tolerance, cited_ids=cited, cited_rule=rule)

    def skipped(reason: str) -> RelianceRecord:
        return RelianceRecord.model_validate({**base, "status": "skipped", "reason": reason})

    if record.samples_budget > 1:
        return skipped("a majority-vote answer (samples_budget > 1) is not read from the scores")
    if record.formulation not in MASKABLE_FORMULATIONS:
        return skipped(
            f"formulation {record.formulation!r} is not re-read under masking "
            "(letter_cyclic reads one prompt per cyclic ordering)"
        )
    if record.formulation == "letter_pride" and position_prior is None:
        return skipped("letter_pride without a position prior for this number of options")
    evidence_text = _evidence_text(record.message)
    if evidence_text is None:
        return skipped("the prompt holds no evidence")
    texts = [item.options[letter] for letter in record.letters]
    if record.formulation == "cloze_pmi" and neutral_logprob is None:
        neutral_logprob = lm.score_continuations([NEUTRAL_MESSAGE], [texts]).logprob[0]
    lines = [_passage_text(record.message, p) for p in passages]
    found = find_token_spans(lm, record.message, [evidence_text, *[t or "" for t in lines]])
    spans = [found[0], *[s if t else None for s, t in zip(found[1:], lines, strict=True)]]
    rereads = masked_rereads(
        lm,
        record.message,
        record.formulation,
        record.letters,
        spans,
        option_texts=texts,
        mode=mode,  # type: ignore[arg-type]
        neutral_logprob=neutral_logprob,
        position_prior=position_prior,
    )
    recorded = np.asarray(record.option_logits, dtype=np.float64)
    diff = float(np.max(np.abs(rereads.baseline - recorded)))
    letters = list(record.letters)
    before = letters[int(np.argmax(rereads.baseline))]
    base.update(max_abs_diff=diff, chosen_before=before)
    if not diff <= tolerance:
        return RelianceRecord.model_validate(
            {
                **base,
                "status": "mismatch",
                "reason": f"the unmasked re-read differs from option_logits by {diff:.3g}",
                "wall_ms": (time.perf_counter() - started) * 1000,
            }
        )
    weaker = set(weaker_passages(passages))

    def masking(span: tuple[int, int] | None, scores: np.ndarray | None, **fields: Any):
        if span is None or scores is None:
            return PassageMasking(span=None, **fields)
        after = letters[int(np.argmax(scores))]
        return PassageMasking(
            span=span,
            kl=_kl(rereads.baseline, scores),
            flipped=after != before,
            chosen_after=after,
            **fields,
        )

    entries = [
        masking(
            span,
            scores,
            passage=p.id,
            grade_level=p.grade.level,
            grade_raw=p.grade.raw,
            status=str(p.status.value),
            stance_chosen=_stance(item, p.id, record.chosen),
            stance_gold=_stance(item, p.id, item.gold),
            cited=p.id in cited,
            weaker=p.id in weaker,
        )
        for p, span, scores in zip(passages, spans[1:], rereads.masked[1:], strict=True)
    ]
    return RelianceRecord.model_validate(
        {
            **base,
            "status": "ok",
            "evidence": masking(spans[0], rereads.masked[0]),
            "passages": [e.model_dump() for e in entries],
            "wall_ms": (time.perf_counter() - started) * 1000,
        }
    )


class RelianceError(ValueError):
    """The reliance stage has nothing it could measure (no response with evidence among
    the selected conditions, or a condition the run does not have)."""


def _selected(records: Sequence[ResponseRecord], conditions: Sequence[str] | None):
    if conditions is None:
        return [r for r in records if r.evidence_ids]
    wanted = set(conditions)
    return [r for r in records if r.condition in wanted]


@dataclass(frozen=True)
class RelianceJob:
    """One response to measure: the record, its corpus's name and the position prior
    its answer used (``letter_pride``), all plain data (shipped to a Ray worker as
    JSON)."""

    record: str
    corpus: str
    prior: tuple[float, ...] | None = None

    def response(self) -> ResponseRecord:
        return ResponseRecord.model_validate_json(self.record)


@dataclass
class ReliancePlan:
    """What the stage still has to do in a run directory (made under the run lock)."""

    path: Path
    jobs: dict[str, list[RelianceJob]]  # model -> responses not yet measured
    summary: RelianceSummary


def plan_reliance(config: ExperimentConfig) -> ReliancePlan:
    """The responses of the run the stage has not measured yet, by model; the caller
    holds the run lock (a torn last line of ``reliance.jsonl`` is cut off here).

    Raises:
        RelianceError: a selected condition is not in the run, or no selected response
            carries evidence.
    """
    settings = config.reliance
    reader = RunDir(config.run_dir)
    manifest = reader.manifest()
    corpora = reader.corpora(manifest)
    owner = item_corpus_map(corpora)
    path = Path(reader.path) / RELIANCE_FILE
    responses = reader.responses()
    present = {str(r.condition) for r in responses}
    unknown = sorted(set(settings.conditions or ()) - present)
    if unknown:
        raise RelianceError(
            f"{config.run_dir}: reliance.conditions: {unknown[0]!r} has no response in this "
            f"run (conditions: {', '.join(sorted(present))})"
        )
    selected = _selected(responses, settings.conditions)
    if not any(r.evidence_ids for r in selected):
        which = ", ".join(settings.conditions or sorted(present))
        raise RelianceError(
            f"{config.run_dir}: reliance: no response of {which} carries evidence (every "
            "prompt was evidence-free), so there is nothing to mask; run a condition with "
            "evidence or disable reliance"
        )
    repair_jsonl(path)
    done = {r.key for r in reader.reliance()}
    summary = RelianceSummary()
    jobs: dict[str, list[RelianceJob]] = {}
    for record in selected:
        if record.key in done:
            summary.already_done += 1
            continue
        corpus_name = owner[record.item]
        answering = manifest.formulations.get(record.model, {}).get(corpus_name, {})
        prior = (answering.get("position_prior") or {}).get(str(len(record.letters)))
        jobs.setdefault(record.model, []).append(
            RelianceJob(
                record.model_dump_json(),
                corpus_name,
                None if prior is None else tuple(float(x) for x in prior),
            )
        )
    return ReliancePlan(path, jobs, summary)


def measure_jobs(
    lm: Any, jobs: Sequence[RelianceJob], corpora: dict[str, Corpus], config: ExperimentConfig
) -> Iterator[RelianceRecord]:
    """Measure responses in order with one model (the cloze-PMI neutral prompt scored
    once per option set); ``corpora`` by name."""
    from safescale.models import NEUTRAL_MESSAGE

    settings = config.reliance
    neutral: dict[tuple[str, ...], np.ndarray] = {}
    for job in jobs:
        record = job.response()
        corpus = corpora[job.corpus]
        texts = tuple(corpus.item(record.item).options[x] for x in record.letters)
        if record.formulation == "cloze_pmi" and texts not in neutral:
            neutral[texts] = lm.score_continuations([NEUTRAL_MESSAGE], [list(texts)]).logprob[0]
        yield measure_reliance(
            lm,
            record,
            corpus,
            mode=settings.mode,
            tolerance=settings.tolerance,
            position_prior=job.prior,
            neutral_logprob=neutral.get(texts),
        )


def tally(summary: RelianceSummary, result: RelianceRecord) -> None:
    """Count one measured record in a summary."""
    if result.status == "ok":
        summary.measured += 1
    elif result.status == "mismatch":
        summary.mismatched += 1
    else:
        summary.skipped += 1


def print_summary(console: Console, summary: RelianceSummary, path: Path) -> None:
    console.print(
        f"reliance: {summary.measured} measured, {summary.mismatched} mismatched, "
        f"{summary.skipped} skipped, {summary.already_done} already done -> {path}"
    )


def run_reliance_stage(
    config: ExperimentConfig, *, console: Console | None = None
) -> RelianceSummary:
    """The runner's reliance stage: measure every selected response of the run
    directory not measured yet, appending to ``reliance.jsonl`` under the run lock.
    Never regenerates answers; loads each model only when it has work."""
    from safescale.experiments.runner import lazy_model, model_loader

    if not config.reliance.enabled:
        return RelianceSummary()
    console = console or Console(stderr=True)
    reader = RunDir(config.run_dir)
    manifest = reader.manifest()
    corpora = reader.corpora(manifest)
    load = model_loader(config.models)
    with RunLock(reader.path):
        plan = plan_reliance(config)
        for name, entry in manifest.models.items():
            mine = plan.jobs.get(name)
            if not mine:
                continue
            lm = lazy_model(load, name, entry, reader)()
            console.print(f"reliance: {name} ({len(mine)} responses, mode {config.reliance.mode})")
            for result in measure_jobs(lm, mine, corpora, config):
                append_lines(plan.path, [result.model_dump_json()])
                tally(plan.summary, result)
    print_summary(console, plan.summary, plan.path)
    return plan.summary
