"""What a cluster worker computes and ships back, and how the driver commits it.

A worker of the Ray backend never opens the run directory: its LM cache, graph
checkpoints and detection inputs live in a scratch directory of its own node
(:class:`ScratchWorker`). It is seeded with the run's cached LM calls when it starts, and
returns with every shard a :class:`ShardOutcome` that carries all the shard produced:

* the answered items (responses, steps, attribution: :class:`~.runner.ItemResult`),
* the LM-cache rows the shard added (so a resumed run or a replay recomputes nothing),
* the detection inputs recorded by the answer's own prompt pass or by a separate
  CTX/NOCTX pass (:class:`StageTask` ``detection_inputs``),
* reliance records (:class:`StageTask` ``reliance``).

The driver commits an outcome with :func:`commit_outcome`: LM-cache rows and detection
inputs first, then the JSONL lines (a response line last, the commit mark), so a driver
killed in between leaves only rows that make the re-run cheaper.

Besides answering, two model stages run on the workers, planned by the driver once a
model's answers are all committed (:func:`plan_stage`): the separate CTX/NOCTX passes of
responses whose detection inputs are missing (recorded without the shared pass, or for
another plan), and the reliance (evidence-masking) re-reads. Sampled answers for
detection (``compute.detection_samples``) are drawn by the answer step itself, so they
run on the workers with the answering.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from safescale.experiments.config import ExperimentConfig
from safescale.experiments.reliance import measure_jobs, plan_reliance
from safescale.experiments.runner import CellTask, CellWorker, ItemResult, commit
from safescale.rundir import RELIANCE_FILE, RunDir, RunDirError, append_lines

__all__ = [
    "SCRATCH_ENV",
    "STAGES",
    "ScratchWorker",
    "ShardOutcome",
    "StageTask",
    "WorkerReady",
    "commit_outcome",
    "outcome_bytes",
    "plan_stage",
]

SCRATCH_ENV = "SAFESCALE_SCRATCH_DIR"
"""Where a worker keeps its LM cache, checkpoints and detection inputs (default: the
node's temporary directory); removed when the worker closes."""

STAGES: tuple[str, ...] = ("detection_inputs", "reliance")
"""The model stages after answering, in the order the driver plans them per model."""

_HEX = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True)
class StageTask:
    """One shard of a model stage after answering (plain data, shipped to a worker).

    Attributes:
        model: the model that made the responses.
        stage: ``detection_inputs`` (the CTX/NOCTX passes of ``jobs``, response records
            as JSON) or ``reliance`` (``jobs`` are :class:`RelianceJob`).
        jobs: the shard's work, in order.
    """

    model: str
    stage: Literal["detection_inputs", "reliance"]
    jobs: tuple[Any, ...]

    @property
    def label(self) -> str:
        return f"{self.model} · {self.stage.replace('_', ' ')} · {len(self.jobs)} responses"


@dataclass(frozen=True)
class WorkerReady:
    """What a worker returns once its model is loaded: the manifest entry of the model
    and the LM-cache rows computed while making it (answer calibration)."""

    info: dict
    lm_rows: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ShardOutcome:
    """Everything one shard produced on its worker.

    Attributes:
        results: the answered items, in shard order (answering shards).
        reliance: reliance records as JSON lines (reliance shards).
        detection_inputs: (model hash, response content key, payload JSON) of the
            detection inputs recorded while answering or by a separate pass.
        lm_rows: (key, JSON value) LM-cache rows the shard added.
        seconds: time spent inside the worker.
        lm_cache_hits: LM cache hits while working on the shard.
        lm_cache_misses: LM cache misses while working on the shard.
        pid: the worker's process id.
    """

    results: tuple[ItemResult, ...] = ()
    reliance: tuple[str, ...] = ()
    detection_inputs: tuple[tuple[str, str, str], ...] = ()
    lm_rows: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    lm_cache_hits: int = 0
    lm_cache_misses: int = 0
    pid: int = 0

    @property
    def records(self) -> int:
        """Records this outcome commits (responses or reliance lines)."""
        return len(self.results) + len(self.reliance)


def outcome_bytes(outcome: ShardOutcome) -> int:
    """The payload an outcome carries: UTF-8 bytes of its records, LM-cache rows and
    detection inputs (what dominates it as it travels; Ray's framing adds little)."""
    texts: list[str] = []
    for result in outcome.results:
        texts += [result.response, *result.steps, result.attribution or ""]
    texts += outcome.reliance
    texts += [part for row in outcome.detection_inputs for part in row]
    texts += [part for row in outcome.lm_rows for part in row]
    return sum(len(t.encode()) for t in texts)


