"""What-if replay of one item of a run directory (loads the run's model and LM cache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safescale.agents import ResponseRecord, StepRecord, build_condition, replay_without, thread_id
from safescale.corpora import Item
from safescale.experiments.config import load_config
from safescale.experiments.rundir import load_responses
from safescale.experiments.runner import CellTask, CellWorker

__all__ = ["ReplayResult", "replay_item"]


@dataclass
class ReplayResult:
    """Old and new answer of a replayed item."""

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
    """Replay ``item_id`` under ``condition`` without the passages in ``drop``, with the
    run's own settings, model, LM cache and checkpoints."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml").with_overrides(output_dir=run_dir)
    responses, _ = load_responses(run_dir)
    matches = [
        r
        for r in responses
        if r.item == item_id and r.condition == condition and (model is None or r.model == model)
    ]
    if not matches:
        raise KeyError(f"no response for item {item_id!r} under {condition!r} in {run_dir}")
    old = matches[0]
    worker = CellWorker(config, old.model)
    try:
        ref = next(r for r in config.corpora if item_id in worker.corpus(r).items_by_id)
        ctx = worker.context(CellTask(old.model, ref, condition, old.samples_budget, (item_id,)))
        graph = build_condition(
            config.condition_source(condition), checkpointer=worker.checkpointer
        )
        thread = thread_id(old.model, ctx.corpus.name, condition, old.samples_budget, item_id)
        new, steps, fork_step = replay_without(
            graph, ctx, thread, list(drop), condition=condition, model=old.model
        )
    finally:
        worker.close()
    return ReplayResult(ctx.corpus.item(item_id), old, new, steps, fork_step)
