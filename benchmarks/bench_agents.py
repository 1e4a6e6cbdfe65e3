"""Orchestration + logging overhead of the condition graphs.

For each condition, runs N bundled items with the real model and measures, in the same
run: the graph's wall time, the time spent inside the model's ``score_options``,
``score_continuations`` and ``generate`` (the LM calls; answers read as ``cloze_pmi`` by
default, ``--formulation``), and inside evidence-store searches. Overhead =
(wall - LM - retrieval) / LM (goal <= 10%). The LM call cache starts empty (in memory),
so every call really runs; its bookkeeping counts as overhead.

Run: ``.venv/bin/python benchmarks/bench_agents.py [--items 6] [--corpus radiology-guidelines]
[--json benchmarks/results/bench_agents.json]`` (``--json``: also write the figures as a
result file, rendered into docs/results.md by ``benchmarks/render_results.py``)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from langgraph.checkpoint.memory import InMemorySaver
from render_results import figure, write_result


class Timed:
    """Forwards to an object and accumulates the time spent in chosen methods."""

    def __init__(self, target, methods):
        self._target = target
        self._methods = set(methods)
        self.seconds = 0.0

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if name not in self._methods:
            return attr

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed

    def __len__(self):
        return len(self._target)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--corpus", default="radiology-guidelines")
    parser.add_argument("--formulation", default="cloze_pmi")
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safescale.agents import (
        CONDITIONS,
        AgentContext,
        AgentSettings,
        CachedLM,
        answer_item,
        build_condition,
    )
    from safescale.corpora import load_corpus
    from safescale.models import load_model
    from safescale.retrieval import open_store

    corpus = load_corpus(args.corpus)
    store = Timed(open_store(corpus, show_progress=False), ["search"])
    # every LM entry point the graphs use (cloze answers and the critic's judgements
    # are continuation scores)
    lm = Timed(load_model(), ["score_options", "score_continuations", "generate"])
    items = corpus.items[: args.items]
    print(f"model smollm2-135m-instruct, corpus {corpus.name}, {len(items)} items per condition")
    print(f"{'condition':<18}{'wall s':>9}{'LM s':>9}{'search s':>10}{'overhead':>10}")
    rows = []
    for condition in CONDITIONS:
        cached = CachedLM(lm)  # empty cache: every LM call runs
        ctx = AgentContext(
            lm=cached,
            corpus=corpus,
            store=store,
            settings=AgentSettings(context_budget=2048, max_steps=2, formulation=args.formulation),
        )
        graph = build_condition(condition, InMemorySaver())
        lm.seconds = store.seconds = 0.0
        start = time.perf_counter()
        for item in items:
            answer_item(graph, condition, item.id, ctx, model="smollm2-135m-instruct")
        wall = time.perf_counter() - start
        overhead = (wall - lm.seconds - store.seconds) / lm.seconds
        print(
            f"{condition:<18}{wall:9.2f}{lm.seconds:9.2f}{store.seconds:10.2f}"
            f"{overhead:9.1%}  (goal <= 10%)"
        )
        rows.append(
            figure(
                f"{condition}: orchestration + logging vs LM calls ({args.formulation}, "
                f"{len(items)} {corpus.name} items)",
                f"{overhead:.1%}",
                "<= 10 %",
                wall_s=wall,
                lm_s=lm.seconds,
                search_s=store.seconds,
            )
        )
    if args.json is not None:
        write_result(args.json, "bench_agents", "Condition graphs: orchestration overhead", rows)


if __name__ == "__main__":
    main()
