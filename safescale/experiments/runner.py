"""The sweep runner: config -> cells -> frozen responses, steps, attributions,
detection, metrics and report in one run directory.

Cells are model x corpus x condition x compute budget, each cut into item shards.
Durability rules:

* every LM call goes through a SQLite cache keyed by (model hash, prompt, decoding
  settings) in ``lm_cache.sqlite``; graph checkpoints go to ``checkpoints.sqlite``;
* per item, its step records and attribution are appended first and its response line
  last, each as one ``write`` + ``fsync``: the response line is the commit mark. On
  resume, a torn last line is cut off, step/attribution rows of items without a
  response are dropped, and only items without a response are run again (their
  partial checkpoint thread is deleted first);
* a run directory belongs to one resolved config (by hash): running a different config
  into it is refused unless ``fresh=True``, which moves the old directory aside.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from safescale.agents import (
    AgentContext,
    AgentSettings,
    CachedLM,
    answer_item,
    attribute_failure,
    build_condition,
    thread_id,
)
from safescale.corpora import Corpus, Item, load_corpus
from safescale.experiments.calibration import calibrate, calibration_item_ids, needs_calibration
from safescale.experiments.config import ExperimentConfig, ModelConfig
from safescale.experiments.rundir import (
    ATTRIBUTION_FILE,
    MANIFEST_FILE,
    RESPONSES_FILE,
    STEPS_FILE,
    RunDirError,
    atomic_write_text,
    read_jsonl,
)

__all__ = [
    "RUN_SCHEMA_VERSION",
    "CellTask",
    "CellWorker",
    "ItemResult",
    "RunConflictError",
    "RunSummary",
    "commit",
    "item_order",
    "plan_tasks",
    "prepare_run",
    "record_model",
    "run_detection_stage",
    "run_experiment",
    "select_items",
]

RUN_SCHEMA_VERSION = 1
_RAG = {"standard_rag", "agentic_rag", "max_context"}
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


def select_items(corpus: Corpus, config: ExperimentConfig) -> list[Item]:
    """Items of a corpus for this run: the calibration items removed (when the answer
    formulation needs them, see :mod:`.calibration`), the item filter, then the first
    ``limit`` items of the seeded :func:`item_order` (kept in corpus order)."""
    items = list(corpus.items)
    if needs_calibration(config.answer.formulation):
        held_out = set(
            calibration_item_ids(corpus, config.answer.calibration_items, config.seed)
        )
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


def _prepare(run_dir: Path, config: ExperimentConfig, fresh: bool) -> dict:
    manifest_path = run_dir / MANIFEST_FILE
    digest = config.config_hash()
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as exc:
            raise RunDirError(f"{manifest_path}: corrupt manifest: {exc}") from None
        if manifest.get("config_hash") != digest:
            if not fresh:
                raise RunConflictError(
                    f"{run_dir} holds a run of a different config (hash "
                    f"{str(manifest.get('config_hash'))[:12]}… vs {digest[:12]}…); use another "
                    "--out directory, or --fresh to move the old run aside and start again"
                )
        else:
            # same config up to ``limit``: a new limit extends (or re-reads) the run
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
            return manifest
    if fresh and run_dir.exists() and any(run_dir.iterdir()):
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.replace(run_dir, run_dir.with_name(f"{run_dir.name}.old-{stamp}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "schema_version": RUN_SCHEMA_VERSION,
        "name": config.name,
        "config_hash": digest,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "packages": _versions(),
        "git_revision": _git_revision(),
        "seed": config.seed,
        "models": {},
        "corpora": {},
    }
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return manifest


def _repair_jsonl(path: Path) -> None:
    """Cut a torn final line (a crash mid-write) so appends start on a clean line."""
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)


def _append(path: Path, rows: Iterable[str]) -> None:
    payload = "".join(row + "\n" for row in rows).encode()
    if not payload:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)


def _done_keys(run_dir: Path) -> set[tuple[str, str, str, int]]:
    path = run_dir / RESPONSES_FILE
    if not path.exists():
        return set()
    return {
        (r["model"], r["condition"], r["item"], r["samples_budget"]) for r in read_jsonl(path).rows
    }


def _drop_orphans(run_dir: Path, done: set[tuple[str, str, str, int]]) -> None:
    """Remove step/attribution rows of items whose response was never committed."""
    for name in (STEPS_FILE, ATTRIBUTION_FILE):
        path = run_dir / name
        if not path.exists():
            continue
        rows = read_jsonl(path).rows
        keep = []
        for row in rows:
            key = (row["model"], row["condition"], row["item"], row.get("samples_budget", 1))
            if key in done:
                keep.append(row)
        if len(keep) != len(rows):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


# ---------------------------------------------------------------- cells and workers
@dataclass(frozen=True)
class CellTask:
    """One shard of one cell: items of one corpus under one condition and budget for
    one model. Plain data, so it can be shipped to another process."""

    model: str
    corpus: str
    condition: str
    samples_budget: int
    item_ids: tuple[str, ...]


@dataclass(frozen=True)
class ItemResult:
    """The serialized records of one answered item (what a commit appends)."""

    key: tuple[str, str, str, int]
    response: str
    steps: tuple[str, ...]
    attribution: str | None


def plan_tasks(
    config: ExperimentConfig,
    items: dict[str, list[Item]],
    done: set[tuple[str, str, str, int]],
) -> list[CellTask]:
    """The pending shards of the sweep, in grid order (finished items left out)."""
    tasks = []
    for cell in config.grid():
        ids = [
            item.id
            for item in items[cell.corpus]
            if (cell.model.name, cell.condition, item.id, cell.samples_budget) not in done
        ]
        for start in range(0, len(ids), config.shard_size):
            tasks.append(
                CellTask(
                    cell.model.name,
                    cell.corpus,
                    cell.condition,
                    cell.samples_budget,
                    tuple(ids[start : start + config.shard_size]),
                )
            )
    return tasks


class CellWorker:
    """Runs cell tasks for one model: loads the model once, then reuses it, its LM
    cache, the corpora and the evidence stores across tasks."""

    def __init__(self, config: ExperimentConfig, model_name: str) -> None:
        from langgraph.checkpoint.sqlite import SqliteSaver

        from safescale.models import load_model

        self.config = config
        self.run_dir = Path(config.run_dir)
        self.model_cfg = next(m for m in config.models if m.name == model_name)
        self.lm = _load(self.model_cfg, load_model)
        self.cached = CachedLM(self.lm, self.run_dir / "lm_cache.sqlite")
        self._conn = sqlite3.connect(
            str(self.run_dir / "checkpoints.sqlite"), check_same_thread=False, timeout=60
        )
        self.checkpointer = SqliteSaver(self._conn)
        self.checkpointer.setup()
        self._corpora: dict[str, Corpus] = {}
        self._stores: dict[str, object] = {}
        self._graphs: dict[str, object] = {}
        self._answering: dict[str, dict] = {}

    @property
    def model_info(self) -> dict:
        """Spec, hash and shape of the model, and how it reads answers on each corpus
        (the calibration record of :func:`.calibration.calibrate`, or the fixed
        formulation)."""
        return {
            "spec": self.model_cfg.spec or self.model_cfg.name,
            "hash": self.lm.model_hash,
            "context_length": self.lm.context_length,
            "layers": self.lm.n_layers,
            "formulations": {
                self.corpus(ref).name: self.answering(ref) for ref in self.config.corpora
            },
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
                )
            else:
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
            k=config.retrieval.k,
            max_steps=config.agentic.max_steps,
            context_budget=config.context_budget,
            samples=task.samples_budget,
            temperature=config.compute.temperature or 0.7,
            extra_samples=config.compute.detection_samples,
            seed=config.seed,
            formulation=self.answering(task.corpus)["chosen"],
            position_prior=self.answering(task.corpus).get("position_prior"),
        )
        return AgentContext(
            lm=self.cached,
            corpus=self.corpus(task.corpus),
            store=self._store(task.corpus) if task.condition in _RAG else None,
            settings=settings,
            run_id=config.name,
        )

    def run_item(self, task: CellTask, item_id: str, ctx: AgentContext) -> ItemResult:
        """Answer one item (a stale partial checkpoint thread is deleted first)."""
        if task.condition not in self._graphs:
            self._graphs[task.condition] = build_condition(
                task.condition, checkpointer=self.checkpointer
            )
        graph = self._graphs[task.condition]
        corpus = ctx.corpus
        thread = thread_id(task.model, corpus.name, task.condition, task.samples_budget, item_id)
        self.checkpointer.delete_thread(thread)
        response, steps = answer_item(graph, task.condition, item_id, ctx, model=task.model)
        attribution = attribute_failure(response, steps, corpus)
        return ItemResult(
            key=(task.model, task.condition, item_id, task.samples_budget),
            response=response.model_dump_json(),
            steps=tuple(s.model_dump_json() for s in steps),
            attribution=None if attribution is None else attribution.model_dump_json(),
        )

    def run_task(self, task: CellTask) -> list[ItemResult]:
        """Answer every item of a shard."""
        ctx = self.context(task)
        return [self.run_item(task, item_id, ctx) for item_id in task.item_ids]

    def close(self) -> None:
        self.cached.close()
        self._conn.close()


def commit(run_dir: Path, result: ItemResult) -> None:
    """Append one item's records: steps and attribution first, the response line last
    (the commit mark)."""
    _append(run_dir / STEPS_FILE, result.steps)
    if result.attribution is not None:
        _append(run_dir / ATTRIBUTION_FILE, [result.attribution])
    _append(run_dir / RESPONSES_FILE, [result.response])


def prepare_run(
    config: ExperimentConfig, *, fresh: bool = False
) -> tuple[dict, dict[str, list[Item]], set[tuple[str, str, str, int]]]:
    """Create or check the run directory, repair it after a crash, record the corpora.

    Returns:
        The manifest, the selected items per corpus, and the keys already done.
    """
    run_dir = Path(config.run_dir)
    manifest = _prepare(run_dir, config, fresh)
    for name in (RESPONSES_FILE, STEPS_FILE, ATTRIBUTION_FILE):
        _repair_jsonl(run_dir / name)
    done = _done_keys(run_dir)
    _drop_orphans(run_dir, done)
    corpora = {ref: load_corpus(ref) for ref in config.corpora}
    for ref, corpus in corpora.items():
        manifest["corpora"][corpus.name] = {
            "ref": ref,
            "path": str(corpus.path) if corpus.path else None,
            "content_hash": corpus.content_hash,
        }
    items = {ref: select_items(corpus, config) for ref, corpus in corpora.items()}
    atomic_write_text(run_dir / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest, items, done


def record_model(run_dir: Path, manifest: dict, name: str, info: dict) -> None:
    """Write a model's spec and hash into the manifest."""
    manifest["models"][name] = info
    atomic_write_text(run_dir / MANIFEST_FILE, json.dumps(manifest, indent=2))


