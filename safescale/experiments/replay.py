"""What-if replay of one item of a run directory (loads the run's model and LM cache).

A replay is a writer of the run directory (it adds to the LM cache and the checkpoints,
and appends its record to ``replays.jsonl``), so it holds the run's writer lock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safescale.agents import ResponseRecord, StepRecord, replay_without, thread_id
from safescale.corpora import Item
from safescale.experiments.config import load_config
from safescale.experiments.runner import CellTask, CellWorker, task_thread_axes
from safescale.rundir import CONFIG_FILE, REPLAYS_FILE, ReplayRecord, RunDir, RunLock, append_lines

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
    import_path: Sequence[str | Path] = (),
) -> ReplayResult:
    """Replay ``item_id`` under ``condition`` without the passages in ``drop``, with the
    run's own settings, model, LM cache and checkpoints (``import_path``: directories
    searched first for import-path conditions, before the run config's own)."""
    run_dir = Path(run_dir)
    reader = RunDir(run_dir)
    reader.require()
    config = load_config(run_dir / CONFIG_FILE, import_path=import_path).with_overrides(
        output_dir=run_dir
    )
    matches = [
        r
        for r in reader.responses()
        if r.item == item_id and r.condition == condition and (model is None or r.model == model)
    ]
    if not matches:
        raise KeyError(f"no response for item {item_id!r} under {condition!r} in {run_dir}")
    old = matches[0]
    with RunLock(run_dir):
        worker = CellWorker(config, old.model)
        try:
            ref = next(r for r in config.corpora if item_id in worker.corpus(r).items_by_id)
            task = CellTask(
                old.model,
                ref,
                condition,
                old.samples_budget,
                (item_id,),
                old.conflict_dose,
                old.context_budget,
                old.retrieval_k,
            )
            ctx = worker.context(task)
            graph = config.build_condition(condition, worker.checkpointer)
            thread = thread_id(
                old.model,
                ctx.corpus.name,
                condition,
                old.samples_budget,
                item_id,
                old.conflict_dose,
                axes=task_thread_axes(config, task),
            )
            new, steps, fork_step = replay_without(
                graph, ctx, thread, list(drop), condition=condition, model=old.model
            )
        finally:
            worker.close()
        record = ReplayRecord(
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            dropped=list(drop),
            fork_step=fork_step,
            original_chosen=old.chosen,
            response=new,
            steps=steps,
        )
        append_lines(run_dir / REPLAYS_FILE, [record.model_dump_json()])
    return ReplayResult(ctx.corpus.item(item_id), old, new, steps, fork_step)
