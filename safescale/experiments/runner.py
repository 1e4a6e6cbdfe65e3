"""The sweep runner: config -> cells -> frozen responses, steps, attributions,
detection, metrics and report in one run directory.

Cells are model x corpus x condition x compute budget x conflict dose x context budget x
retrieval depth (:meth:`~safescale.experiments.config.ExperimentConfig.grid`), each cut
into item shards.
Durability rules:

* every LM call goes through a SQLite cache keyed by (model hash, prompt, decoding
  settings) in ``lm_cache.sqlite``; graph checkpoints go to ``checkpoints.sqlite``;
* per item, its step records and attribution are appended first and its response line
  last, each as one ``write`` + ``fsync``: the response line is the commit mark. On
  resume, a torn last line is cut off, step/attribution rows of items without a
  response are dropped, and only items without a response are run again (their
  partial checkpoint thread is deleted first) — the writing and repair helpers are
  :mod:`safescale.rundir.writer`'s;
* a run directory belongs to one resolved config (by hash): running a different config
  into it is refused unless ``fresh=True``, which moves the old directory aside.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from safescale.agents import (
    AgentContext,
    AgentSettings,
    CachedLM,
    answer_item,
    attribute_failure,
    thread_id,
)
from safescale.corpora import Corpus, Item, load_corpus
from safescale.experiments.answer_calibration import (
    calibrate,
    calibration_item_ids,
    needs_calibration,
)
from safescale.experiments.config import ExperimentConfig, ModelConfig
from safescale.models.interface import is_whitebox
from safescale.rundir import (
    ATTRIBUTION_FILE,
    CONFIG_FILE,
    DEFAULT_RETRIEVAL_K,
    DETECTION_DIR,
    LOCK_FILE,
    MANIFEST_FILE,
    MANIFEST_SCHEMA_VERSION,
    RESPONSES_FILE,
    STEPS_FILE,
    TRIAGE_FILE,
    CorpusEntry,
    ModelEntry,
    ResponseKey,
    RunDir,
    RunDirError,
    RunLock,
    RunManifest,
    atomic_write_text,
    check_slug,
    commit_item,
    context_budget_label,
    drop_orphans,
    repair_run_files,
    write_manifest,
)

__all__ = [
    "RUN_SCHEMA_VERSION",
    "CellTask",
    "CellWorker",
    "ItemResult",
    "PreparedRun",
    "RunConflictError",
    "RunSummary",
    "answer_order",
    "commit",
    "detect_run",
    "evaluate_run",
    "item_order",
    "lazy_model",
    "model_loader",
    "open_checkpointer",
    "plan_tasks",
    "prepare_run",
    "progress_bar",
    "record_model",
    "run_detection_stage",
    "run_experiment",
    "select_items",
    "task_thread_axes",
    "writing_run",
]

RUN_SCHEMA_VERSION = MANIFEST_SCHEMA_VERSION
_RAG = {"standard_rag", "agentic_rag", "max_context"}
_NO_STORE = {"closed_book", "clean_evidence", "conflict_evidence"}


def _uses_store(condition: str) -> bool:
    """The bundled RAG conditions and every external condition get the evidence store."""
    return condition in _RAG or condition not in _NO_STORE


_PACKAGES = (
    "safescale",
    "torch",
    "transformers",
    "langgraph",
    "faiss-cpu",
    "xgboost-cpu",
    "sentence-transformers",
    "llama-index-core",
    "numpy",
    "pydantic",
)


class RunConflictError(RuntimeError):
    """The run directory holds a run of a different config."""


@dataclass
class RunSummary:
    """What a call to :func:`run_experiment` did."""

    run_dir: Path
    answered: int = 0
    skipped: int = 0
    lm_cache_hits: int = 0
    lm_cache_misses: int = 0
    seconds: float = 0.0
    prefix_cache: dict[str, dict] = field(default_factory=dict)


def select_items(corpus: Corpus, config: ExperimentConfig) -> list[Item]:
    """Items of a corpus for this run: the calibration items removed (when the answer
    formulation needs them, see :mod:`.calibration`), the item filter, then the first
    ``limit`` items of the seeded :func:`item_order` (kept in corpus order)."""
    items = list(corpus.items)
    if needs_calibration(config.answer.formulation):
        held_out = set(calibration_item_ids(corpus, config.answer.calibration_items, config.seed))
        items = [i for i in items if i.id not in held_out]
    flt = config.item_filter
    if flt is not None:
        if flt.categories is not None:
            items = [i for i in items if i.category in flt.categories]
        if flt.tasks is not None:
            items = [i for i in items if i.task in flt.tasks]
        if flt.ids is not None:
            items = [i for i in items if i.id in flt.ids]
    if config.limit is not None and config.limit < len(items):
        eligible = {item.id for item in items}
        ranked = [i for i in item_order(corpus, config.seed) if i in eligible]
        keep = set(ranked[: config.limit])
        items = [item for item in items if item.id in keep]
    return items


def item_order(corpus: Corpus, seed: int) -> list[str]:
    """The run's fixed, seeded order of a corpus's item ids: ``limit: N`` takes the
    first N of it (after the filters), so a larger limit keeps every item a smaller one
    took and only adds new ones."""
    ids = sorted(item.id for item in corpus.items)
    rng = np.random.default_rng([seed, 104729])
    return [ids[i] for i in rng.permutation(len(ids))]


def _prefix_group(condition: str, item: Item, max_context_order: str) -> object:
    """What an item's prompts under ``condition`` start with, as far as it is known
    before answering: the oracle evidence set, the one shared block of max-context in
    corpus order; for retrieval, the item's clean evidence set (items answered by the
    same passage retrieve much the same passages first), else its evidence group."""
    if condition == "conflict_evidence":
        return ("conflict", tuple(item.evidence.conflict))
    if condition == "max_context" and max_context_order == "corpus":
        return ("corpus",)
    if condition == "closed_book":
        return ("none",)
    if item.evidence.clean:
        return ("clean", tuple(item.evidence.clean))
    return ("group", item.evidence_id)


def answer_order(
    task: CellTask, corpus: Corpus, *, max_context_order: str = "similarity"
) -> list[str]:
    """The order a shard's items are answered in: items whose prompts start alike (the
    same evidence set, see :func:`_prefix_group`) next to each other, so the prefix
    cache holds their shared prefix while they run. Groups keep the shard order of
    their first item, items the shard order within a group. Only the answering order:
    records are still committed in shard order."""
    groups: dict[object, list[str]] = {}
    for item_id in task.item_ids:
        key = _prefix_group(task.condition, corpus.item(item_id), max_context_order)
        groups.setdefault(key, []).append(item_id)
    return [item_id for ids in groups.values() for item_id in ids]


# ---------------------------------------------------------------- run directory
def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _check_sqlite(path: Path) -> None:
    """Refuse an SQLite file of the run that is not a database (named in the message)."""
    if not path.exists():
        return
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise RunDirError(
            f"{path}: not an SQLite database ({exc}); move it away and the run rebuilds it"
        ) from None
    finally:
        conn.close()


def _load_corpora(config: ExperimentConfig) -> dict[str, Corpus]:
    """The config's corpora by reference; their names must be slugs and distinct."""
    corpora: dict[str, Corpus] = {}
    seen: dict[str, str] = {}
    for ref in config.corpora:
        corpus = load_corpus(ref)
        where = f"{corpus.path / 'corpus.yaml'}" if corpus.path else ref
        try:
            check_slug(corpus.name, "corpus name")
        except ValueError as exc:
            raise RunDirError(f"{where}: name: {exc}") from None
        if corpus.name in seen:
            raise RunDirError(
                f"{where}: name: corpus name {corpus.name!r} is also the name of "
                f"{seen[corpus.name]!r}"
            )
        seen[corpus.name] = ref
        needs_store = [c for c in config.condition_names if _uses_store(c)]
        if not corpus.passages and needs_store:
            raise RunDirError(
                f"{where}: closed_book_only: corpus {corpus.name!r} has no passages, so it "
                f"cannot run {', '.join(needs_store)}; run it with closed_book, "
                "clean_evidence or conflict_evidence, or import it with --passages-from"
            )
        corpora[ref] = corpus
    return corpora


