"""Every prompt the agents send, in one place, each with a version.

A prompt's hash (``Prompt.hash``: sha256 over id, version and template) goes into each
step record, so a changed template is visible in the logs and invalidates cached LM
calls. Evidence passages are shown numbered ``[P1]``, ``[P2]``, ... with their source,
grade and status; citations of that form are parsed back to passage ids.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from safescale.corpora import Item, Passage

__all__ = [
    "ANSWER",
    "CLOZE",
    "CONFLICT",
    "CONFLICT_ANSWERS",
    "REFORMULATE",
    "RELEVANCE",
    "RELEVANCE_ANSWERS",
    "SYNTHESIZE",
    "Prompt",
    "answer_message",
    "cloze_message",
    "evidence_block",
    "options_block",
    "parse_citations",
    "passage_line",
]


@dataclass(frozen=True)
class Prompt:
    """A versioned template (``str.format`` fields)."""

    id: str
    version: int
    template: str

    @property
    def hash(self) -> str:
        payload = f"{self.id}\x1f{self.version}\x1f{self.template}"
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def render(self, **fields: str) -> str:
        return self.template.format(**fields)


ANSWER = Prompt(
    "answer",
    1,
    "{evidence}Question: {question}\n{options}\nAnswer with the letter of the correct option.",
)
# The critic's judgements are read as continuations (cloze, PMI-normalized against the
# neutral prompt): the answer texts below are scored after the answer cue.
# The cloze formulation (OLMES "CF"): no option list, the option texts are scored as
# continuations after the answer cue. Listing the options here (or asking for a letter)
# makes a small model's cloze scores follow the list, not the evidence.
CLOZE = Prompt("cloze", 1, "{evidence}Question: {question}")
# v3: the question comes first, so the per-passage prompts of one critique share it as
# a prefix (one prefill) and only the passage differs.
RELEVANCE = Prompt(
    "relevance",
    3,
    "Question: {question}\n\nPassage:\n{passage}\n\n"
    "Is this passage relevant to answering the question? Answer relevant or not relevant.",
)
RELEVANCE_ANSWERS = ("relevant", "not relevant")
# v3: question first, like the relevance prompts of the same critique.
CONFLICT = Prompt(
    "conflict",
    3,
    "Question: {question}\n\n{evidence}"
    "Do these passages agree or conflict in what they recommend for this question? "
    "Answer they agree or they conflict.",
)
CONFLICT_ANSWERS = ("they agree", "they conflict")
REFORMULATE = Prompt(
    "reformulate",
    1,
    "Rewrite this clinical question as a short search query for a guideline database. "
    "Reply with the query only.\nQuestion: {question}",
)
SYNTHESIZE = Prompt(
    "synthesize",
    1,
    "{evidence}Question: {question}\n"
    "Summarize in one or two sentences what the evidence recommends for this question. "
    "Cite passages as [P1], [P2].{conflict_note}",
)

_CITATION = re.compile(r"\[P(\d+)\]")


def options_block(item: Item, order: Sequence[str] | None = None) -> str:
    """``A) text`` lines: letters in the item's order; with ``order`` (a permutation of
    the item's letters) position ``j`` shows the text of option ``order[j]``."""
    letters = item.letters
    shown = letters if order is None else list(order)
    return "\n".join(
        f"{letter}) {item.options[source]}" for letter, source in zip(letters, shown, strict=True)
    )


def passage_line(number: int, passage: Passage) -> str:
    """One numbered evidence entry with source, grade and status."""
    src = passage.source
    version = f" {src.version}" if src.version else ""
    return (
        f"[P{number}] {src.org}{version} (grade {passage.grade.system} {passage.grade.raw}, "
        f"{passage.status.value}): {passage.text}"
    )


def evidence_block(passages: Sequence[Passage], summary: str | None = None) -> str:
    """The evidence section of a prompt ("" when there is none)."""
    if not passages and not summary:
        return ""
    lines = ["Evidence:"]
    lines += [passage_line(i, p) for i, p in enumerate(passages, start=1)]
    if summary:
        lines.append(f"Evidence summary: {summary}")
    return "\n".join(lines) + "\n\n"


def answer_message(
    item: Item,
    passages: Sequence[Passage],
    summary: str | None = None,
    order: Sequence[str] | None = None,
) -> str:
    """The user turn the answer is read from (evidence, question, options; the option
    texts shown in ``order``, see :func:`options_block`)."""
    return ANSWER.render(
        evidence=evidence_block(passages, summary),
        question=item.question,
        options=options_block(item, order),
    )


def cloze_message(item: Item, passages: Sequence[Passage], summary: str | None = None) -> str:
    """The user turn of the cloze formulation (evidence and question, no options)."""
    return CLOZE.render(evidence=evidence_block(passages, summary), question=item.question)


def parse_citations(text: str, passage_ids: Sequence[str]) -> list[str]:
    """Passage ids cited as ``[P#]`` in ``text`` (numbers refer to ``passage_ids``,
    1-based), in first-cited order; out-of-range numbers are ignored."""
    cited: list[str] = []
    for match in _CITATION.finditer(text):
        index = int(match.group(1)) - 1
        if 0 <= index < len(passage_ids) and passage_ids[index] not in cited:
            cited.append(passage_ids[index])
    return cited