def _progress(console: Console, enabled: bool):
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
    manifest, items, done = prepare_run(config, fresh=fresh)
    summary = RunSummary(run_dir=run_dir)
    tasks = plan_tasks(config, items, done)
    total = sum(len(items[c.corpus]) for c in config.grid())
    summary.skipped = total - sum(len(t.item_ids) for t in tasks)
    with _progress(console, progress) as prog:
        bar = prog.add_task("items", total=total, completed=summary.skipped) if progress else None
        for model_cfg in config.models:
            mine = [t for t in tasks if t.model == model_cfg.name]
            if not mine and model_cfg.name in manifest["models"]:
                continue
            worker = CellWorker(config, model_cfg.name)
            record_model(run_dir, manifest, model_cfg.name, worker.model_info)
            for task in mine:
                if progress:
                    prog.update(
                        bar,
                        description=f"{task.model} · {task.corpus} · {task.condition}"
                        f" · x{task.samples_budget}",
                    )
                ctx = worker.context(task)
                for item_id in task.item_ids:
                    commit(run_dir, worker.run_item(task, item_id, ctx))
                    summary.answered += 1
                    if on_item is not None:
                        on_item(summary.answered)
                    if progress:
                        prog.advance(bar)
            summary.lm_cache_hits += worker.cached.hits
            summary.lm_cache_misses += worker.cached.misses
            worker.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _load(model_cfg: ModelConfig, load_model):
    return load_model(
        model_cfg.spec or model_cfg.name,
        device=model_cfg.device,
        dtype=model_cfg.dtype,
        batch_size=model_cfg.batch_size,
    )


