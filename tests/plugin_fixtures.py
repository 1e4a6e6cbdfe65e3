"""Real installed plugin distributions for tests: a module plus a ``.dist-info`` with
``entry_points.txt`` in a directory put on ``sys.path`` (importlib.metadata finds them
as it finds any installed package)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

#: The page that documents writing a condition, a detector or a metric family of your own.
EXTENDING = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def install_distribution(root: Path, name: str, module: str, source: str, entry_points: str):
    """A real installed distribution: a module plus ``<name>.dist-info`` with
    ``entry_points.txt``, found by importlib.metadata on ``sys.path``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


CONDITION_PLUGIN = """\
    from safescale.agents.blocks import END, START, AgentContext, AgentState, StateGraph
    from safescale.agents.blocks import answer_node, retrieve_node


    def build_graph(checkpointer=None):
        graph = StateGraph(AgentState, context_schema=AgentContext)
        graph.add_node("retrieve", retrieve_node(agentic=True))
        graph.add_node("answer", answer_node)
        graph.add_edge(START, "retrieve")
        graph.add_edge("retrieve", "answer")
        graph.add_edge("answer", END)
        return graph.compile(checkpointer=checkpointer, name="reranked_rag")
"""


def extending_block(heading: str, index: int = 0) -> str:
    """The ``index``-th fenced Python block under a ``## heading`` of docs/extending.md."""
    text = EXTENDING.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return blocks[index]


#: The documented detector example, installed as a plugin by the tests.
DETECTOR_PLUGIN = extending_block("Your own detector")

#: The documented metric family example, installed as a plugin by the tests.
METRIC_PLUGIN = extending_block("Your own metric family")
