"""Run a sweep on Ray: the same cells as :func:`~safescale.experiments.runner.run_experiment`,
answered by Ray actors, committed by the driver.

What runs where (no node but the driver's needs the run directory):

* the **driver** (this process) prepares and repairs the run directory, plans the
  pending shards, schedules them, and is the only reader and writer of the run
  directory: when a shard comes back, everything it produced is committed with
  :func:`~safescale.experiments.shard_work.commit_outcome` (LM-cache rows and detection
  inputs first, then the JSONL records, each response line last), so the run-directory
  format and the resume rules are exactly those of the in-process backend;
* each **actor** wraps one :class:`~safescale.experiments.shard_work.ScratchWorker`
  for one model (loaded once, reused across its shards): its LM cache, checkpoints and
  detection inputs live in a scratch directory on its own node, seeded at start with
  the run's cached LM calls (so nothing cached is recomputed) and removed at the end;
* after a model's answers are all committed, the driver plans its later model stages
  (separate CTX/NOCTX detection passes for responses without stored inputs, then the
  reliance re-reads) and hands their shards to the same actors.

A worker process that dies loses only the shard it was answering; the shard goes back
to the front of its model's queue and a replacement actor is started (Ray places it on
any node with free resources). An exception raised by the code itself (not a lost
worker) stops the run, as it would in-process.

Ray is imported only inside :func:`run_experiment_ray`; importing this module or the
runner never imports it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from safescale.agents.lmcache import add_rows, read_rows
from safescale.experiments.config import ExperimentConfig, ModelConfig
from safescale.experiments.runner import (
    CellTask,
    RunSummary,
    plan_tasks,
    progress_bar,
    record_model,
    writing_run,
)
from safescale.experiments.shard_work import (
    STAGES,
    ScratchWorker,
    ShardOutcome,
    StageTask,
    WorkerReady,
    commit_outcome,
    outcome_bytes,
    plan_stage,
)

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "MAX_SHARD_ATTEMPTS",
    "RaySummary",
    "ShardOutcome",
    "ShardWorker",
    "WorkerLostError",
    "run_experiment_ray",
    "worker_resources",
]

MAX_SHARD_ATTEMPTS = 3
"""A shard whose worker dies this many times stops the run (it is likely the cause)."""

_LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
_ACTOR_PREFIX = "safescale"


class WorkerLostError(RuntimeError):
    """A shard or a model's workers kept dying; the run stops instead of retrying forever."""


@dataclass
class RaySummary(RunSummary):
    """A :class:`RunSummary` with what the Ray backend did on top.

    Attributes:
        shards: shards committed (answering and later stages).
        stage_shards: of which shards of the stages after answering, by stage.
        stage_records: records those stages committed (reliance lines, detection
            inputs), by stage.
        compute_seconds: summed time the workers spent on the committed shards.
        commit_seconds: time the driver spent committing them.
        records_committed: records the driver committed (responses, reliance lines,
            detection inputs).
        bytes_received: size of the committed shard results as they travelled.
        commits: (records, seconds, bytes) of each committed shard.
        workers_started: actors started (replacements included).
        workers_lost: actors that died while holding a shard or while starting.
        shards_retried: shard attempts lost with their worker and queued again.
    """

    shards: int = 0
    stage_shards: dict[str, int] = field(default_factory=dict)
    stage_records: dict[str, int] = field(default_factory=dict)
    compute_seconds: float = 0.0
    commit_seconds: float = 0.0
    records_committed: int = 0
    bytes_received: int = 0
    commits: list[tuple[int, float, int]] = field(default_factory=list)
    workers_started: int = 0
    workers_lost: int = 0
    shards_retried: int = 0

    @property
    def commit_rate(self) -> float | None:
        """Records the driver commits per second of committing (None before any)."""
        if not self.records_committed or self.commit_seconds <= 0:
            return None
        return self.records_committed / self.commit_seconds


