"""What-if replay of one item of a run directory (loads the run's model and LM cache)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from safescale.agents import (
    AgentContext,
    AgentSettings,
    CachedLM,
    ResponseRecord,
    StepRecord,
    build_condition,
    replay_without,
    thread_id,
)
from safescale.corpora import Item
from safescale.experiments.config import load_config
from safescale.experiments.rundir import load_responses, load_run_corpora, read_manifest

__all__ = ["ReplayResult", "replay_item"]


@dataclass
class ReplayResult:
    item: Item
    old: ResponseRecord
    new: ResponseRecord
    new_steps: list[StepRecord]
    fork_step: int


def replay_item(
    run_dir: str | Path,
    item_id: str,
    condition: str,
    drop: list[str],
    *,
    model: str | None = None,
) -> ReplayResult:
    """Replay ``item_id`` under ``condition`` without the passages in ``drop``."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from safescale.models import load_model

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    responses, _ = load_responses(run_dir)
    matches = [
        r
        for r in responses
        if r.item == item_id and r.condition == condition and (model is None or r.model == model)
    ]
    if not matches:
        raise KeyError(f"no response for item {item_id!r} under {condition!r} in {run_dir}")
    old = matches[0]
    corpus = next(c for c in load_run_corpora(run_dir).values() if item_id in c.items_by_id)
    manifest = read_manifest(run_dir)
    spec = manifest.get("models", {}).get(old.model, {}).get("spec", old.model)
    model_cfg = next(m for m in config.models if m.name == old.model)
    lm = load_model(spec, device=model_cfg.device, dtype=model_cfg.dtype)
    store = None
    if condition in {"standard_rag", "agentic_rag", "max_context"}:
        from safescale.retrieval import open_store

        store = open_store(corpus, index_type=config.retrieval.index_type, show_progress=False)
    settings = AgentSettings(
        k=config.retrieval.k,
        max_steps=config.agentic.max_steps,
        context_budget=config.context_budget,
        samples=old.samples_budget,
        temperature=config.compute.temperature or 0.7,
        extra_samples=config.compute.detection_samples,
        seed=config.seed,
    )
    cached = CachedLM(lm, run_dir / "lm_cache.sqlite")
    ctx = AgentContext(lm=cached, corpus=corpus, store=store, settings=settings, run_id=config.name)
    conn = sqlite3.connect(str(run_dir / "checkpoints.sqlite"), check_same_thread=False)
    try:
        graph = build_condition(condition, checkpointer=SqliteSaver(conn))
        thread = thread_id(old.model, corpus.name, condition, old.samples_budget, item_id)
        new, steps, fork_step = replay_without(
            graph, ctx, thread, list(drop), condition=condition, model=old.model
        )
    finally:
        conn.close()
        cached.close()
    return ReplayResult(corpus.item(item_id), old, new, steps, fork_step)
