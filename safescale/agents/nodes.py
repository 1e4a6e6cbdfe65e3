"""Graph nodes shared by the condition modules.

Every node is a small function ``(state, runtime) -> partial state``: it never mutates
the state, and it appends exactly one step record describing what it did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from langgraph.runtime import Runtime

from safescale.agents import prompts
from safescale.agents.answering import OptionScores, answer_prompt, message_for, read_options
from safescale.agents.context import AgentContext, Critic, Critique
from safescale.agents.lmcache import CachedLM
from safescale.agents.state import AgentState, EvidenceRef
from safescale.corpora import Item, Passage, Status
from safescale.models import ANSWER_CUE, NEUTRAL_MESSAGE, Generation, LanguageModel, PromptPass
from safescale.models.interface import BlackBoxModel, WhiteBoxModel
from safescale.rundir import RetrievedRef

__all__ = [
    "CORPUS_ORDER_RULE",
    "LEAVE_OUT_RULE",
    "ContextBlock",
    "answer_node",
    "corpus_order",
    "critique_node",
    "default_critic",
    "item_of",
    "judge",
    "leave_out_sequence",
    "make_critique_node",
    "max_context_block",
    "oracle_evidence_node",
    "pack_context_node",
    "parse_letter",
    "passages_of",
    "requery_node",
    "retrieve_node",
    "step_record",
    "synthesize_node",
]

Node = Callable[[AgentState, Runtime[AgentContext]], dict[str, Any]]


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _refs(ctx: AgentContext, evidence: list[EvidenceRef]) -> list[dict]:
    out = []
    for ref in evidence:
        p = ctx.corpus.passage(ref["id"])
        out.append(
            RetrievedRef(
                id=p.id,
                grade_level=p.grade.level,
                grade_raw=f"{p.grade.system} {p.grade.raw}",
                status=p.status.value,
                score=ref.get("score"),
                rank=ref.get("rank"),
            ).model_dump()
        )
    return out


def step_record(
    state: AgentState,
    ctx: AgentContext,
    node: str,
    started: float,
    *,
    inputs: object,
    retrieved: list[EvidenceRef] | None = None,
    prompt: prompts.Prompt | None = None,
    prompt_text: str | None = None,
    output: str | None = None,
    decision: str | None = None,
    kept: list[str] | None = None,
    dropped: list[str] | None = None,
    detail: dict | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> dict:
    """The step record of one node execution (return it as ``{"steps": [record]}``).

    Args:
        state: the state the node received (gives the item and the step index).
        ctx: the runtime context.
        node: the step's name (attribution reads ``retrieve``, ``critique``,
            ``answer``, ... see :mod:`safescale.agents.contract`).
        started: ``time.perf_counter()`` when the node started.
        inputs: what determined the node's output (hashed into ``inputs_digest``).
        retrieved: the passages the node saw (recorded with grade and status).
        prompt: the versioned prompt template sent to the LM, if any.
        prompt_text: the rendered prompt (hashed with the template's hash).
        output: the node's text output (generated text, query, response).
        decision: what the node decided, in a few words.
        kept: passage ids the node kept or put into the evidence.
        dropped: passage ids the node removed.
        detail: any JSON-serializable extra.
        prompt_tokens: prompt tokens the node spent.
        completion_tokens: tokens the node generated.
    """
    prompt_hash = None
    if prompt is not None:
        prompt_hash = hashlib.sha256(f"{prompt.hash}\x1f{prompt_text or ''}".encode()).hexdigest()[
            :16
        ]
    return {
        "node": node,
        "step": len(state.get("steps", [])),
        "item": state["item_id"],
        "inputs_digest": _digest(inputs),
        "retrieved": _refs(ctx, retrieved or []),
        "kept": kept or [],
        "dropped": dropped or [],
        "prompt_id": f"{prompt.id}@v{prompt.version}" if prompt else None,
        "prompt_hash": prompt_hash,
        "output": output,
        "decision": decision,
        "detail": detail or {},
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "wall_ms": (time.perf_counter() - started) * 1e3,
    }


def passages_of(ctx: AgentContext, evidence: list[EvidenceRef]) -> list[Passage]:
    """The corpus passages of evidence refs, in order."""
    return [ctx.corpus.passage(ref["id"]) for ref in evidence]


def item_of(state: AgentState, ctx: AgentContext) -> Item:
    """The item being answered."""
    return ctx.corpus.item(state["item_id"])


def _prompt_tokens(ctx: AgentContext, message: str) -> int:
    return _prompt_tokens_of(ctx.lm, message)


def _prompt_tokens_of(lm: Any, message: str) -> int:
    return len(lm.prompt_ids(message, answer_cue=True))


# ---------------------------------------------------------------- evidence sources
def _conflict_injection(
    item: Item, ctx: AgentContext, present: list[str], excluded: set[str]
) -> tuple[list[str], dict]:
    """The conflict-dose passages to add (not already present, not excluded) and the
    record of the draw (empty at dose 0)."""
    dose = ctx.settings.conflict_dose
    if dose <= 0:
        return [], {}
    from safescale.corpora.conflict import draw_conflict

    draw = draw_conflict(ctx.corpus, item, dose, ctx.settings.seed)
    added = [pid for pid in draw.ids if pid not in present and pid not in excluded]
    record = {
        "dose": dose,
        "ids": list(draw.ids),
        "added": added,
        "pool_size": draw.pool_size,
        "capped": draw.capped,
    }
    return added, record


def oracle_evidence_node(which: str) -> Node:
    """Put the item's oracle evidence set (``clean`` or ``conflict``) in the context."""

    def gather(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        started = time.perf_counter()
        ctx = runtime.context
        item = item_of(state, ctx)
        excluded = set(state.get("excluded", []))
        ids = [pid for pid in getattr(item.evidence, which) if pid not in excluded]
        added, injection = _conflict_injection(item, ctx, ids, excluded)
        ids = ids + added
        evidence: list[EvidenceRef] = [
            {"id": pid, "score": None, "rank": i} for i, pid in enumerate(ids, 1)
        ]
        decision = f"oracle {which} set ({len(ids) - len(added)} passages)"
        if injection:
            decision += f" + {len(added)} contradicting (dose {injection['dose']})"
        step = step_record(
            state,
            ctx,
            f"{which}_evidence",
            started,
            inputs=[item.id, which, ids],
            retrieved=evidence,
            decision=decision,
            kept=ids,
            detail={"conflict_injection": injection} if injection else None,
        )
        update = {"evidence": evidence, "steps": [step]}
        if injection:
            update["conflict_injection"] = injection
        return update

    gather.__name__ = f"{which}_evidence"
    return gather


def retrieve_node(*, agentic: bool) -> Node:
    """Top-k retrieval from the evidence store.

    Standard RAG: similarity only, no filters. Agentic RAG: current passages only
    (unless ``settings.include_superseded``), grade-aware reranking, and it searches
    with the latest (possibly reformulated) query.
    """

    def retrieve(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        from safescale.retrieval import SearchFilters

        started = time.perf_counter()
        ctx = runtime.context
        if ctx.store is None:
            raise RuntimeError("this condition needs an evidence store in the context")
        item = item_of(state, ctx)
        query = state.get("query") or item.question
        s = ctx.settings
        filters = None
        if agentic and not s.include_superseded:
            filters = SearchFilters.current_only()
        excluded = set(state.get("excluded", []))
        every = not agentic or s.include_superseded  # standard RAG sees every status
        hits = ctx.store.search(
            query,
            k=s.k + len(excluded),
            filters=filters,
            rerank=agentic,
            include_superseded=every,
            include_withdrawn=every,
        )
        hits = [h for h in hits if h.passage.id not in excluded][: s.k]
        evidence: list[EvidenceRef] = [
            {"id": h.passage.id, "score": float(h.score), "rank": h.rank} for h in hits
        ]
        # conflict dose: the drawn passages join the store's candidates after the hits
        added, injection = _conflict_injection(item, ctx, [e["id"] for e in evidence], excluded)
        evidence += [
            {"id": pid, "score": None, "rank": len(evidence) + j} for j, pid in enumerate(added, 1)
        ]
        update: dict = {
            "candidates": evidence,
            "evidence": evidence,
            "steps": [
                step_record(
                    state,
                    ctx,
                    "retrieve",
                    started,
                    inputs=[query, s.k, agentic],
                    retrieved=evidence,
                    output=query,
                    decision=f"retrieved {len(hits)}",
                    kept=[e["id"] for e in evidence],
                    detail={
                        "query": query,
                        "filters": "current_only" if filters else "none",
                        "rerank": agentic,
                        **({"conflict_injection": injection} if injection else {}),
                    },
                )
            ],
        }
        if injection:
            update["conflict_injection"] = injection
        if not state.get("queries"):
            update["queries"] = [query]
        return update

    return retrieve


#: The fixed corpus order of max-context's ``corpus`` packing (see
#: :func:`corpus_order`).
CORPUS_ORDER_RULE = (
    "by topic, then grade level (strongest first), then source date (newest first, "
    "undated last), then passage id"
)
#: Which passages ``corpus`` packing leaves out first when the corpus does not fit.
LEAVE_OUT_RULE = (
    "withdrawn, then superseded, then the weakest grade level, then the oldest source "
    "date, then the last in corpus order"
)
_STATUS_KEEP_RANK = {Status.WITHDRAWN: 0, Status.SUPERSEDED: 1, Status.CURRENT: 2}


def corpus_order(passages: list[Passage]) -> list[Passage]:
    """Passages in max-context's fixed corpus order (:data:`CORPUS_ORDER_RULE`)."""

    def key(p: Passage) -> tuple:
        date = p.source.date
        newest_first = -(date.toordinal() if date else 0)
        return (p.topic or "", p.grade.level, date is None, newest_first, p.id)

    return sorted(passages, key=key)


def leave_out_sequence(ordered: list[Passage]) -> list[Passage]:
    """``ordered`` (corpus order) in the order ``corpus`` packing leaves passages out
    (:data:`LEAVE_OUT_RULE`)."""
    position = {p.id: i for i, p in enumerate(ordered)}

    def key(p: Passage) -> tuple:
        date = p.source.date
        return (
            _STATUS_KEEP_RANK.get(Status(p.status), 2),
            -p.grade.level,
            date is not None,
            date.toordinal() if date else 0,
            -position[p.id],
        )

    return sorted(ordered, key=key)


@dataclasses.dataclass(frozen=True)
class ContextBlock:
    """Max-context's shared evidence block under ``corpus`` order: the same passages in
    the same order for every item of a corpus.

    Attributes:
        kept: passage ids in the block, in corpus order.
        left_out: passage id -> why it is not in the block.
        limit: prompt tokens allowed (budget minus the answer reserve).
        evidence_tokens: tokens the block may take: ``limit`` minus the prompt of the
            corpus's longest item without evidence (so every item fits).
        longest_item: that item.
    """

    kept: tuple[str, ...]
    left_out: dict[str, str]
    limit: int
    evidence_tokens: int
    longest_item: str


def max_context_block(
    lm: Any,
    corpus: Any,
    *,
    limit: int,
    formulation: str,
    excluded: frozenset[str] = frozenset(),
) -> ContextBlock:
    """The shared evidence block of ``corpus`` packing (see :func:`pack_context_node`).

    Every passage of the corpus (but ``excluded``) in :func:`corpus_order`; when they
    do not all fit, passages are left out in :data:`LEAVE_OUT_RULE` order until the
    prompt of the corpus's longest item (under ``formulation``, without evidence) plus
    the block is within ``limit`` tokens: the same block for every item.
    """
    bases = {
        item.id: _prompt_tokens_of(lm, message_for(formulation, item, [], None))
        for item in corpus.items
    }
    longest_id = max(bases, key=lambda i: (bases[i], i))
    longest = corpus.item(longest_id)
    ordered = [p for p in corpus_order(list(corpus.passages)) if p.id not in excluded]
    costs = {
        p.id: lm.count_tokens(prompts.passage_line(i, p) + "\n")
        for i, p in enumerate(ordered, start=1)
    }
    used = bases[longest_id] + lm.count_tokens("Evidence:\n\n") + sum(costs.values())
    kept = {p.id for p in ordered}
    left_out: dict[str, str] = {}
    sequence = iter(leave_out_sequence(ordered))
    reason = (
        f"the corpus does not fit: the block is shared by every item and may take "
        f"{limit - bases[longest_id]} tokens (the limit {limit} minus the longest item's "
        f"prompt, {longest_id}); left out in the order {LEAVE_OUT_RULE}"
    )

    def leave_out() -> str:
        passage = next(sequence)
        kept.discard(passage.id)
        left_out[passage.id] = reason
        return passage.id

    while used > limit and kept:
        used -= costs[leave_out()]
    # exact check on the longest item's real prompt (token merges at boundaries)
    while kept:
        block = [p for p in ordered if p.id in kept]
        if _prompt_tokens_of(lm, message_for(formulation, longest, block, None)) <= limit:
            break
        leave_out()
    return ContextBlock(
        kept=tuple(p.id for p in ordered if p.id in kept),
        left_out=left_out,
        limit=limit,
        evidence_tokens=limit - bases[longest_id],
        longest_item=longest_id,
    )


def pack_context_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Max-context packing, in the order ``settings.max_context_order`` names.

    Budget: ``settings.context_budget`` capped at the model's context length; the full
    prompt (with answer cue) stays within ``limit = budget - answer_reserve`` tokens.

    ``similarity``: every passage of the corpus ranked by similarity to the question
    (the store's flat ranking over all passages); whole passages are added in that
    order while the prompt (lettered, as :func:`~safescale.agents.prompts.answer_message`
    shows it) stays within the limit; a passage that does not fit is left out and
    packing continues with the next (smaller ones may still fit). Each item gets its
    own evidence block.

    ``corpus``: every passage in one fixed corpus order (:data:`CORPUS_ORDER_RULE`),
    the same block for every item (:func:`max_context_block`): when the corpus does not
    fit, passages are left out in :data:`LEAVE_OUT_RULE` order until the block fits
    beside the corpus's longest item, so what is left out is the same for every item
    and only the question differs between prompts (a prefix cache then prefills the
    block once). A conflict dose's drawn passages that the block lacks go after it,
    room being made from the block's end; that item's block then differs from there on.

    Left-out ids (and, for ``corpus``, why) are recorded in the step.
    """
    started = time.perf_counter()
    ctx = runtime.context
    item = item_of(state, ctx)
    s = ctx.settings
    budget = min(s.context_budget or ctx.lm.context_length, ctx.lm.context_length)
    limit = budget - s.answer_reserve
    excluded = set(state.get("excluded", []))
    if s.max_context_order == "corpus":
        kept, left_out, injection, detail = _pack_corpus_order(item, ctx, limit, excluded)
    else:
        kept, left_out, injection = _pack_by_similarity(item, ctx, limit, excluded)
        detail = {"order_rule": "every passage ranked by similarity to the question"}
    step = step_record(
        state,
        ctx,
        "pack_context",
        started,
        inputs=[item.id, budget, s.answer_reserve, s.max_context_order],
        retrieved=kept,
        decision=f"packed {len(kept)}, left out {len(left_out)}",
        kept=[e["id"] for e in kept],
        dropped=left_out,
        detail={
            "budget": budget,
            "limit": limit,
            "order": s.max_context_order,
            **detail,
            **({"conflict_injection": injection} if injection else {}),
        },
    )
    update = {"evidence": kept, "left_out": left_out, "steps": [step]}
    if injection:
        update["conflict_injection"] = injection
    return update


def _pack_by_similarity(
    item: Item, ctx: AgentContext, limit: int, excluded: set[str]
) -> tuple[list[EvidenceRef], list[str], dict]:
    if ctx.store is None:
        raise RuntimeError("max_context needs an evidence store in the context")
    ranked = ctx.store.search(
        item.question, k=len(ctx.store), include_superseded=True, include_withdrawn=True
    )
    hits = [h for h in ranked if h.passage.id not in excluded]
    # conflict dose: the drawn passages move to the front of the ranking
    added, injection = _conflict_injection(item, ctx, [], excluded)
    hits.sort(key=lambda h: added.index(h.passage.id) if h.passage.id in added else len(added))
    base = _prompt_tokens(ctx, prompts.answer_message(item, [], None))
    header = ctx.lm.count_tokens("Evidence:\n\n")
    used = base + header
    kept: list[EvidenceRef] = []
    left_out: list[str] = []
    for h in hits:
        cost = ctx.lm.count_tokens(prompts.passage_line(len(kept) + 1, h.passage) + "\n")
        if used + cost <= limit:
            kept.append({"id": h.passage.id, "score": float(h.score), "rank": h.rank})
            used += cost
        else:
            left_out.append(h.passage.id)
    # exact check on the real prompt (token merges at boundaries can differ slightly)
    while kept:
        message = prompts.answer_message(item, passages_of(ctx, kept))
        if _prompt_tokens(ctx, message) <= limit:
            break
        left_out.insert(0, kept.pop()["id"])
    return kept, left_out, injection


def _pack_corpus_order(
    item: Item, ctx: AgentContext, limit: int, excluded: set[str]
) -> tuple[list[EvidenceRef], list[str], dict, dict]:
    s = ctx.settings
    key = ("max_context_block", ctx.corpus.name, limit, s.formulation, frozenset(excluded))
    block = ctx.memo.get(key)
    if block is None:
        block = max_context_block(
            ctx.lm, ctx.corpus, limit=limit, formulation=s.formulation,
            excluded=frozenset(excluded),
        )  # fmt: skip
        ctx.memo[key] = block
    ids = list(block.kept)
    reasons = dict(block.left_out)
    added, injection = _conflict_injection(item, ctx, ids, excluded)
    ids += added
    # this item's own prompt must fit too (the dose's passages, token merges): room is
    # made from the block's end, never from the drawn passages
    while True:
        message = message_for(s.formulation, item, [ctx.corpus.passage(p) for p in ids])
        if _prompt_tokens(ctx, message) <= limit:
            break
        tail = [pid for pid in ids if pid not in added]
        if not tail:
            break
        ids.remove(tail[-1])
        reasons[tail[-1]] = (
            "room for this item's conflict-dose passages"
            if added
            else "this item's prompt is over the limit with the shared block"
        )
    kept: list[EvidenceRef] = [{"id": pid, "score": None, "rank": i} for i, pid in
                               enumerate(ids, 1)]  # fmt: skip
    left_out = list(reasons)
    detail = {
        "order_rule": CORPUS_ORDER_RULE,
        "leave_out_rule": LEAVE_OUT_RULE,
        "shared_block": len(block.kept),
        "evidence_tokens": block.evidence_tokens,
        "longest_item": block.longest_item,
        "left_out_reasons": reasons,
    }
    return kept, left_out, injection, detail


# ---------------------------------------------------------------- agentic nodes
def _mentions(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words (case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(phrase.lower())}(?!\w)", text.lower()) is not None


def judge(
    ctx: AgentContext,
    messages: list[str],
    answers: tuple[str, str],
    *,
    baseline: str | None = None,
) -> tuple[list[float], int]:
    """A two-way LM judgement read as continuations (cloze, PMI-normalized).

    Each answer text is scored after the answer cue of each prompt, minus its score
    after the neutral prompt (so an answer the model likes whatever the question gains
    nothing). The margin of a prompt is ``pmi(answers[1]) - pmi(answers[0])`` (positive:
    the second answer wins). With ``baseline`` (the same prompt with its content
    replaced by "N/A"), the baseline's margin is subtracted: contextual calibration
    (Zhao et al., 2021), so the judgement is what the *content* changes, not the
    model's bias towards one answer for this kind of prompt.

    Returns:
        The margin per prompt and the prompt tokens spent.
    """
    batch = [*messages, baseline] if baseline is not None else list(messages)
    scores = ctx.lm.score_continuations(batch, list(answers)).logprob
    neutral = ctx.lm.score_continuations([NEUTRAL_MESSAGE], list(answers)).logprob[0]
    pmi = scores - neutral
    margins = [float(row[1] - row[0]) for row in pmi]
    if baseline is not None:
        offset = margins.pop()
        margins = [m - offset for m in margins]
    tokens = sum(_prompt_tokens(ctx, m) for m in batch)
    return margins, tokens


def default_critic(item: Item, evidence_ids: list[str], ctx: AgentContext) -> Critique:
    """Rules over metadata, then LM judgements.

    Rules, in order, for each passage: not current -> drop ``superseded``; a scope
    (e.g. ``screening``) that the question does not mention (as whole words) while a
    passage of the *same topic* has a scope the question does mention -> drop
    ``out-of-scope``; an older current passage of the same organization, topic and
    scope as a newer kept one -> drop ``outdated``; grade level weaker than
    ``settings.min_grade_level`` while a passage at or above it is kept -> drop
    ``low-grade``. Then the LM judges each remaining passage's relevance ("relevant" /
    "not relevant" scored as continuations, PMI-normalized and calibrated against the
    same prompt with an "N/A" passage, see :func:`judge`: dropped when the passage
    moves the model towards "not relevant") and whether the kept passages conflict
    ("they agree" / "they conflict", likewise against "N/A" passages). Decision:
    ``requery`` when nothing relevant is left, else ``proceed``.
    """
    s = ctx.settings
    passages = [ctx.corpus.passage(pid) for pid in evidence_ids]
    question = item.question
    drop: dict[str, str] = {}
    for p in passages:
        if p.status is not Status.CURRENT:
            drop[p.id] = p.status.value
    topics_with_scope_in_question = {
        p.topic for p in passages if p.scope and _mentions(question, p.scope)
    }
    for p in passages:
        if (
            p.id not in drop
            and p.scope
            and p.topic in topics_with_scope_in_question
            and not _mentions(question, p.scope)
        ):
            drop[p.id] = "out-of-scope"
    for p in passages:
        if p.id in drop or p.source.date is None:
            continue
        for q in passages:
            if (
                q.id not in drop
                and q.id != p.id
                and q.source.org == p.source.org
                and q.topic == p.topic
                and q.source.date
                and q.source.date > p.source.date
                and q.scope == p.scope
            ):
                drop[p.id] = "outdated"
                break
    remaining = [p for p in passages if p.id not in drop]
    if any(p.grade.level <= s.min_grade_level for p in remaining):
        for p in remaining:
            if p.grade.level > s.min_grade_level:
                drop[p.id] = "low-grade"
    remaining = [p for p in passages if p.id not in drop]
    relevance: dict[str, float] = {}
    prompt_tokens = 0
    if remaining:
        messages = [
            prompts.RELEVANCE.render(passage=prompts.passage_line(1, p), question=item.question)
            for p in remaining
        ]
        margins, tokens = judge(
            ctx,
            messages,
            prompts.RELEVANCE_ANSWERS,
            baseline=prompts.RELEVANCE.render(passage="N/A", question=item.question),
        )
        prompt_tokens += tokens
        for p, irrelevant_margin in zip(remaining, margins, strict=True):
            relevance[p.id] = -irrelevant_margin  # > 0: "relevant" wins
            if irrelevant_margin > 0:
                drop[p.id] = "judged irrelevant"
    keep = [p.id for p in passages if p.id not in drop]
    conflict = False
    conflict_margin = None
    if len(keep) >= 2:
        message = prompts.CONFLICT.render(
            evidence=prompts.evidence_block([ctx.corpus.passage(pid) for pid in keep]),
            question=item.question,
        )
        (conflict_margin,), tokens = judge(
            ctx,
            [message],
            prompts.CONFLICT_ANSWERS,
            baseline=prompts.CONFLICT.render(
                evidence="Evidence:\n"
                + "\n".join(f"[P{i}] N/A" for i in range(1, len(keep) + 1))
                + "\n\n",
                question=item.question,
            ),
        )
        prompt_tokens += tokens
        conflict = conflict_margin > 0
    return Critique(
        keep=keep,
        drop=drop,
        decision="proceed" if keep else "requery",
        conflict=conflict,
        detail={
            "relevance_margin": relevance,
            "conflict_margin": conflict_margin,
            "judgement": f"cloze PMI, calibrated on an N/A passage (relevance "
            f"v{prompts.RELEVANCE.version}, conflict v{prompts.CONFLICT.version})",
        },
        prompt_tokens=prompt_tokens,
    )


def make_critique_node(critic: Critic | None = None) -> Node:
    """A critique node applying ``critic`` (default: the context's critic, else
    :func:`default_critic`); its step is named ``critique``."""

    def critique(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        started = time.perf_counter()
        ctx = runtime.context
        item = item_of(state, ctx)
        ids = [e["id"] for e in state.get("evidence", [])]
        judge_evidence = critic or ctx.critic or default_critic
        verdict = judge_evidence(item, ids, ctx)
        by_id = {e["id"]: e for e in state.get("evidence", [])}
        kept = [by_id[pid] for pid in verdict.keep if pid in by_id]
        rounds = state.get("round", 0) + 1
        step = step_record(
            state,
            ctx,
            "critique",
            started,
            inputs=[item.id, ids],
            retrieved=state.get("evidence", []),
            decision=verdict.decision,
            kept=[e["id"] for e in kept],
            dropped=sorted(verdict.drop),
            output=json.dumps(verdict.drop, sort_keys=True),
            detail={
                "reasons": verdict.drop,
                "conflict": verdict.conflict,
                **verdict.detail,
                "round": rounds,
            },
            prompt_tokens=verdict.prompt_tokens,
        )
        return {
            "evidence": kept,
            "dropped": [{"id": pid, "reason": why} for pid, why in verdict.drop.items()],
            "critique": verdict.model_dump(),
            "conflict_surfaced": verdict.conflict,
            "round": rounds,
            "steps": [step],
        }

    return critique


#: Apply the critic from the context (default: :func:`default_critic`).
critique_node = make_critique_node()


def requery_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Reformulate the query with the LM (greedy) for the next retrieval round."""
    started = time.perf_counter()
    ctx = runtime.context
    item = item_of(state, ctx)
    message = prompts.REFORMULATE.render(question=item.question)
    (gen,) = ctx.lm.generate([message], max_new_tokens=ctx.settings.query_tokens)[0]
    query = " ".join(gen.text.split()) or item.question
    if query in state.get("queries", []):
        # the LM repeated itself: widen the query with the option texts instead
        query = f"{item.question} {' '.join(item.options.values())}"
    step = step_record(
        state,
        ctx,
        "requery",
        started,
        inputs=[item.id, state.get("queries", [])],
        prompt=prompts.REFORMULATE,
        prompt_text=message,
        output=query,
        decision="re-query",
        prompt_tokens=len(ctx.lm.prompt_ids(message)),
        completion_tokens=len(gen.token_ids),
    )
    return {"query": query, "queries": [query], "steps": [step]}


def synthesize_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Summarize the kept evidence, citing ``[P#]``; records why gathering stopped."""
    started = time.perf_counter()
    ctx = runtime.context
    item = item_of(state, ctx)
    evidence = state.get("evidence", [])
    critique = state.get("critique", {})
    if not evidence:
        reason = "nothing relevant"
    elif critique.get("decision") == "requery":
        reason = "budget"
    else:
        reason = "enough evidence"
    if state.get("conflict_surfaced") and evidence:
        reason += "; unresolved conflict surfaced"
    if not evidence:
        step = step_record(
            state,
            ctx,
            "synthesize",
            started,
            inputs=[item.id, []],
            decision=f"stop: {reason}",
            output="",
        )
        return {"synthesis": "", "cited_ids": [], "stop_reason": reason, "steps": [step]}
    passages = passages_of(ctx, evidence)
    note = (
        " The sources conflict: say so and state which is current and higher grade."
        if state.get("conflict_surfaced")
        else ""
    )
    message = prompts.SYNTHESIZE.render(
        evidence=prompts.evidence_block(passages), question=item.question, conflict_note=note
    )
    (gen,) = ctx.lm.generate([message], max_new_tokens=ctx.settings.synthesis_tokens)[0]
    text = " ".join(gen.text.split())
    cited = prompts.parse_citations(text, [p.id for p in passages])
    step = step_record(
        state,
        ctx,
        "synthesize",
        started,
        inputs=[item.id, [p.id for p in passages]],
        retrieved=evidence,
        prompt=prompts.SYNTHESIZE,
        prompt_text=message,
        output=text,
        decision=f"stop: {reason}",
        kept=cited,
        detail={"cited": cited},
        prompt_tokens=len(ctx.lm.prompt_ids(message)),
        completion_tokens=len(gen.token_ids),
    )
    return {"synthesis": text, "cited_ids": cited, "stop_reason": reason, "steps": [step]}


# ---------------------------------------------------------------- answer
def _raw_lm(ctx: AgentContext) -> LanguageModel:
    return ctx.lm.lm if isinstance(ctx.lm, CachedLM) else ctx.lm


class SharedPrompt:
    """The answer's (cached) LM as a :class:`~safescale.models.interface.BlackBoxModel`,
    except that the answer prompt's letters and continuations are read from one shared
    prompt pass (see :meth:`LanguageModel.open_prompt`); every other call goes to the
    LM as usual (delegated explicitly)."""

    def __init__(self, lm: BlackBoxModel, raw: WhiteBoxModel, state: PromptPass):
        self._lm, self._raw, self._state = lm, raw, state

    @property
    def name(self) -> str:
        return self._lm.name

    @property
    def model_hash(self) -> str:
        return self._lm.model_hash

    @property
    def whitebox(self) -> bool:
        return self._lm.whitebox

    @property
    def n_layers(self) -> int | None:
        return self._lm.n_layers

    @property
    def n_parameters(self) -> int | None:
        return self._lm.n_parameters

    @property
    def context_length(self) -> int:
        return self._lm.context_length

    @property
    def prompt_format_id(self) -> str:
        return self._lm.prompt_format_id

    @property
    def tokenizer(self) -> Any:
        return self._lm.tokenizer

    @property
    def use_chat_template(self) -> bool:
        return self._lm.use_chat_template

    @property
    def batch_size(self) -> int:
        return self._lm.batch_size

    @property
    def formulations(self) -> frozenset[str] | None:
        return self._lm.formulations

    @property
    def CUED_SAMPLING_LAYOUT(self) -> int | str:
        return self._lm.CUED_SAMPLING_LAYOUT

    def prompt_text(self, message: str, *, answer_cue: bool = False) -> str:
        return self._lm.prompt_text(message, answer_cue=answer_cue)

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        return self._lm.prompt_ids(message, answer_cue=answer_cue)

    def count_tokens(self, text: str) -> int:
        return self._lm.count_tokens(text)

    def letter_token_ids(self, letters: Sequence[str]) -> list[int]:
        return self._lm.letter_token_ids(letters)

    def continuation_ids(self, text: str) -> list[int]:
        return self._lm.continuation_ids(text)

    def generate(
        self,
        messages: Sequence[str],
        *,
        max_new_tokens: int = 64,
        n: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
        answer_cue: bool = False,
    ) -> list[list[Generation]]:
        return self._lm.generate(
            messages,
            max_new_tokens=max_new_tokens,
            n=n,
            temperature=temperature,
            seed=seed,
            answer_cue=answer_cue,
        )

    def score_options(self, messages, letters):
        if list(messages) == [self._state.message]:
            scores = self._raw.score_options_from(self._state, letters)
            if scores is not None:
                return scores[None]
        return self._lm.score_options(messages, letters)

    def score_continuations(self, messages, continuations, *, answer_cue: bool = True):
        if answer_cue and list(messages) == [self._state.message] and continuations:
            texts = continuations if isinstance(continuations[0], str) else continuations[0]
            scores = self._raw.score_continuations_from(self._state, list(texts))
            if scores is not None:
                return scores
        return self._lm.score_continuations(messages, continuations, answer_cue=answer_cue)


def _read_shared(
    ctx: AgentContext,
    item: Item,
    passages: list[Passage],
    summary: str | None,
    prior: dict[str, list[float]],
) -> tuple[OptionScores, object | None]:
    """Read the answer from a prompt pass the detection inputs will extend (cached as
    one composite call, so a replay or resume runs no model for it)."""
    s = ctx.settings
    message = message_for(s.formulation, item, passages, summary)
    payload = [message, s.formulation, item.letters, item.options, prior]
    if isinstance(ctx.lm, CachedLM):
        hit = ctx.lm.lookup("shared_answer", payload)
        if hit is not None:
            return OptionScores(**hit), None
    raw = _raw_lm(ctx)
    handle = ctx.detection.open(raw, message)
    shared = SharedPrompt(ctx.lm, raw, handle.state)
    read = read_options(shared, item, passages, summary, s.formulation, position_prior=prior)
    if isinstance(ctx.lm, CachedLM):
        ctx.lm.store("shared_answer", payload, dataclasses.asdict(read))
    return read, handle


def parse_letter(text: str, letters: list[str]) -> str | None:
    """The option letter a generated answer starts with (``" B) ..."``, ``"B."``, ``"(B"``)."""
    stripped = text.strip().lstrip("([*").strip()
    if stripped and stripped[0] in letters and (len(stripped) == 1 or not stripped[1].isalnum()):
        return stripped[0]
    return None


def answer_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Read the answer under ``settings.formulation`` (see
    :mod:`safescale.agents.answering`); with ``settings.samples > 1`` also N sampled
    answers and a majority vote (ties go to the higher formulation score); the vote
    share is the confidence."""
    started = time.perf_counter()
    ctx = runtime.context
    s = ctx.settings
    item = item_of(state, ctx)
    letters = item.letters
    passages = passages_of(ctx, state.get("evidence", []))
    summary = state.get("synthesis") or None
    prior = {k: list(v) for k, v in (s.position_prior or {}).items()}
    handle = None
    if ctx.detection is not None and s.formulation != "letter_cyclic":
        read, handle = _read_shared(ctx, item, passages, summary, prior)
    else:
        read = read_options(ctx.lm, item, passages, summary, s.formulation, position_prior=prior)
    message = read.message
    message_noctx = message_for(s.formulation, item, [], None)
    scores = read.scores
    greedy = letters[int(np.argmax(scores))]
    n_samples = s.samples if s.samples > 1 else s.extra_samples
    samples = []
    completion_tokens = 1
    if n_samples:
        decoding = {
            "max_new_tokens": s.sample_tokens,
            "n": n_samples,
            "temperature": s.temperature,
            "seed": s.seed,
        }
        opened = getattr(handle, "state", None)
        if opened is not None and opened.message == message:
            # decode from the answer's prompt cache: the same samples as generate()
            gens = ctx.lm.generate_from(opened, **decoding)
        else:
            gens = ctx.lm.generate([message], answer_cue=True, **decoding)[0]
        for g in gens:
            samples.append(
                {
                    "text": g.text,
                    "letter": parse_letter(g.text, letters),
                    "token_ids": list(g.token_ids),
                    "token_logprobs": list(g.token_logprobs),
                    "temperature": s.temperature,
                }
            )
            completion_tokens += len(g.token_ids)
    chosen, vote_share = greedy, 1.0
    if s.samples > 1:
        votes = Counter(x["letter"] for x in samples if x["letter"] is not None)
        if votes:
            top = max(votes.values())
            tied = [letter for letter in letters if votes.get(letter) == top]
            chosen = max(tied, key=lambda letter: scores[letters.index(letter)])
            vote_share = top / len(samples)
        else:
            vote_share = 0.0
    response = f"{ANSWER_CUE} {chosen}) {item.options[chosen]}"
    if ctx.detection is not None:
        ctx.detection.record(
            _raw_lm(ctx),
            handle,
            message=message,
            message_noctx=message_noctx,
            response=response,
            chosen=chosen,
            samples=samples,
        )
    prompt_tokens = _prompt_tokens(ctx, message)
    answer = {
        "letters": letters,
        "formulation": read.formulation,
        "option_logits": [float(x) for x in scores],
        "chosen": chosen,
        "greedy": greedy,
        "vote_share": vote_share,
        "samples": samples,
        "response": response,
        "message": message,
        "message_noctx": message_noctx,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }
    step = step_record(
        state,
        ctx,
        "answer",
        started,
        inputs=[item.id, message, s.samples, s.formulation],
        retrieved=state.get("evidence", []),
        prompt=answer_prompt(s.formulation),
        prompt_text=message,
        output=response,
        decision=f"chose {chosen}",
        detail={
            "formulation": read.formulation,
            "option_scores": dict(zip(letters, answer["option_logits"], strict=True)),
            "vote_share": vote_share,
            "greedy": greedy,
            **read.detail,
        },
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    return {"answer": answer, "steps": [step]}