class ScratchWorker:
    """A :class:`CellWorker` whose run directory is a scratch directory on its own node.

    Args:
        config: the run's config (its ``output_dir`` is replaced by the scratch
            directory: the worker never reads or writes the run directory).
        model_name: the model this worker answers with.
        seed: LM-cache rows of the run (every cached call the worker may need).
    """

    def __init__(
        self, config: ExperimentConfig, model_name: str, seed: Sequence[tuple[str, str]] = ()
    ) -> None:
        root = os.environ.get(SCRATCH_ENV) or None
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"safescale-{config.name}-", dir=root))
        self.config = config.with_overrides(output_dir=self.scratch / "run")
        Path(self.config.run_dir).mkdir(parents=True)
        self.worker = CellWorker(self.config, model_name)
        self.worker.cached.seed(list(seed))
        self.worker.cached.start_journal()
        self._inputs_dir = Path(self.config.run_dir) / _detection_inputs_dir()

    def ready(self) -> WorkerReady:
        """The model's manifest entry (answer calibration runs here, once)."""
        info = self.worker.model_info
        return WorkerReady(info, tuple(self.worker.cached.take_journal()))

    def run(self, task: CellTask | StageTask) -> ShardOutcome:
        """Work on one shard; nothing is written outside the scratch directory."""
        cached = self.worker.cached
        hits, misses = cached.hits, cached.misses
        started = time.perf_counter()
        results: tuple[ItemResult, ...] = ()
        reliance: tuple[str, ...] = ()
        if isinstance(task, CellTask):
            results = tuple(self.worker.run_task(task))
        elif task.stage == "reliance":
            corpora = {self.worker.corpus(ref).name: self.worker.corpus(ref) for ref in
                       self.config.corpora}  # fmt: skip
            reliance = tuple(
                r.model_dump_json()
                for r in measure_jobs(self.worker.lm, task.jobs, corpora, self.config)
            )
        else:
            self._detection_passes(task.jobs)
        return ShardOutcome(
            results=results,
            reliance=reliance,
            detection_inputs=self._take_detection_inputs(),
            lm_rows=tuple(cached.take_journal()),
            seconds=time.perf_counter() - started,
            lm_cache_hits=cached.hits - hits,
            lm_cache_misses=cached.misses - misses,
            pid=os.getpid(),
        )

    def _detection_passes(self, records: Sequence[str]) -> None:
        from safescale.detection.extraction import record_inputs
        from safescale.rundir import ResponseRecord

        recorder = self.worker.detection_recorder()
        if recorder is None:
            raise RuntimeError("detection inputs asked of a worker without white-box detection")
        for line in records:
            record_inputs(recorder, self.worker.lm, ResponseRecord.model_validate_json(line))

    def _take_detection_inputs(self) -> tuple[tuple[str, str, str], ...]:
        """The detection inputs written in scratch since the last shard (then removed)."""
        if not self._inputs_dir.is_dir():
            return ()
        out = []
        for path in sorted(self._inputs_dir.glob("*/*.json")):
            text = path.read_text()
            out.append((str(json.loads(text)["model"]), path.stem, text))
            path.unlink()
        return tuple(out)

    def close(self) -> None:
        """Close the caches and remove the scratch directory."""
        try:
            self.worker.close()
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _detection_inputs_dir() -> str:
    from safescale.detection.extraction import DETECTION_INPUTS_DIR

    return DETECTION_INPUTS_DIR


# ---------------------------------------------------------------- driver side
def commit_outcome(run_dir: Path, outcome: ShardOutcome) -> None:
    """Write what a shard produced into the run directory (the driver only): LM-cache
    rows and detection inputs first, then reliance lines and the items' records (each
    item's response line last).

    Raises:
        RunDirError: a row or a detection input that is malformed (named, nothing of
            the shard's records written).
    """
    from safescale.agents.lmcache import add_rows
    from safescale.detection.extraction import DetectionInputStore

    if outcome.lm_rows:
        try:
            add_rows(run_dir / "lm_cache.sqlite", outcome.lm_rows)
        except ValueError as exc:
            raise RunDirError(f"a worker's shard result: {exc}") from None
    if outcome.detection_inputs:
        store = DetectionInputStore(run_dir / _detection_inputs_dir())
        for model_hash, key, text in outcome.detection_inputs:
            if not (_HEX.match(model_hash) and _HEX.match(key)):
                raise RunDirError(
                    f"a worker's shard result: detection input {key!r:.40} of model "
                    f"{model_hash!r:.40} is not named by hex digests"
                )
            store.put(model_hash, key, json.loads(text))
    if outcome.reliance:
        append_lines(run_dir / RELIANCE_FILE, list(outcome.reliance))
    for result in outcome.results:
        commit(run_dir, result)


def plan_stage(config: ExperimentConfig, model: str, stage: str) -> list[StageTask]:
    """The shards of one model stage still to do in the run directory (the driver holds
    the run lock; the model's answers are all committed).

    ``detection_inputs``: with detection enabled, the responses of a local white-box
    model (among ``detection.conditions``) whose stored inputs lack something the
    detectors need. ``reliance``: with reliance enabled, the selected responses not yet
    in ``reliance.jsonl``.
    """
    if stage == "reliance":
        if not config.reliance.enabled:
            return []
        jobs: list[Any] = list(plan_reliance(config).jobs.get(model, []))
    elif stage == "detection_inputs":
        jobs = _missing_detection_inputs(config, model)
    else:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    size = config.shard_size
    return [
        StageTask(model, stage, tuple(jobs[i : i + size]))  # type: ignore[arg-type]
        for i in range(0, len(jobs), size)
    ]


def _missing_detection_inputs(config: ExperimentConfig, model: str) -> list[str]:
    if not config.detection.enabled:
        return []
    from safescale.detection.extraction import (
        DetectionInputStore,
        ExtractionPlan,
        has_stored_inputs,
    )

    reader = RunDir(config.run_dir)
    entry = reader.manifest().models.get(model)
    if entry is None or entry.served is not None:
        return []  # a served model's black-box inputs are read from the server later
    settings = config.detection
    plan = ExtractionPlan.for_detectors(settings.detectors, settings.probe_layer_fraction)
    store = DetectionInputStore(reader.path / _detection_inputs_dir())
    wanted = None if settings.conditions is None else set(settings.conditions)
    return [
        record.model_dump_json()
        for record in reader.responses()
        if record.model == model
        and (wanted is None or record.condition in wanted)
        and record.response
        and not has_stored_inputs(store, entry.hash, record, plan)
    ]