def run_detection_stage(
    config: ExperimentConfig, *, console: Console | None = None, force: bool = False
) -> list:
    """Train and evaluate the configured detectors on the run's frozen responses, per
    model x corpus, into ``detection/<model>__<corpus>/``; write the combined
    ``detection/triage.json``. Skips a (model, corpus) whose detection outputs exist
    for the same responses unless ``force``. Never regenerates answers.

    A corpus whose items carry no ``task`` (e.g. ``radiology-guidelines``) cannot use
    ``label_source="task"``; it is labeled by outcome instead, and the report says so.
    """
    from safescale.detection.pipeline import (
        _write_combined,
        evaluate_detection,
        read_responses,
        run_detection,
    )
    from safescale.models import load_model

    console = console or Console(stderr=True)
    run_dir = Path(config.run_dir)
    if not config.detection.enabled:
        return []
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    responses = read_responses(run_dir / RESPONSES_FILE)
    base = config.detection.detection_config()
    reports = []
    notes = []
    trained = False
    for model_cfg in config.models:
        lm = None
        for ref in config.corpora:
            corpus = load_corpus(ref)
            ids = set(corpus.items_by_id)
            records = [r for r in responses if r.model == model_cfg.name and r.item in ids]
            if not records:
                continue
            out = run_dir / "detection" / f"{model_cfg.name}__{corpus.name}"
            digest = _records_digest(records)
            stamp = out / "responses.sha256"
            if not force and stamp.exists() and stamp.read_text() == digest:
                reports.append(evaluate_detection(out))
                continue
            detection_config = base
            if base.label_source == "task" and not any(i.task for i in corpus.items):
                detection_config = base.model_copy(update={"label_source": "outcome"})
                notes.append(f"{corpus.name}: items have no task; labeled by outcome")
            if lm is None:
                lm = _load(model_cfg, load_model)
                expected = manifest["models"].get(model_cfg.name, {}).get("hash")
                if expected and lm.model_hash != expected:
                    raise RunDirError(
                        f"model {model_cfg.name!r} now has hash {lm.model_hash[:12]}…, the run's "
                        f"responses came from {expected[:12]}…"
                    )
            console.print(f"detection: {model_cfg.name} · {corpus.name} ({len(records)} responses)")
            try:
                report = run_detection(
                    records, corpus, lm, detection_config, out, model_name=model_cfg.name
                )
            except ValueError as exc:  # e.g. too few evidence groups for three splits
                notes.append(f"{model_cfg.name} · {corpus.name}: detection skipped: {exc}")
                console.print(f"[yellow]detection skipped[/]: {exc}")
                continue
            atomic_write_text(stamp, digest)
            reports.append(report)
            trained = True
    if reports and (trained or not (run_dir / "detection" / "triage.json").exists()):
        _write_combined(run_dir / "detection", reports)
    if trained or notes:
        atomic_write_text(run_dir / "detection" / "notes.json", json.dumps(notes, indent=2))
    return reports


def _records_digest(records) -> str:
    import hashlib

    digest = hashlib.sha256()
    for r in sorted(records, key=lambda r: (r.condition, r.item, r.samples_budget)):
        digest.update(f"{r.condition}|{r.item}|{r.samples_budget}|{r.chosen}|{r.response}".encode())
    return digest.hexdigest()
