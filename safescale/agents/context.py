"""What reaches graph nodes through LangGraph's runtime context (never globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from safescale.agents.answering import Formulation
from safescale.corpora import Corpus, Item

if TYPE_CHECKING:
    from safescale.agents.lmcache import CachedLM
    from safescale.models import LanguageModel
    from safescale.retrieval import EvidenceStore

__all__ = ["AgentContext", "AgentSettings", "Critic", "Critique", "DetectionRecorder"]


class AgentSettings(BaseModel):
    """Settings of the condition graphs (one per run).

    Attributes:
        k: passages retrieved per query (standard and agentic RAG).
        max_steps: retrieval rounds the agentic loop may take (it always stops).
        include_superseded: let agentic retrieval return superseded/withdrawn passages
            (they are then dropped visibly by the critic) instead of filtering them out.
        min_grade_level: agentic critic drops passages weaker than this level (1..4)
            when a stronger one is kept.
        context_budget: max-context prompt budget in tokens (None: the model limit).
        answer_reserve: tokens left free for the answer in max-context.
        max_context_order: how max-context orders the corpus (see
            :func:`safescale.agents.nodes.pack_context_node`): ``similarity`` (each
            item's own ranking by similarity to its question) or ``corpus`` (one fixed
            corpus order, the same evidence block for every item).
        samples: answers sampled for the majority vote (1 = greedy letter scoring).
        temperature: sampling temperature for samples > 1 and for extra samples.
        extra_samples: sampled answers recorded for detectors when samples == 1
            (not used for the vote).
        sample_tokens: max new tokens per sampled answer.
        synthesis_tokens / query_tokens: generation budgets of the agentic nodes.
        seed: base seed of every sampled call.
        formulation: how the answer is read (see :mod:`safescale.agents.answering`);
            a study's ``auto`` is resolved to one of these before the graphs run.
        position_prior: PriDe position prior per number of options (``letter_pride``).
        conflict_dose: contradicting passages from the item's conflicting pool added
            to the oracle evidence or to the retrieval candidates
            (:mod:`safescale.corpora.conflict`; 0 = none).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(5, ge=1)
    max_steps: int = Field(3, ge=1)
    include_superseded: bool = False
    min_grade_level: int = Field(3, ge=1, le=4)
    context_budget: int | None = Field(None, ge=64)
    answer_reserve: int = Field(16, ge=1)
    max_context_order: Literal["similarity", "corpus"] = "similarity"
    samples: int = Field(1, ge=1)
    temperature: float = Field(0.7, gt=0)
    extra_samples: int = Field(0, ge=0)
    sample_tokens: int = Field(12, ge=2)
    synthesis_tokens: int = Field(48, ge=4)
    query_tokens: int = Field(24, ge=4)
    seed: int = 0
    formulation: Formulation = "cloze_pmi"
    position_prior: dict[str, tuple[float, ...]] | None = None
    conflict_dose: int = Field(0, ge=0)


class Critique(BaseModel):
    """The agentic critic's verdict on the current evidence.

    ``decision``: ``"requery"`` (look again), ``"proceed"`` (synthesize and answer).
    """

    model_config = ConfigDict(extra="forbid")

    keep: list[str]
    drop: dict[str, str] = Field(default_factory=dict)
    decision: str
    conflict: bool = False
    detail: dict[str, object] = Field(default_factory=dict)
    prompt_tokens: int = 0


class Critic(Protocol):
    """Judges retrieved evidence (rules over metadata + LM judgements)."""

    def __call__(self, item: Item, evidence_ids: list[str], ctx: AgentContext) -> Critique: ...


class DetectionRecorder(Protocol):
    """Records what detection needs from the answer's own prompt pass (implemented in
    the detection layer; the runner passes one when detection is configured)."""

    def open(self, lm: LanguageModel, message: str) -> object:
        """Prefill the answer prompt; the handle's ``state`` (a
        :class:`~safescale.models.PromptPass`) then serves the answer."""
        ...

    def record(
        self,
        lm: LanguageModel,
        handle: object | None,
        *,
        message: str,
        message_noctx: str,
        response: str,
        chosen: str,
        samples: list[dict],
    ) -> None:
        """Compute and store the detection inputs of one frozen response (``handle``
        None: open the prompt anew; nothing is computed when already stored)."""
        ...


@dataclass
class AgentContext:
    """Dependencies of the nodes, passed as ``context=`` to ``graph.invoke``.

    Attributes:
        lm: the model (usually a :class:`CachedLM`).
        corpus: items and passages.
        store: the evidence store (RAG conditions and max-context ordering).
        settings: graph settings.
        run_id: recorded in every step.
        critic: agentic critic (default: rules + LM judgements).
        detection: when set, the answer node reads the answer from a prompt pass it
            shares with the detection inputs of the response (see
            :class:`DetectionRecorder`).
        memo: what nodes compute once per context and reuse across its items (e.g.
            max-context's shared corpus block); plain data, never an LM result.
    """

    lm: LanguageModel | CachedLM
    corpus: Corpus
    store: EvidenceStore | None = None
    settings: AgentSettings = field(default_factory=AgentSettings)
    run_id: str = "adhoc"
    critic: Critic | None = None
    detection: DetectionRecorder | None = None
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
