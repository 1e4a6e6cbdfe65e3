"""The condition contract: what a RAG architecture must be to run in a safescale sweep.

A *condition* is a compiled LangGraph ``StateGraph`` returned by a builder
``build_graph(checkpointer=None) -> CompiledStateGraph``. The six bundled conditions
(:mod:`safescale.agents.conditions`) are built this way from the public blocks of
:mod:`safescale.agents.blocks`; a researcher's own condition is built the same way in
their own module and named in an experiment config (see *Naming a condition* below).

State (what a node may read and must write)
    The graph's state schema is :class:`~safescale.agents.state.AgentState` (or a
    ``TypedDict`` with at least its keys :data:`REQUIRED_KEYS`, same reducers). The
    runner starts every item with ``{"item_id": ...}`` only. Nodes are functions
    ``(state, runtime) -> partial state``; they never mutate the state.

    * ``item_id`` (read): the item; ``runtime.context.corpus.item(state["item_id"])``
      gives its question, options and oracle evidence.
    * ``evidence`` (write): the passages in the answer prompt, in prompt order, as
      :class:`~safescale.agents.state.EvidenceRef` dicts ``{"id", "score", "rank"}``
      whose ids are passage ids of the corpus. Replace it as a whole.
    * ``excluded`` (read): passages a what-if replay removed; an evidence node must
      not bring them back (the retrieve block skips them).
    * ``answer`` (write): the read answer, written by the ``answer`` block in a node
      named ``"answer"`` (the answer is read under the run's answer formulation, so
      every condition is scored the same way).
    * ``steps`` (write, accumulates): one step record per node execution, made with
      :func:`~safescale.agents.blocks.step_record`; a node returns only its new
      steps (``Annotated[list[dict], operator.add]``).
    * Optional: ``query`` / ``queries`` (the current / every retrieval query),
      ``candidates``, ``dropped``, ``critique``, ``round``, ``synthesis``,
      ``cited_ids`` (passage ids the synthesis cites), ``stop_reason`` (why
      gathering stopped) and ``conflict_surfaced``. ``cited_ids`` and ``stop_reason``
      are copied into the response record.

Runtime context (what a node gets)
    ``runtime.context`` is an :class:`~safescale.agents.context.AgentContext` (the
    graph's ``context_schema``): ``lm`` (the cached model: ``generate``,
    ``score_continuations``, ``count_tokens``), ``corpus`` (items and passages),
    ``store`` (the evidence store: ``store.search(text, k=...)`` searches by text;
    given to every condition but closed-book and the two oracle ones), ``settings``
    (:class:`~safescale.agents.context.AgentSettings`: ``k``, ``max_steps``,
    budgets, formulation, seed), ``run_id`` and ``critic``. Nothing reaches a node
    through globals, which is what lets a test swap the model or the store.

Building blocks (:mod:`safescale.agents.blocks`)
    ``retrieve_node`` (top-k; searches with ``state["query"]`` or the question),
    ``filter_node`` (drop passages by status / grade level), ``critique_node`` /
    ``make_critique_node(critic)`` (judge the evidence: keep / drop / re-query),
    ``requery_node`` (LM query rewrite), ``synthesize_node`` (cited summary),
    ``pack_context_node`` (as many passages as fit), ``oracle_evidence_node``,
    ``answer_node``; and for custom nodes ``step_record``, ``judge`` (a two-way LM
    judgement read as PMI-normalized continuations, the critic's judge),
    ``item_of`` and ``passages_of``.

Step and node names (what attribution, trace and replay read)
    Failure attribution reads the step records: steps named ``retrieve``,
    ``pack_context``, ``critique``, ``clean_evidence`` / ``conflict_evidence``
    shape the evidence, ``synthesize`` cites it, ``answer`` reads it (the blocks
    record these names). A what-if replay forks after the first graph node named
    ``gather``, ``retrieve`` or ``pack`` (:data:`~safescale.agents.replay.EVIDENCE_NODES`),
    so name your first evidence node so when it is to be replayable.

Naming a condition
    The compiled graph's name (``graph.compile(checkpointer=checkpointer,
    name="hyde")``) is the name its records carry; it must be a slug and not a
    bundled condition's name. A config's ``conditions`` entry is a bundled name, a
    ``module:function`` import path, or the name of an entry point in group
    :data:`ENTRY_POINT_GROUP` (then the records carry the entry point's name).

Checked before any model call
    :func:`check_condition` compiles nothing and calls no model: it inspects a
    compiled graph (channels, context schema, nodes). Configs run it on every
    condition at load time (:func:`safescale.agents.registry.resolve_condition`).
"""