def _new_manifest(config: ExperimentConfig, corpora: dict[str, Corpus]) -> RunManifest:
    return RunManifest(
        name=config.name,
        config_hash=config.config_hash(),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        packages=_versions(),
        git_revision=_git_revision(),
        seed=config.seed,
        corpora={
            corpus.name: CorpusEntry(
                ref=ref,
                path=str(corpus.path) if corpus.path else None,
                content_hash=corpus.content_hash,
            )
            for ref, corpus in corpora.items()
        },
    )


# ---------------------------------------------------------------- cells and workers
@dataclass(frozen=True)
class CellTask:
    """One shard of one cell: items of one corpus under one condition, compute budget,
    conflict dose, context budget (None: the model's maximum) and retrieval depth for
    one model. Plain data, so it can be shipped to another process."""

    model: str
    corpus: str
    condition: str
    samples_budget: int
    item_ids: tuple[str, ...]
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int = DEFAULT_RETRIEVAL_K

    def key(self, item_id: str) -> ResponseKey:
        """The response key of one of the shard's items."""
        return (
            self.model,
            self.condition,
            item_id,
            self.samples_budget,
            self.conflict_dose,
            self.context_budget,
            self.retrieval_k,
        )

    @property
    def label(self) -> str:
        """The cell in a few words (progress bars)."""
        return f"{self.model} · {self.corpus} · {self.condition} · x{self.samples_budget}" + (
            f" · dose {self.conflict_dose}" if self.conflict_dose else ""
        )


def task_thread_axes(config: ExperimentConfig, task: CellTask) -> list[tuple[str, object]]:
    """The checkpoint-thread parts of the axes the config sweeps beyond budget and
    dose (see :func:`safescale.agents.thread_id`; none for a run that sweeps neither)."""
    swept = config.swept_axes()
    axes: list[tuple[str, object]] = []
    if "context_budget" in swept:
        axes.append(("c", context_budget_label(task.context_budget)))
    if "retrieval_k" in swept:
        axes.append(("k", task.retrieval_k))
    return axes


@dataclass(frozen=True)
class ItemResult:
    """The serialized records of one answered item (what a commit appends)."""

    key: ResponseKey
    response: str
    steps: tuple[str, ...]
    attribution: str | None


def plan_tasks(
    config: ExperimentConfig,
    items: dict[str, list[Item]],
    done: set[ResponseKey],
) -> list[CellTask]:
    """The pending shards of the sweep, in grid order (finished items left out)."""
    tasks = []
    for cell in config.grid():
        cell_task = CellTask(
            cell.model.name,
            cell.corpus,
            cell.condition,
            cell.samples_budget,
            (),
            cell.conflict_dose,
            cell.context_budget,
            cell.retrieval_k,
        )
        ids = [item.id for item in items[cell.corpus] if cell_task.key(item.id) not in done]
        for start in range(0, len(ids), config.shard_size):
            tasks.append(
                dataclasses.replace(
                    cell_task, item_ids=tuple(ids[start : start + config.shard_size])
                )
            )
    return tasks


