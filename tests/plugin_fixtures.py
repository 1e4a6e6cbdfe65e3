"""Real installed plugin distributions for tests: a module plus a ``.dist-info`` with
``entry_points.txt`` in a directory put on ``sys.path`` (importlib.metadata finds them
as it finds any installed package)."""

from __future__ import annotations

import textwrap
from pathlib import Path


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

DETECTOR_PLUGIN = """\
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from safescale.detection.registry import Detector, columns_or_unavailable


    class PmiNll(Detector):
        \"\"\"Logistic regression on the answer's context PMI and sequence NLL.\"\"\"

        requires = frozenset({"ctx_pass", "noctx_pass"})
        supervised = True
        columns = ("pmi", "msp_seq")

        def __init__(self, C: float = 1.0, random_state: int = 0):
            self.C = C
            self.random_state = random_state

        def design_matrix(self, frame):
            return columns_or_unavailable(frame, self.columns, self.name)

        def fit(self, X, y):
            model = LogisticRegression(
                C=self.C, class_weight="balanced", random_state=self.random_state
            ).fit(X, np.asarray(y) > 0)
            self.coef_, self.intercept_ = model.coef_[0], float(model.intercept_[0])
            return self

        def risk_score(self, X):
            return np.asarray(X) @ self.coef_ + self.intercept_

        def _get_state(self, directory):
            return {"coef": self.coef_.tolist(), "intercept": self.intercept_}

        def _set_state(self, state, directory):
            self.coef_, self.intercept_ = np.asarray(state["coef"]), state["intercept"]
"""
