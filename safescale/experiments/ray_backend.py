"""Run a sweep on Ray: the same cells as :func:`~safescale.experiments.runner.run_experiment`,
answered by Ray actors, committed by the driver.

What runs where:

* the **driver** (this process) prepares and repairs the run directory, plans the
  pending shards, schedules them, and is the only writer of ``responses.jsonl``,
  ``steps.jsonl`` and ``attribution.jsonl``: when a shard finishes, its items are
  committed with :func:`~safescale.experiments.runner.commit`, so the run-directory
  format and the resume rules are exactly those of the in-process backend;
* each **actor** wraps one :class:`~safescale.experiments.runner.CellWorker` for one
  model (loaded once, reused across its shards) and returns the shard's
  :class:`~safescale.experiments.runner.ItemResult` records. Actors write only the
  shared SQLite files of the run (``lm_cache.sqlite``, ``checkpoints.sqlite``).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from safescale.experiments.config import ExperimentConfig, ModelConfig
from safescale.experiments.runner import (
    CellTask,
    CellWorker,
    ItemResult,
    RunSummary,
    commit,
    plan_tasks,
    progress_bar,
    record_model,
    writing_run,
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


@dataclass(frozen=True)
class ShardOutcome:
    """What an actor returns for one shard.

    Attributes:
        results: the answered items, in shard order.
        seconds: time spent answering inside the actor.
        lm_cache_hits: LM cache hits while answering the shard.
        lm_cache_misses: LM cache misses while answering the shard.
        pid: the actor's process id.
    """

    results: tuple[ItemResult, ...]
    seconds: float
    lm_cache_hits: int
    lm_cache_misses: int
    pid: int


@dataclass
class RaySummary(RunSummary):
    """A :class:`RunSummary` with what the Ray backend did on top.

    Attributes:
        shards: shards committed.
        compute_seconds: summed time the actors spent answering the committed shards.
        workers_started: actors started (replacements included).
        workers_lost: actors that died while holding a shard or while starting.
        shards_retried: shard attempts lost with their worker and queued again.
    """

    shards: int = 0
    compute_seconds: float = 0.0
    workers_started: int = 0
    workers_lost: int = 0
    shards_retried: int = 0


class ShardWorker:
    """The body of a Ray actor: one :class:`CellWorker` for one model.

    Args:
        config: the run's config, with ``output_dir`` an absolute path every node can
            reach.
        model_name: the model this actor answers with.
    """

    def __init__(self, config: ExperimentConfig, model_name: str) -> None:
        self.worker = CellWorker(_config_for_actor(config, model_name), model_name)

    def model_info(self) -> dict:
        """The model's spec and hash (recorded in the manifest by the driver)."""
        return self.worker.model_info

    def run_task(self, task: CellTask) -> ShardOutcome:
        """Answer every item of a shard; nothing is written to the run's JSONL files."""
        cached = self.worker.cached
        hits, misses = cached.hits, cached.misses
        started = time.perf_counter()
        results = tuple(self.worker.run_task(task))
        return ShardOutcome(
            results=results,
            seconds=time.perf_counter() - started,
            lm_cache_hits=cached.hits - hits,
            lm_cache_misses=cached.misses - misses,
            pid=os.getpid(),
        )

    def close(self) -> None:
        """Close the LM cache and the checkpoint database."""
        self.worker.close()


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


@dataclass
class _Slot:
    """One live actor and what it is doing."""

    actor: Any
    model: str
    name: str
    ready: bool = False
    task: CellTask | None = None