class CellWorker:
    """Runs cell tasks for one model: loads the model once, then reuses it, its LM
    cache, the corpora and the evidence stores across tasks."""

    def __init__(self, config: ExperimentConfig, model_name: str) -> None:
        from safescale.models import load_model

        self.config = config
        self.run_dir = Path(config.run_dir)
        self.model_cfg = next(m for m in config.models if m.name == model_name)
        self.lm = _load(self.model_cfg, load_model)
        self.batcher = None
        self.in_flight = self.model_cfg.items_in_flight
        scored = self.lm
        if self.model_cfg.kind in ("openai", "openai-chat"):
            # requests of the items in flight go to the server concurrently
            from safescale.models.served import ConcurrentItems

            self.in_flight = max(self.in_flight, self.model_cfg.max_concurrency)
            self.batcher = ConcurrentItems()
        elif self.model_cfg.items_in_flight > 1:
            from safescale.models.microbatch import MicroBatchedLM, MicroBatcher

            if self.model_cfg.kind == "vllm":
                from safescale.models.served.vllm import VLLMBatcher as MicroBatcher
            self.batcher = MicroBatcher(self.lm, self.model_cfg.batch_size)
            scored = MicroBatchedLM(self.lm, self.batcher)
        self.cached = CachedLM(scored, self.run_dir / "lm_cache.sqlite")
        self._conn, self.checkpointer = open_checkpointer(self.run_dir / "checkpoints.sqlite")
        self._corpora: dict[str, Corpus] = {}
        self._stores: dict[str, object] = {}
        self._graphs: dict[str, object] = {}
        self._answering: dict[str, dict] = {}

    @property
    def model_info(self) -> dict:
        """Spec, hash and shape of the model, and how it reads answers on each corpus
        (the calibration record of :func:`.calibration.calibrate`, or the fixed
        formulation)."""
        info = {
            "spec": self.model_cfg.spec or self.model_cfg.name,
            "hash": self.lm.model_hash,
            "context_length": self.lm.context_length,
            "layers": self.lm.n_layers,
            "parameters": self.lm.n_parameters,
            "formulations": {
                self.corpus(ref).name: self.answering(ref) for ref in self.config.corpora
            },
            "max_context": {
                self.corpus(ref).name: self.max_context_record(ref)
                for ref in self.config.corpora
                if "max_context" in self.config.condition_names
            },
        }
        if self.model_cfg.served:
            info["spec"] = self.lm.settings.model
            info["served"] = self.lm.served_info()
            info["whitebox"] = self.model_cfg.whitebox
        return info

    def max_context_record(self, ref: str) -> dict:
        """How max-context packs a corpus for this model (recorded in the manifest):
        the order and, for ``corpus``, the shared block and what it leaves out, at the
        base context budget; with a swept budget also per budget (``budgets``: label
        -> the same fields)."""
        budgets = self.config.context_budget
        record = self._max_context_at(ref, budgets[0])
        if len(budgets) > 1:
            record["budgets"] = {
                context_budget_label(b): self._max_context_at(ref, b) for b in budgets
            }
        return record

    def _max_context_at(self, ref: str, context_budget: int | None) -> dict:
        from safescale.agents.nodes import CORPUS_ORDER_RULE, LEAVE_OUT_RULE, max_context_block

        order = self.config.max_context.order
        budget = min(context_budget or self.lm.context_length, self.lm.context_length)
        limit = budget - AgentSettings.model_fields["answer_reserve"].default
        if order != "corpus":
            return {
                "order": order,
                "rule": "every passage ranked by similarity to each item's question; whole "
                "passages while the prompt stays within the limit",
                "limit": limit,
            }
        block = max_context_block(
            self.lm, self.corpus(ref), limit=limit, formulation=self.answering(ref)["chosen"]
        )
        return {
            "order": order,
            "rule": CORPUS_ORDER_RULE,
            "leave_out_rule": LEAVE_OUT_RULE,
            "limit": limit,
            "evidence_tokens": block.evidence_tokens,
            "longest_item": block.longest_item,
            "kept": list(block.kept),
            "left_out": block.left_out,
        }

    def answering(self, ref: str) -> dict:
        """How this model reads answers on a corpus: calibrated once per worker when the
        config asks for ``auto`` or ``letter_pride`` (every LM call is cached, so a
        resumed run or a second worker recomputes nothing)."""
        if ref not in self._answering:
            answer = self.config.answer
            if needs_calibration(answer.formulation):
                corpus = self.corpus(ref)
                ids = calibration_item_ids(corpus, answer.calibration_items, self.config.seed)
                self._answering[ref] = calibrate(
                    self.cached,
                    corpus,
                    ids,
                    formulation=answer.formulation,
                    tie_margin=answer.tie_margin,
                    allowed=self.lm.formulations,
                )
            else:
                _check_servable(self.lm, answer.formulation)
                self._answering[ref] = {
                    "requested": answer.formulation,
                    "chosen": answer.formulation,
                    "rule": "fixed by the config",
                }
        return self._answering[ref]

    def corpus(self, ref: str) -> Corpus:
        """The corpus of a config reference (loaded once)."""
        if ref not in self._corpora:
            self._corpora[ref] = load_corpus(ref)
        return self._corpora[ref]

    def _store(self, ref: str):
        if ref not in self._stores:
            from safescale.retrieval import open_store

            self._stores[ref] = open_store(
                self.corpus(ref),
                index_type=self.config.retrieval.index_type,
                show_progress=False,
            )
        return self._stores[ref]

    def context(self, task: CellTask) -> AgentContext:
        config = self.config
        settings = AgentSettings(
            k=task.retrieval_k,
            max_steps=config.agentic.max_steps,
            context_budget=task.context_budget,
            samples=task.samples_budget,
            temperature=config.compute.temperature,
            extra_samples=config.compute.detection_samples,
            seed=config.seed,
            formulation=self.answering(task.corpus)["chosen"],
            position_prior=self.answering(task.corpus).get("position_prior"),
            conflict_dose=task.conflict_dose,
            max_context_order=config.max_context.order,
        )
        return AgentContext(
            lm=self.cached,
            corpus=self.corpus(task.corpus),
            store=self._served(self._store(task.corpus)) if _uses_store(task.condition) else None,
            settings=settings,
            run_id=config.name,
            detection=self.detection_recorder(),
        )

    def _served(self, store):
        """With items in flight, the store's searches (query embedding) run on the
        batcher's serving thread like the model's calls (one torch thread pool)."""
        if self.batcher is None:
            return store
        from safescale.models.microbatch import OnServingThread

        return OnServingThread(store, self.batcher)

    def detection_recorder(self):
        """With detection configured, the answer step records the detection inputs of
        each response from its own prompt pass (see :class:`SharedPassRecorder`)."""
        if not self.config.detection.enabled or not is_whitebox(self.lm):
            return None  # a served model's detection inputs are read after the run
        from safescale.detection.extraction import (
            DETECTION_INPUTS_DIR,
            DetectionInputStore,
            ExtractionPlan,
            SharedPassRecorder,
            token_idf,
        )

        settings = self.config.detection
        plan = ExtractionPlan.for_detectors(settings.detectors, settings.probe_layer_fraction)
        store = DetectionInputStore(self.run_dir / DETECTION_INPUTS_DIR)
        corpora = [self.corpus(name) for name in self.config.corpora]
        return SharedPassRecorder(
            plan,
            store,
            self.lm.model_hash,
            self.lm.n_layers,
            idf=lambda: token_idf(self.lm, corpora),
        )

    def _graph(self, condition: str):
        if condition not in self._graphs:
            self._graphs[condition] = self.config.build_condition(condition, self.checkpointer)
        return self._graphs[condition]

    def run_item(self, task: CellTask, item_id: str, ctx: AgentContext) -> ItemResult:
        """Answer one item (a stale partial checkpoint thread is deleted first)."""
        graph = self._graph(task.condition)
        corpus = ctx.corpus
        thread = thread_id(
            task.model,
            corpus.name,
            task.condition,
            task.samples_budget,
            item_id,
            task.conflict_dose,
            axes=task_thread_axes(self.config, task),
        )
        self.checkpointer.delete_thread(thread)
        response, steps = answer_item(
            graph, task.condition, item_id, ctx, model=task.model, thread=thread
        )
        attribution = attribute_failure(response, steps, corpus)
        return ItemResult(
            key=task.key(item_id),
            response=response.model_dump_json(),
            steps=tuple(s.model_dump_json() for s in steps),
            attribution=None if attribution is None else attribution.model_dump_json(),
        )

    def run_items(self, task: CellTask, ctx: AgentContext) -> Iterator[ItemResult]:
        """Answer the items of a shard, yielded in shard order.

        With the model's ``items_in_flight`` > 1, that many items are answered at once
        (their scoring calls merged, see :mod:`safescale.models.microbatch`). A failing
        item stops the shard after the items before it that are done.

        Items are answered in :func:`answer_order` (those whose prompts share an
        evidence set next to each other, for the prefix cache) and yielded in shard
        order, each once it and every earlier item are done: what is committed, and in
        which order, does not change (an item answered but not yet yielded when a run
        stops is answered again on resume, its LM calls read from the LM cache).
        """
        order = answer_order(task, ctx.corpus, max_context_order=self.config.max_context.order)
        if self.batcher is None or len(task.item_ids) < 2:
            yield from _in_shard_order(
                lambda item_id: self.run_item(task, item_id, ctx), list(task.item_ids), order
            )
            return
        yield from _in_flight(
            lambda item_id: self.run_item(task, item_id, ctx),
            list(task.item_ids),
            min(self.in_flight, len(task.item_ids)),
            self.batcher,
            prepare=lambda: self._graph(task.condition),
            order=order,
        )

    def run_task(self, task: CellTask) -> list[ItemResult]:
        """Answer every item of a shard."""
        return list(self.run_items(task, self.context(task)))

    def close(self) -> None:
        self.cached.close()
        self._conn.close()
        closer = getattr(self.lm, "close", None)
        if callable(closer):
            closer()


