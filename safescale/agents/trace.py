"""Render the steps of one (item, condition) as a rich timeline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from safescale.agents.attribution import Attribution
from safescale.corpora import Item
from safescale.rundir import ResponseRecord, RetrievedRef, StepRecord, context_budget_label

__all__ = ["grade_badge", "render_trace", "status_badge"]

_GRADE_STYLE = {1: "bold green", 2: "cyan", 3: "yellow", 4: "bold red"}
_STATUS_STYLE = {"current": "green", "superseded": "bold red", "withdrawn": "magenta"}


def grade_badge(level: int) -> Text:
    return Text(f"L{level}", style=_GRADE_STYLE.get(level, "white"))


def status_badge(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, "white"))


def _refs(refs: Sequence[RetrievedRef]) -> Text:
    out = Text()
    for i, ref in enumerate(refs):
        if i:
            out.append("\n")
        out.append(ref.id, style="bold")
        out.append(" ")
        out.append_text(grade_badge(ref.grade_level))
        out.append(" ")
        out.append_text(status_badge(ref.status))
        if ref.score is not None:
            out.append(f" {ref.score:.3f}", style="dim")
    return out


def _scores(step: StepRecord) -> str:
    """The LM judgements a step made, as text: the critic's relevance and conflict
    margins (PMI, > 0 means "relevant" / "they conflict" won) and the answer's option
    probabilities under its formulation."""
    detail = step.detail or {}
    parts: list[str] = []
    relevance = detail.get("relevance_margin")
    if isinstance(relevance, dict) and relevance:
        parts.append("relevance: " + ", ".join(f"{pid} {m:+.2f}" for pid, m in relevance.items()))
    conflict = detail.get("conflict_margin")
    if isinstance(conflict, int | float):
        parts.append(f"conflict: {conflict:+.2f}")
    option_scores = detail.get("option_scores")
    if isinstance(option_scores, dict) and option_scores:
        values = np.asarray(list(option_scores.values()), dtype=np.float64)
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        shown = ", ".join(
            f"{letter} {p:.2f}" for letter, p in zip(option_scores, probs, strict=True)
        )
        parts.append(f"{detail.get('formulation', '')} P: {shown}".strip())
    return "\n".join(parts)


def render_trace(
    item: Item,
    response: ResponseRecord,
    steps: Sequence[StepRecord],
    attribution: Attribution | None = None,
    *,
    max_output: int = 240,
) -> Group:
    """A panel with the item and the outcome, then one row per step; the attributed
    failure step is highlighted."""
    verdict = "correct" if response.chosen == item.gold else "wrong"
    if response.chosen in item.labels.high_risk:
        verdict += ", HIGH-RISK"
    elif response.chosen in item.labels.unsafe:
        verdict += ", unsafe"
    header = Text()
    header.append(f"{item.id}", style="bold")
    cell = f"{response.condition} · {response.model} · x{response.samples_budget}"
    if response.conflict_dose:
        cell += f" · dose {response.conflict_dose}"
    cell += f" · k {response.retrieval_k} · context {context_budget_label(response.context_budget)}"
    header.append(f"  [{cell}]\n")
    header.append(item.question + "\n")
    for letter, text in item.options.items():
        mark = " (gold)" if letter == item.gold else ""
        style = "bold green" if letter == item.gold else ""
        if letter == response.chosen:
            style = "bold reverse"
        header.append(f"  {letter}) {text}{mark}\n", style=style)
    header.append(f"chosen {response.chosen}: {verdict}", style="bold")
    if response.stop_reason:
        header.append(f"   stop: {response.stop_reason}")
    if attribution is not None:
        header.append(
            f"\ncause: {attribution.cause} at step {attribution.step} "
            f"({attribution.node}): {attribution.explanation}",
            style="bold red",
        )
    table = Table(show_lines=True, expand=True)
    for col in (
        "#",
        "node",
        "evidence (grade, status, score)",
        "decision",
        "LM output",
        "tok",
        "ms",
    ):
        table.add_column(col, overflow="fold")
    for s in sorted(steps, key=lambda s: s.step):
        failed = attribution is not None and attribution.step == s.step
        output = s.output or ""
        if len(output) > max_output:
            output = output[: max_output - 1] + "…"
        if s.dropped:
            output = (output + "\n" if output else "") + "dropped: " + ", ".join(s.dropped)
        table.add_row(
            str(s.step),
            Text(s.node, style="bold red" if failed else "bold"),
            _refs(s.retrieved),
            "\n".join(x for x in (s.decision or "", _scores(s)) if x),
            output,
            f"{s.prompt_tokens}+{s.completion_tokens}",
            f"{s.wall_ms:.0f}",
            style="on dark_red" if failed else None,
        )
    return Group(Panel(header, title="trace"), table)