class ShardWorker(ScratchWorker):
    """The body of a Ray actor: a :class:`ScratchWorker` for one model (its device
    ``cuda:N`` read as the one GPU Ray assigned it)."""

    def __init__(
        self, config: ExperimentConfig, model_name: str, seed: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(_config_for_actor(config, model_name), model_name, seed)


def _config_for_actor(config: ExperimentConfig, model_name: str) -> ExperimentConfig:
    """Ray gives a GPU actor its own ``CUDA_VISIBLE_DEVICES``; inside it, ``cuda:N``
    means the one device it was assigned, i.e. ``cuda``."""
    models = tuple(
        m.model_copy(update={"device": "cuda"})
        if m.name == model_name and m.device.startswith("cuda:")
        else m
        for m in config.models
    )
    return config.model_copy(update={"models": models})


def worker_resources(model: ModelConfig) -> dict[str, float]:
    """The Ray resources one worker of ``model`` requests: 1 CPU, plus 1 GPU when the
    model's device is ``cuda``/``cuda:N`` (``auto`` requests none: declare ``cuda`` to
    reserve a GPU)."""
    return {"num_cpus": 1.0, "num_gpus": 1.0 if model.device.startswith("cuda") else 0.0}


Task = CellTask | StageTask


@dataclass
class _Slot:
    """One live actor and what it is doing."""

    actor: Any
    model: str
    name: str
    ready: bool = False
    task: Task | None = None


@dataclass
class _Schedule:
    """Pending shards per model, the stages still to plan, and the actors."""

    queues: dict[str, deque[Task]]
    unrecorded: set[str]
    capacity: int
    stages: dict[str, deque[str]]  # model -> stages after answering not planned yet
    slots: dict[Any, _Slot] = field(default_factory=dict)  # ObjectRef -> busy slot
    parked: dict[str, list[_Slot]] = field(default_factory=dict)  # idle, waiting for a stage
    attempts: dict[Task, int] = field(default_factory=dict)
    startup_failures: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # model -> hash its workers loaded
    any_ready: bool = False

    def live(self, model: str | None = None) -> list[_Slot]:
        busy = [s for s in self.slots.values() if model is None or s.model == model]
        idle = [s for m, ss in self.parked.items() if model in (None, m) for s in ss]
        return busy + idle

    def size(self) -> int:
        return len(self.slots) + sum(len(ss) for ss in self.parked.values())

    def has_work(self, model: str) -> bool:
        return bool(self.queues[model] or self.stages[model])

    def wants_actor(self, model: str) -> float:
        """How much ``model`` needs one more actor (0: not at all)."""
        mine = self.live(model)
        if not self.any_ready and self.slots:
            return 0.0  # the run's first actor starts alone: it calibrates, others reuse it
        if not mine:
            return float(self.has_work(model) or model in self.unrecorded)
        if not any(s.ready for s in mine):
            return 0.0  # a model's first actor starts alone (model files, e.g. a conversion)
        starting = sum(not s.ready for s in mine)
        waiting = len(self.queues[model]) - starting
        return waiting / len(mine) if waiting > 0 else 0.0


def _start_ray(address: str | None, num_workers: int | None) -> bool:
    """Connect to Ray (or start a local instance); True if this call started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # A private single-machine instance: bind every Ray server to loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        options.update(
            address="local",  # a new instance even if another one runs on this machine
            include_dashboard=False,
            object_store_memory=_LOCAL_OBJECT_STORE_BYTES,
        )
        if num_workers is not None:
            options["num_cpus"] = num_workers
    else:
        options["address"] = address
    ray.init(**options)
    return True


def run_experiment_ray(
    config: ExperimentConfig,
    *,
    address: str | None = None,
    fresh: bool = False,
    num_workers: int | None = None,
    console: Console | None = None,
    progress: bool = True,
    on_item: Callable[[int], None] | None = None,
) -> RaySummary:
    """Run (or resume) the sweep of ``config`` on Ray into ``config.run_dir``.

    Uses the Ray connection of this process if there is one; otherwise connects to
    ``address`` (or ``$RAY_ADDRESS``): a cluster's GCS address such as ``head:6379``
    when this driver runs on a cluster node, or ``ray://head:10001`` through Ray
    Client. With neither, it starts a private local instance bound to loopback (no
    dashboard, no usage stats) and shuts it down at the end.

    Args:
        config: the experiment; its run directory is read and written by this process
            only (workers need no shared filesystem).
        address: Ray cluster address; None starts a local instance.
        fresh: move an existing run of another config aside first.
        num_workers: actors at a time (default: as many as the cluster's CPUs allow,
            see :func:`worker_resources`, and never more than there are shards).
        console: where progress goes (default stderr).
        progress: show a progress bar.
        on_item: called with the number of items answered so far after each commit.

    Returns:
        The summary; items are committed shard by shard as shards finish.

    Raises:
        RunConflictError: the run directory holds a run of another config.
        WorkerLostError: a shard's worker died :data:`MAX_SHARD_ATTEMPTS` times, or a
            model's workers kept dying before they were ready.
        ValueError: ``num_workers`` < 1.
    """
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    console = console or Console(stderr=True)
    started = time.perf_counter()
    run_dir = Path(config.run_dir)
    with writing_run(config, fresh=fresh) as state:  # the driver is the run's one writer
        prepared = state.prepared
        assert prepared is not None
        manifest, items, done = prepared.manifest, prepared.items, prepared.done
        summary = _sweep_on_ray(
            config, manifest, items, done, run_dir, address, num_workers, console, progress, on_item
        )
    summary.seconds = time.perf_counter() - started
    return summary


def _sweep_on_ray(
    config: ExperimentConfig,
    manifest: Any,
    items: dict,
    done: set,
    run_dir: Path,
    address: str | None,
    num_workers: int | None,
    console: Console,
    progress: bool,
    on_item: Callable[[int], None] | None,
) -> RaySummary:
    summary = RaySummary(run_dir=run_dir)
    tasks: list[Task] = list(plan_tasks(config, items, done))
    total = sum(len(items[c.corpus]) for c in config.grid())
    summary.skipped = total - sum(len(t.item_ids) for t in tasks if isinstance(t, CellTask))
    unrecorded = {m.name for m in config.models if m.name not in manifest.models}
    stages = {m.name: deque(_stages(config)) for m in config.models}
    for name, pending in stages.items():
        if any(t.model == name for t in tasks) or name in unrecorded:
            continue  # planned once the model's answers are committed
        while pending:  # answers complete: plan now, and start no worker for nothing
            tasks += plan_stage(config, name, pending.popleft())
    if not tasks and not unrecorded:
        return summary

    owns_ray = _start_ray(address, num_workers)
    import ray

    try:
        models = {m.name: m for m in config.models}
        resources = ray.cluster_resources()
        if any(worker_resources(m)["num_gpus"] for m in models.values()) and not resources.get(
            "GPU"
        ):
            console.print(
                "[yellow]warning[/]: a model asks for a cuda device but the Ray cluster has no "
                "GPU now; its workers wait until one joins"
            )
        if num_workers is None:
            num_workers = max(1, int(resources.get("CPU", 1)))
        queues = {name: deque(t for t in tasks if t.model == name) for name in models}
        schedule = _Schedule(
            queues=queues,
            unrecorded=unrecorded,
            capacity=num_workers,
            stages=stages,
        )
        with progress_bar(console, progress) as prog:
            bar = (
                prog.add_task("items (ray)", total=total, completed=summary.skipped)
                if progress
                else None
            )
            _drive(ray, schedule, config, models, manifest, summary, prog, bar, on_item)
    finally:
        if owns_ray:
            ray.shutdown()
    return summary


def _stages(config: ExperimentConfig) -> list[str]:
    """The model stages after answering this config asks for."""
    wanted = {"detection_inputs": config.detection.enabled, "reliance": config.reliance.enabled}
    return [stage for stage in STAGES if wanted[stage]]


class _Seed:
    """The run's LM-cache rows, put into the object store once per change (every new
    worker is seeded with them)."""

    def __init__(self, ray: Any, path: Path) -> None:
        self.ray, self.path = ray, path
        self.ref: Any = None

    def get(self) -> Any:
        if self.ref is None:
            self.ref = self.ray.put(read_rows(self.path))
        return self.ref

    def changed(self) -> None:
        self.ref = None


def _drive(
    ray: Any,
    schedule: _Schedule,
    config: ExperimentConfig,
    models: dict[str, ModelConfig],
    manifest: Any,
    summary: RaySummary,
    prog: Progress | None,
    bar: Any,
    on_item: Callable[[int], None] | None,
) -> None:
    """The scheduling loop: start actors, hand out shards, commit results, plan each
    model's later stages once its answers are in, replace lost workers, until every
    queue is empty and every actor retired."""
    remote_worker = ray.remote(ShardWorker)
    run_dir = Path(config.run_dir)
    seed = _Seed(ray, run_dir / "lm_cache.sqlite")
    token = uuid.uuid4().hex[:6]
    lost = (
        ray.exceptions.RayActorError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.ObjectLostError,
    )

    def start(model: str) -> None:
        name = f"{_ACTOR_PREFIX}-{config.name}-{token}-{model}-{summary.workers_started}"
        actor = remote_worker.options(
            name=name, max_restarts=0, max_task_retries=0, **worker_resources(models[model])
        ).remote(config, model, seed.get())
        summary.workers_started += 1
        schedule.slots[actor.ready.remote()] = _Slot(actor, model, name)

    def fill() -> None:
        while schedule.size() < schedule.capacity:
            need, model = max((schedule.wants_actor(m), m) for m in models)
            if need <= 0:
                return
            start(model)

    def retire(slot: _Slot) -> None:
        slot.actor.close.remote()
        slot.actor.__ray_terminate__.remote()

    def next_stage(model: str) -> None:
        """Plan the model's next stage with work, once none of its shards is out."""
        queue, pending = schedule.queues[model], schedule.stages[model]
        while not queue and pending and not any(s.model == model for s in schedule.slots.values()):
            queue.extend(plan_stage(config, model, pending.popleft()))

    def dispatch(slot: _Slot) -> None:
        queue = schedule.queues[slot.model]
        next_stage(slot.model)
        if queue:
            slot.task = queue.popleft()
            schedule.slots[slot.actor.run.remote(slot.task)] = slot
            if prog is not None:
                prog.update(bar, description=_label(slot.task))
            waiting = schedule.parked.pop(slot.model, [])
            for other in waiting:
                dispatch(other)
        elif schedule.stages[slot.model]:  # a later stage waits for shards still out
            slot.task = None
            schedule.parked.setdefault(slot.model, []).append(slot)
        else:  # nothing left for this model: free the resources for another one
            retire(slot)

    def on_lost(slot: _Slot, error: Exception) -> None:
        summary.workers_lost += 1
        ray.kill(slot.actor, no_restart=True)
        if slot.task is None:
            failures = schedule.startup_failures.get(slot.model, 0) + 1
            schedule.startup_failures[slot.model] = failures
            if getattr(error, "actor_init_failed", False) or failures >= MAX_SHARD_ATTEMPTS:
                raise WorkerLostError(
                    f"the worker for model {slot.model!r} failed to start: {error}"
                ) from error
            return
        attempts = schedule.attempts.get(slot.task, 0) + 1
        schedule.attempts[slot.task] = attempts
        if attempts >= MAX_SHARD_ATTEMPTS:
            raise WorkerLostError(
                f"shard {_label(slot.task)} lost its worker {attempts} times; last error: {error}"
            ) from error
        summary.shards_retried += 1
        schedule.queues[slot.model].appendleft(slot.task)

    def committed(task: Task, outcome: ShardOutcome, size: int) -> None:
        began = time.perf_counter()
        commit_outcome(run_dir, outcome)
        seconds = time.perf_counter() - began
        records = outcome.records + len(outcome.detection_inputs)
        summary.commit_seconds += seconds
        summary.records_committed += records
        summary.bytes_received += size
        summary.commits.append((records, seconds, size))
        if outcome.lm_rows:
            seed.changed()
        summary.shards += 1
        summary.compute_seconds += outcome.seconds
        summary.lm_cache_hits += outcome.lm_cache_hits
        summary.lm_cache_misses += outcome.lm_cache_misses
        if isinstance(task, StageTask):
            summary.stage_shards[task.stage] = summary.stage_shards.get(task.stage, 0) + 1
            made = len(outcome.reliance) or len(outcome.detection_inputs)
            summary.stage_records[task.stage] = summary.stage_records.get(task.stage, 0) + made
            return
        summary.answered += len(outcome.results)
        if on_item is not None:
            on_item(summary.answered)
        if prog is not None:
            prog.advance(bar, len(outcome.results))

    try:
        fill()
        while schedule.slots:
            (ref,), _ = ray.wait(list(schedule.slots), num_returns=1)
            slot = schedule.slots.pop(ref)
            try:
                value = ray.get(ref)
            except lost as error:
                on_lost(slot, error)
                for model in models:  # a stage may now be plannable, or need an actor
                    parked = schedule.parked.pop(model, [])
                    for other in parked:
                        dispatch(other)
                fill()
                continue
            if not slot.ready:
                ready: WorkerReady = value
                _record(run_dir, manifest, schedule.hashes, slot.model, ready.info)
                if ready.lm_rows:
                    add_rows(run_dir / "lm_cache.sqlite", ready.lm_rows)
                    seed.changed()
                schedule.unrecorded.discard(slot.model)
                schedule.any_ready = slot.ready = True
                dispatch(slot)
                fill()
                continue
            task = slot.task
            assert task is not None
            slot.task = None
            if schedule.queues[slot.model]:
                dispatch(slot)  # the actor works on its next shard while this one is committed
                committed(task, value, outcome_bytes(value))
            else:  # a stage is planned from the committed records: commit first
                committed(task, value, outcome_bytes(value))
                dispatch(slot)
            for model in models:  # shards of a model all in: its next stage can start
                parked = schedule.parked.pop(model, [])
                for other in parked:
                    dispatch(other)
            fill()
    finally:
        for slot in schedule.live():
            ray.kill(slot.actor, no_restart=True)


def _label(task: Task) -> str:
    if isinstance(task, StageTask):
        return task.label
    return f"{task.model} · {task.corpus} · {task.condition} · x{task.samples_budget}"


def _record(run_dir: Path, manifest: Any, hashes: dict[str, str], model: str, info: dict) -> None:
    """Record a model in the manifest (as the in-process backend does) when its first
    worker of this run is ready; every later worker must have loaded the same weights."""
    expected = hashes.setdefault(model, info["hash"])
    if info["hash"] != expected:
        raise RuntimeError(
            f"a worker loaded model {model!r} with hash {info['hash'][:12]}…, another one "
            f"{expected[:12]}…; every node must hold the same weights"
        )
    entry = manifest.models.get(model)
    if entry is None or entry.model_dump() != info:
        record_model(run_dir, manifest, model, info)