@dataclass
class _Schedule:
    """Pending shards per model and the actors answering them."""

    queues: dict[str, deque[CellTask]]
    unrecorded: set[str]
    capacity: int
    slots: dict[Any, _Slot] = field(default_factory=dict)  # ObjectRef -> slot
    attempts: dict[CellTask, int] = field(default_factory=dict)
    startup_failures: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # model -> hash its workers loaded
    any_ready: bool = False

    def live(self, model: str | None = None) -> list[_Slot]:
        return [s for s in self.slots.values() if model is None or s.model == model]

    def wants_actor(self, model: str) -> float:
        """How much ``model`` needs one more actor (0: not at all)."""
        mine = self.live(model)
        if not self.any_ready and self.slots:
            return 0.0  # the run's first actor starts alone: it sets up the SQLite files
        if not mine:
            return float(len(self.queues[model]) or model in self.unrecorded)
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
        config: the experiment; its run directory must be reachable at the same path
            from every node (a shared filesystem).
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
    tasks = plan_tasks(config, items, done)
    total = sum(len(items[c.corpus]) for c in config.grid())
    summary.skipped = total - sum(len(t.item_ids) for t in tasks)
    unrecorded = {m.name for m in config.models if m.name not in manifest.models}
    if not tasks and not unrecorded:
        return summary

    owns_ray = _start_ray(address, num_workers)
    import ray

    try:
        shipped = config.with_overrides(output_dir=run_dir.resolve())
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
            queues=queues, unrecorded=unrecorded, capacity=min(num_workers, max(len(tasks), 1))
        )
        with progress_bar(console, progress) as prog:
            bar = (
                prog.add_task("items (ray)", total=total, completed=summary.skipped)
                if progress
                else None
            )
            _drive(ray, schedule, shipped, models, manifest, summary, prog, bar, on_item)
    finally:
        if owns_ray:
            ray.shutdown()
    return summary


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
    """The scheduling loop: start actors, hand out shards, commit results, replace
    lost workers, until every queue is empty and every actor retired."""
    remote_worker = ray.remote(ShardWorker)
    run_dir = Path(config.run_dir)
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
        ).remote(config, model)
        summary.workers_started += 1
        schedule.slots[actor.model_info.remote()] = _Slot(actor, model, name)

    def fill() -> None:
        while len(schedule.slots) < schedule.capacity:
            need, model = max((schedule.wants_actor(m), m) for m in models)
            if need <= 0:
                return
            start(model)

    def dispatch(slot: _Slot) -> None:
        queue = schedule.queues[slot.model]
        if queue:
            slot.task = queue.popleft()
            schedule.slots[slot.actor.run_task.remote(slot.task)] = slot
            if prog is not None:
                t = slot.task
                prog.update(
                    bar, description=f"{t.model} · {t.corpus} · {t.condition} · x{t.samples_budget}"
                )
        else:  # nothing left for this model: free the resources for another one
            slot.actor.close.remote()
            slot.actor.__ray_terminate__.remote()

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
                f"shard {slot.task} lost its worker {attempts} times; last error: {error}"
            ) from error
        summary.shards_retried += 1
        schedule.queues[slot.model].appendleft(slot.task)

    try:
        fill()
        while schedule.slots:
            (ref,), _ = ray.wait(list(schedule.slots), num_returns=1)
            slot = schedule.slots.pop(ref)
            try:
                value = ray.get(ref)
            except lost as error:
                on_lost(slot, error)
                fill()
                continue
            if not slot.ready:
                _record(run_dir, manifest, schedule.hashes, slot.model, value)
                schedule.unrecorded.discard(slot.model)
                schedule.any_ready = slot.ready = True
                dispatch(slot)
                fill()
                continue
            outcome: ShardOutcome = value
            slot.task = None
            dispatch(slot)  # the actor works on its next shard while this one is committed
            fill()
            for result in outcome.results:
                commit(run_dir, result)
                summary.answered += 1
                if on_item is not None:
                    on_item(summary.answered)
            summary.shards += 1
            summary.compute_seconds += outcome.seconds
            summary.lm_cache_hits += outcome.lm_cache_hits
            summary.lm_cache_misses += outcome.lm_cache_misses
            if prog is not None:
                prog.advance(bar, len(outcome.results))
    finally:
        for slot in schedule.slots.values():
            ray.kill(slot.actor, no_restart=True)


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