from __future__ import annotations

from langgraph.channels import BinaryOperatorAggregate
from langgraph.graph import END
from langgraph.graph.state import CompiledStateGraph

from safescale.agents.context import AgentContext
from safescale.rundir import check_slug

__all__ = [
    "ACCUMULATING_KEYS",
    "ENTRY_POINT_GROUP",
    "REQUIRED_KEYS",
    "ConditionContractError",
    "check_condition",
    "contract_problems",
]

#: Entry-point group under which a package registers its conditions.
ENTRY_POINT_GROUP = "safescale.conditions"

#: State keys every condition graph must have.
REQUIRED_KEYS = ("item_id", "evidence", "excluded", "answer", "steps")

#: State keys that must accumulate (``operator.add``) when present.
ACCUMULATING_KEYS = ("steps", "queries", "dropped")

_DEFAULT_GRAPH_NAME = "LangGraph"


class ConditionContractError(ValueError):
    """A graph does not satisfy the condition contract.

    Attributes:
        problems: one sentence per broken rule.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def contract_problems(graph: object) -> list[str]:
    """Every way ``graph`` breaks the contract (empty when it satisfies it)."""
    if not isinstance(graph, CompiledStateGraph):
        return [
            f"the builder returned {type(graph).__name__}, not a compiled StateGraph "
            "(return graph.compile(checkpointer=checkpointer, name=...))"
        ]
    problems = []
    if graph.name == _DEFAULT_GRAPH_NAME:
        problems.append("the graph has no name (compile it with name='<condition name>')")
    else:
        try:
            check_slug(graph.name, "graph name")
        except ValueError as error:
            problems.append(str(error))
    channels = graph.channels
    missing = [key for key in REQUIRED_KEYS if key not in channels]
    if missing:
        problems.append(
            f"the state schema lacks {', '.join(repr(k) for k in missing)} "
            "(use safescale.agents.blocks.AgentState)"
        )
    for key in ACCUMULATING_KEYS:
        if key in channels and not isinstance(channels[key], BinaryOperatorAggregate):
            problems.append(
                f"state key {key!r} must accumulate (Annotated[list, operator.add]): "
                "nodes return only their new entries"
            )
    schema = graph.builder.context_schema
    if not (isinstance(schema, type) and issubclass(schema, AgentContext)):
        problems.append(
            "the graph's context_schema must be AgentContext "
            "(StateGraph(AgentState, context_schema=AgentContext))"
        )
    if "answer" not in graph.nodes:
        problems.append(
            "the graph has no node named 'answer' (add the answer block: "
            "graph.add_node('answer', answer_node))"
        )
    else:
        edges = {(e.source, e.target) for e in graph.get_graph().edges}
        if ("answer", END) not in edges:
            problems.append("the 'answer' node must lead to END (the answer is the last step)")
    return problems


def check_condition(graph: object) -> CompiledStateGraph:
    """Return ``graph`` if it satisfies the condition contract.

    Raises:
        ConditionContractError: listing every broken rule.
    """
    problems = contract_problems(graph)
    if problems:
        raise ConditionContractError(problems)
    assert isinstance(graph, CompiledStateGraph)
    return graph