def _check_servable(lm: Any, formulation: str) -> None:
    """Refuse a fixed formulation the (served) model cannot serve, in one line."""
    allowed = lm.formulations
    if allowed is None or formulation in allowed:
        return
    from safescale.models.served import ServedModelError

    record = getattr(lm, "probe_record", {}) or {}
    raise ServedModelError(
        f"model {lm.name!r} ({lm.settings.base_url or lm.settings.model}): "
        f"answer.formulation {formulation} cannot be served: {record.get('verdict', '')}; "
        f"use auto or one of {', '.join(sorted(allowed))}"
    )


def _in_shard_order(
    answer: Callable[[str], ItemResult], item_ids: list[str], order: list[str]
) -> Iterator[ItemResult]:
    """Answer ``item_ids`` one by one in ``order`` (a permutation of them); yield the
    results in ``item_ids`` order, each once it and every earlier one are done. When an
    item fails, the done items before it in ``item_ids`` order are yielded, then its
    exception is raised."""
    done: dict[str, ItemResult] = {}
    position = 0

    def ready() -> Iterator[ItemResult]:
        nonlocal position
        while position < len(item_ids) and item_ids[position] in done:
            yield done.pop(item_ids[position])
            position += 1

    for item_id in order:
        try:
            done[item_id] = answer(item_id)
        except BaseException:
            yield from ready()
            raise
        yield from ready()


def _in_flight(
    answer: Callable[[str], ItemResult],
    item_ids: list[str],
    threads: int,
    batcher: Any,
    *,
    prepare: Callable[[], object],
    order: list[str] | None = None,
) -> Iterator[ItemResult]:
    """Answer ``item_ids`` with ``threads`` item threads of ``batcher`` (each takes the
    next unanswered item of ``order``, default ``item_ids``, when it is free); yield
    the results in ``item_ids`` order. An item's exception is raised when its turn to
    be yielded comes (or, when an earlier item was never started because of it, at
    that earlier item's turn); no new item is started after one failed, and every
    thread has ended when this returns."""
    prepare()  # shared lazy state (the compiled graph) is built before the threads start
    lock = threading.Condition()
    results: dict[int, ItemResult | BaseException] = {}
    index_of = {item_id: i for i, item_id in enumerate(item_ids)}
    sequence = [index_of[i] for i in (order or item_ids)]
    started: set[int] = set()
    state: dict[str, Any] = {
        "next": 0,
        "stop": False,
        "crash": None,
        "ended": 0,
        "failure": None,
    }

    def work() -> None:
        try:
            _work()
        except BaseException as exc:  # outside any item: raised by the caller at once
            with lock:
                state["crash"] = exc
                lock.notify_all()
        finally:
            with lock:
                state["ended"] += 1
            batcher.wake()

    def _work() -> None:
        with batcher.worker():
            while True:
                with lock:
                    if state["stop"] or state["next"] >= len(sequence):
                        return
                    index = sequence[state["next"]]
                    state["next"] += 1
                    started.add(index)
                try:
                    out: ItemResult | BaseException = answer(item_ids[index])
                except BaseException as exc:  # re-raised in order below
                    out = exc
                with lock:
                    results[index] = out
                    if isinstance(out, BaseException):
                        state["stop"] = True
                        state["failure"] = state["failure"] or out
                    lock.notify_all()
                batcher.wake()

    pool = [
        threading.Thread(target=work, name=f"safescale-item-{i}", daemon=True)
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    try:
        for index in range(len(item_ids)):

            def ready(index: int = index) -> bool:
                with lock:
                    never = state["stop"] and index not in started
                    return index in results or state["crash"] is not None or never

            batcher.serve(ready)  # this thread runs the items' model calls meanwhile
            with lock:
                out = results.pop(index, state["crash"] or state["failure"])
            if isinstance(out, BaseException):
                raise out
            yield out
    finally:
        with lock:
            state["stop"] = True

        def ended() -> bool:
            with lock:
                return state["ended"] == len(pool)

        batcher.serve(ended)
        for thread in pool:
            thread.join()


def commit(run_dir: Path, result: ItemResult) -> None:
    """Append one item's records: steps and attribution first, the response line last
    (the commit mark)."""
    commit_item(run_dir, result.steps, result.attribution, result.response)


@dataclass
class PreparedRun:
    """A run directory ready for work (see :func:`prepare_run`).

    Attributes:
        manifest: the run's manifest (models are added as they load).
        items: the selected items per corpus reference.
        done: keys of the responses already committed.
        created: this call created the manifest (a failed start removes the run).
        created_dir: this call created the directory itself.
    """

    manifest: RunManifest
    items: dict[str, list[Item]]
    done: set[ResponseKey]
    created: bool = False
    created_dir: bool = False


def prepare_run(config: ExperimentConfig, lock: RunLock, *, fresh: bool = False) -> PreparedRun:
    """Create or check the run directory (whose writer ``lock`` the caller holds), repair
    it after a crash. The corpora load before anything is written.

    Raises:
        RunConflictError: the directory holds a run of another config (and not ``fresh``).
        RunDirError: a corrupt manifest, response file or SQLite file; a corpus name
            that is not a slug.
        CorpusError: a corpus does not load.
    """
    run_dir = Path(config.run_dir)
    corpora = _load_corpora(config)
    items = {ref: select_items(corpus, config) for ref, corpus in corpora.items()}
    reader = RunDir(run_dir)
    digest = config.config_hash()
    if (run_dir / MANIFEST_FILE).exists():
        manifest = reader.manifest()
        if manifest.config_hash != digest and _stored_config_hash(run_dir) == digest:
            # the run's own config.yaml, read by this version, is this config: it was
            # written before fields were added (at their defaults) or before the hash
            # left some settings out; record the hash this version computes
            manifest = manifest.model_copy(update={"config_hash": digest})
            write_manifest(run_dir, manifest)
        if manifest.config_hash == digest:
            for name in ("lm_cache.sqlite", "checkpoints.sqlite"):
                _check_sqlite(run_dir / name)
            repair_run_files(run_dir)
            done = reader.response_keys()
            drop_orphans(run_dir, done, reader.legacy_axes())
            # same config up to ``limit``: a new limit extends (or re-reads) the run
            atomic_write_text(run_dir / CONFIG_FILE, config.to_yaml())
            return PreparedRun(manifest, items, done)
        if not fresh:
            raise RunConflictError(
                f"{run_dir / MANIFEST_FILE}: config_hash: {run_dir} holds a run of a different "
                f"config (hash {manifest.config_hash[:12]}… vs {digest[:12]}…); use another "
                "--out directory, or --fresh to move the old run aside and start again"
            )
    created_dir = lock.created_dir
    if fresh and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        lock.release()
        os.replace(run_dir, run_dir.with_name(f"{run_dir.name}.old-{stamp}"))
        lock.acquire()
        created_dir = True
    for name in ("lm_cache.sqlite", "checkpoints.sqlite"):
        _check_sqlite(run_dir / name)
    manifest = _new_manifest(config, corpora)
    atomic_write_text(run_dir / CONFIG_FILE, config.to_yaml())
    write_manifest(run_dir, manifest)
    return PreparedRun(manifest, items, set(), created=True, created_dir=created_dir)


def _stored_config_hash(run_dir: Path) -> str | None:
    """The config hash this version computes from a run directory's own ``config.yaml``
    (None when it is missing or no longer a valid config)."""
    from safescale.experiments.config import ConfigError, parse_config

    path = run_dir / CONFIG_FILE
    try:
        return parse_config(path.read_text(), source=str(path)).config_hash()
    except (OSError, ConfigError, ValueError):
        return None


_STARTED_FILES = (
    CONFIG_FILE,
    MANIFEST_FILE,
    RESPONSES_FILE,
    STEPS_FILE,
    ATTRIBUTION_FILE,
    "lm_cache.sqlite",
    "lm_cache.sqlite-wal",
    "lm_cache.sqlite-shm",
    "checkpoints.sqlite",
    "checkpoints.sqlite-wal",
    "checkpoints.sqlite-shm",
)


def _undo_start(run_dir: Path, prepared: PreparedRun | None, lock: RunLock) -> None:
    """Remove what a start that failed before its first response created."""
    created_dir = lock.created_dir if prepared is None else prepared.created_dir
    if prepared is not None and not prepared.created:
        return
    responses = run_dir / RESPONSES_FILE
    if responses.exists() and responses.stat().st_size > 0:
        return
    if prepared is None and (run_dir / MANIFEST_FILE).exists():
        return  # the failure came before this call wrote anything
    if created_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in (*_STARTED_FILES, LOCK_FILE):
        (run_dir / name).unlink(missing_ok=True)


@dataclass
class _Writing:
    lock: RunLock
    prepared: PreparedRun | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class writing_run:
    """Hold a run directory's writer lock for a run; a run that fails before its first
    response is committed leaves nothing behind (so the corrected command works).

    Usage::

        with writing_run(config, fresh=fresh) as state:
            prepared = state.prepared
    """

    def __init__(self, config: ExperimentConfig, *, fresh: bool = False) -> None:
        self.config = config
        self.fresh = fresh
        self.state = _Writing(RunLock(config.run_dir))

    def __enter__(self) -> _Writing:
        run_dir = Path(self.config.run_dir)
        self.state.lock.acquire()
        try:
            self.state.prepared = prepare_run(self.config, self.state.lock, fresh=self.fresh)
        except BaseException:
            _undo_start(run_dir, None, self.state.lock)
            self.state.lock.release()
            raise
        return self.state

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None:
                _undo_start(Path(self.config.run_dir), self.state.prepared, self.state.lock)
        finally:
            self.state.lock.release()


def record_model(run_dir: Path, manifest: RunManifest, name: str, info: dict) -> None:
    """Write a model's spec and hash, how it reads answers on each corpus
    (``info["formulations"]``) and how max-context packs it (``info["max_context"]``),
    into the manifest."""
    info = dict(info)
    formulations = info.pop("formulations", None)
    max_context = info.pop("max_context", None)
    manifest.models[name] = ModelEntry.model_validate(info)
    if formulations is not None:
        manifest.formulations[name] = formulations
    if max_context:
        manifest.max_context[name] = max_context
    write_manifest(run_dir, manifest)


def open_checkpointer(path: Path) -> tuple[sqlite3.Connection, Any]:
    """A SQLite checkpointer whose deserializer is strict: only LangGraph's own safe types
    (and plain data, which is all a safescale state holds) are revived; any other type
    in a tampered ``checkpoints.sqlite`` is refused instead of imported."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
    from langgraph.checkpoint.sqlite import SqliteSaver

    serde = JsonPlusSerializer(
        pickle_fallback=False, allowed_json_modules=None, allowed_msgpack_modules=None
    )
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
    saver = SqliteSaver(conn, serde=serde)
    saver.setup()
    return conn, saver


def progress_bar(console: Console, enabled: bool):
    """A rich progress bar of cells and items on ``console`` (a no-op context when not
    ``enabled``)."""
    if not enabled:
        return nullcontext()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


# ---------------------------------------------------------------- the run
def run_experiment(
    config: ExperimentConfig,
    *,
    fresh: bool = False,
    console: Console | None = None,
    progress: bool = True,
    on_item: Callable[[int], None] | None = None,
) -> RunSummary:
    """Run (or resume) the sweep of ``config`` in this process into ``config.run_dir``.

    Each item is committed as soon as it is answered. Returns what was done.
    """
    console = console or Console(stderr=True)
    started = time.perf_counter()
    run_dir = Path(config.run_dir)
    with writing_run(config, fresh=fresh) as state:
        prepared = state.prepared
        assert prepared is not None
        manifest, items, done = prepared.manifest, prepared.items, prepared.done
        summary = RunSummary(run_dir=run_dir)
        tasks = plan_tasks(config, items, done)
        total = sum(len(items[c.corpus]) for c in config.grid())
        summary.skipped = total - sum(len(t.item_ids) for t in tasks)
        with progress_bar(console, progress) as prog:
            bar = (
                prog.add_task("items", total=total, completed=summary.skipped) if progress else None
            )
            for model_cfg in config.models:
                mine = [t for t in tasks if t.model == model_cfg.name]
                if not mine and model_cfg.name in manifest.models:
                    continue
                worker = CellWorker(config, model_cfg.name)
                record_model(run_dir, manifest, model_cfg.name, worker.model_info)
                try:
                    for task in mine:
                        if progress:
                            prog.update(bar, description=task.label + _axes_label(config, task))
                        ctx = worker.context(task)
                        for result in worker.run_items(task, ctx):
                            commit(run_dir, result)
                            summary.answered += 1
                            if on_item is not None:
                                on_item(summary.answered)
                            if progress:
                                prog.advance(bar)
                finally:
                    summary.lm_cache_hits += worker.cached.hits
                    summary.lm_cache_misses += worker.cached.misses
                    if model_cfg.served:  # the served model's counters, as they ended
                        record_model(run_dir, manifest, model_cfg.name, worker.model_info)
                    prefix = getattr(worker.lm, "prefix_cache", None)  # a served model: none
                    if prefix is not None:
                        summary.prefix_cache[model_cfg.name] = prefix.stats.as_dict()
                    worker.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _axes_label(config: ExperimentConfig, task: CellTask) -> str:
    """The swept context budget and retrieval depth of a task, for progress bars."""
    swept = config.swept_axes()
    text = ""
    if "context_budget" in swept:
        text += f" · context {context_budget_label(task.context_budget)}"
    if "retrieval_k" in swept:
        text += f" · k {task.retrieval_k}"
    return text


def _load(model_cfg: ModelConfig, load_model):
    if model_cfg.served:
        from safescale.models.served import load_served

        return load_served(model_cfg.served_settings())
    return load_model(
        model_cfg.spec or model_cfg.name,
        device=model_cfg.device,
        dtype=model_cfg.dtype,
        batch_size=model_cfg.batch_size,
        prefix_cache_mb=model_cfg.prefix_cache_mb,
    )


def model_loader(config_models: Sequence[ModelConfig]) -> Callable[[str, ModelEntry], Any]:
    """Load a run's model by its config entry (device, dtype) or its recorded spec."""
    from safescale.models import load_model

    by_name = {m.name: m for m in config_models}

    def load(name: str, entry: ModelEntry):
        model_cfg = by_name.get(name) or ModelConfig(name=name, spec=entry.spec)
        return _load(model_cfg, load_model)

    return load


def _run_models(reader: RunDir) -> list[ModelConfig]:
    """The model entries of the run's ``config.yaml`` (device, dtype, batch size)."""
    models = []
    for entry in reader.config_data().get("models") or []:
        try:
            models.append(ModelConfig.model_validate(entry))
        except ValueError:
            continue
    return models


def detect_run(
    run_dir: str | Path,
    config: Any,
    *,
    models: Sequence[ModelConfig] | None = None,
    force: bool = True,
    console: Console | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list, list[str]]:
    """Train and evaluate detectors on a run directory's frozen responses, per model x
    corpus, into ``detection/<model>__<corpus>/``, and write the combined
    ``detection/triage.json`` / ``triage.md``. The one code path of ``safescale detect
    train`` and the runner's detection stage. Never regenerates answers.

    Args:
        run_dir: the run directory (read through :class:`RunDir`).
        config: the :class:`~safescale.detection.DetectionConfig`.
        models: model settings (device, dtype) by name; default the run's config.yaml.
        force: retrain a (model, corpus) whose outputs exist for the same responses.
        console: where notes go.
        progress: called with (model, done, total) while features are extracted.

    A corpus whose items carry no ``task`` (e.g. ``radiology-guidelines``) cannot use
    ``label_source="task"``; it is labeled by outcome instead, and a note says so.

    Returns:
        The triage reports and the notes (skipped or relabeled pairs).

    Raises:
        RunDirError: not a run directory, no responses, or a model whose weights changed.
    """
    from safescale.detection.extraction import (
        DETECTION_INPUTS_DIR,
        DetectionInputStore,
        token_idf,
    )
    from safescale.detection.pipeline import (
        evaluate_detection,
        run_detection,
        write_combined,
        write_transfer,
    )

    console = console or Console(stderr=True)
    reader = RunDir(run_dir)
    manifest = reader.manifest()
    responses = reader.responses()
    corpora = reader.corpora(manifest)
    model_cfgs = models if models is not None else _run_models(reader)
    load = model_loader(model_cfgs)
    reports: list = []
    notes: list[str] = []
    dirs: list[Path] = []
    trained = False
    with RunLock(reader.path):
        for name, entry in manifest.models.items():
            lm = None
            served_config = _served_detection(name, entry, config, model_cfgs, console, notes)
            if not served_config.detectors:
                continue
            for corpus_name, corpus in corpora.items():
                ids = set(corpus.items_by_id)
                records = [r for r in responses if r.model == name and r.item in ids]
                if config.conditions is not None:
                    records = [r for r in records if r.condition in config.conditions]
                if not records:
                    continue
                out = reader.detection_dir(name, corpus_name)
                digest = _records_digest(records, config)
                stamp = out / "responses.sha256"
                if not force and stamp.exists() and stamp.read_text() == digest:
                    reports.append(evaluate_detection(out))
                    dirs.append(out)
                    continue
                detection_config = served_config
                if config.label_source == "task" and not any(i.task for i in corpus.items):
                    detection_config = detection_config.model_copy(
                        update={"label_source": "outcome"}
                    )
                    notes.append(f"{corpus_name}: items have no task; labeled by outcome")
                labels = corpus.safety_labels
                if detection_config.label_source == "outcome" and not (
                    labels.is_labeled("high_risk") or labels.is_labeled("unsafe")
                ):  # every response would be 'safe': nothing to train or measure
                    note = f"{name} · {corpus_name}: detection skipped: no safety labels"
                    notes.append(f"{note} (items have no task and no high_risk/unsafe labels)")
                    console.print(f"[yellow]{note}[/]")
                    continue
                if lm is None and entry.whitebox:  # the served model's weights, loaded here
                    lm = _whitebox_model(entry, model_cfgs, name)
                elif lm is None:
                    lm = lazy_model(load, name, entry, reader)
                console.print(f"detection: {name} · {corpus_name} ({len(records)} responses)")
                callback = None if progress is None else (lambda d, t, n=name: progress(n, d, t))
                try:
                    report = run_detection(
                        records,
                        corpus,
                        lm,
                        detection_config,
                        out,
                        model_name=name,
                        progress=callback,
                        stored=DetectionInputStore(reader.path / DETECTION_INPUTS_DIR),
                        model_hash=entry.hash if not entry.whitebox else lm.model_hash,
                        idf=lambda model: token_idf(model, corpora.values()),
                    )
                except ValueError as exc:  # e.g. too few evidence groups for three splits
                    notes.append(f"{name} · {corpus_name}: detection skipped: {exc}")
                    console.print(f"[yellow]detection skipped[/]: {exc}")
                    continue
                atomic_write_text(stamp, digest)
                reports.append(report)
                dirs.append(out)
                trained = True
        root = reader.file(DETECTION_DIR)
        if trained and write_transfer(dirs, config):
            reports = [evaluate_detection(d) for d in dirs]  # now with their transfer cells
        if reports and (trained or not reader.file(TRIAGE_FILE).exists()):
            write_combined(root, reports)
        if trained or notes:
            atomic_write_text(root / "notes.json", json.dumps(notes, indent=2))
    return reports, notes


def _served_detection(
    name: str,
    entry: ModelEntry,
    config: Any,
    model_cfgs: Sequence[ModelConfig],
    console: Console,
    notes: list[str],
) -> Any:
    """The detection config of one model: for a served model without ``whitebox:``,
    the detectors that need weights are left out, and one line says so."""
    if entry.served is None or entry.whitebox:
        return config
    from safescale.detection.served import split_servable

    usable, unavailable = split_servable(
        config.detectors,
        continuations=entry.served.get("continuations"),
        model=name,
        kind=str(entry.served.get("kind")),
    )
    if unavailable:
        reasons: dict[str, list[str]] = {}
        for detector_name, reason in unavailable.items():
            reasons.setdefault(reason, []).append(detector_name)
        for reason, names in reasons.items():
            line = f"{name}: detectors {', '.join(names)} unavailable for this model: {reason}"
            notes.append(line)
            console.print(f"[yellow]detection[/]: {line}")
    return config.model_copy(update={"detectors": tuple(usable)})


def _whitebox_model(entry: ModelEntry, model_cfgs: Sequence[ModelConfig], name: str):
    """The local weights a served model's entry names as ``whitebox`` (same device and
    dtype settings as its config entry)."""
    from safescale.models import load_model

    cfg = next((m for m in model_cfgs if m.name == name), None)
    return load_model(
        str(entry.whitebox),
        device=cfg.device if cfg is not None else "cpu",
        dtype=cfg.dtype if cfg is not None else "float32",
        batch_size=cfg.batch_size if cfg is not None else 8,
    )


def lazy_model(load, name: str, entry: ModelEntry, reader: RunDir) -> Callable[[], Any]:
    """A loader of a run's model that loads it once, on first call, and checks its hash
    (detection needs the model only for responses without recorded inputs)."""
    loaded: list = []

    def get():
        if not loaded:
            lm = load(name, entry)
            if lm.model_hash != entry.hash:
                raise RunDirError(
                    f"{reader.file(MANIFEST_FILE)}: models.{name}.hash: model {name!r} "
                    f"loaded from {entry.spec!r} now has hash {lm.model_hash[:12]}…, "
                    f"the run's responses came from {entry.hash[:12]}…"
                )
            loaded.append(lm)
        return loaded[0]

    return get


def evaluate_run(run_dir: str | Path) -> list:
    """:func:`safescale.detection.pipeline.evaluate_run_dir` (kept under this name)."""
    from safescale.detection.pipeline import evaluate_run_dir

    return evaluate_run_dir(run_dir)


def run_detection_stage(
    config: ExperimentConfig, *, console: Console | None = None, force: bool = False
) -> list:
    """The runner's detection stage: :func:`detect_run` with the config's detection
    settings, skipping (model, corpus) pairs already trained on the same responses."""
    if not config.detection.enabled:
        return []
    reports, _ = detect_run(
        config.run_dir,
        config.detection.detection_config(),
        models=config.models,
        force=force,
        console=console or Console(stderr=True),
    )
    return reports


def _records_digest(records, config: Any = None) -> str:
    digest = hashlib.sha256()
    if config is not None:
        digest.update(config.model_dump_json().encode())
    # the context budget and retrieval depth count only when the records differ in
    # them (so the stamps of runs made before those axes stay valid)
    several_budgets = len({r.context_budget for r in records}) > 1
    several_k = len({r.retrieval_k for r in records}) > 1

    def order(r) -> tuple:
        return (r.condition, r.item, r.samples_budget, r.conflict_dose,
                context_budget_label(r.context_budget), r.retrieval_k)  # fmt: skip

    for r in sorted(records, key=order):
        axes = f"|d{r.conflict_dose}" if r.conflict_dose else ""
        axes += f"|c{context_budget_label(r.context_budget)}" if several_budgets else ""
        axes += f"|k{r.retrieval_k}" if several_k else ""
        digest.update(
            f"{r.condition}|{r.item}|{r.samples_budget}{axes}|{r.chosen}|{r.response}".encode()
        )
    return digest.hexdigest()
