"""The run directory: one reader (:class:`RunDir`) and one writer lock (:class:`RunLock`).

A run directory (see DESIGN.md, "Experiments") holds ``manifest.json``,
``config.yaml``, ``responses.jsonl``, ``steps.jsonl`` and optionally
``attribution.jsonl``, ``metrics.json`` and ``detection/``. Every persisted object is a
model of the contract :mod:`safescale.records` (typed, versioned, migrated on read);
report, detect, trace, replay and the viewer all read through :class:`RunDir`.

The runner appends JSONL lines atomically, but a process killed mid-write can still
leave a partial *last* line: readers ignore such a line (and report it in
:attr:`JsonlContents.truncated_line`). A line that does not parse anywhere else is
corruption, and is an error naming the file and line.

Only one process writes a run directory at a time: :class:`RunLock` (an ``fcntl``
lock on ``RUN_DIR/.lock``, released by the kernel when the holder dies). Readers never
take it.

Nothing here loads a model (nor imports torch).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import BaseModel, ValidationError

from safescale.corpora.corpus import Corpus
from safescale.records import (
    DEFAULT_RETRIEVAL_K,
    AttributionRecord,
    MetricsReport,
    RelianceRecord,
    ReplayRecord,
    ResponseKey,
    ResponseRecord,
    RunManifest,
    StepRecord,
    TriageReportRecord,
    check_slug,
)

__all__ = [
    "ATTRIBUTION_FILE",
    "CONFIG_FILE",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "RELIANCE_FILE",
    "REPLAYS_FILE",
    "RESPONSES_FILE",
    "STEPS_FILE",
    "TRIAGE_FILE",
    "AttributionRow",
    "JsonlContents",
    "RunData",
    "RunDir",
    "RunDirError",
    "RunLock",
    "RunLockedError",
    "atomic_write_bytes",
    "atomic_write_text",
    "item_corpus_map",
    "legacy_axis_values",
    "load_attribution",
    "load_responses",
    "load_run",
    "load_run_corpora",
    "load_steps",
    "load_triage",
    "output_dir",
    "read_jsonl",
    "read_manifest",
    "records_frame",
    "response_key",
    "with_legacy_axes",
]

MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.yaml"
RESPONSES_FILE = "responses.jsonl"
STEPS_FILE = "steps.jsonl"
ATTRIBUTION_FILE = "attribution.jsonl"
REPLAYS_FILE = "replays.jsonl"
RELIANCE_FILE = "reliance.jsonl"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
DETECTION_DIR = "detection"
TRIAGE_FILE = Path(DETECTION_DIR) / "triage.json"

#: Kept for older imports: an attribution row is the contract's record.
AttributionRow = AttributionRecord

RecordT = TypeVar("RecordT", bound=BaseModel)


class RunDirError(ValueError):
    """A run directory is missing a file or holds a corrupt record (message names it
    as ``file[:line]: field: message``)."""


class RunLockedError(RunDirError):
    """Another process is writing the run directory."""


@dataclass(frozen=True)
class JsonlContents:
    """Parsed lines of a JSONL file.

    Attributes:
        path: the file.
        rows: parsed objects in file order.
        line_numbers: 1-based line number of each row.
        truncated_line: line number of an unparseable final line that was ignored.
    """

    path: Path
    rows: list[dict[str, Any]]
    line_numbers: list[int]
    truncated_line: int | None = None


def read_jsonl(path: str | Path) -> JsonlContents:
    """Read a JSONL file, ignoring blank lines and a truncated final line.

    Raises:
        RunDirError: a line other than the last is not a JSON object (message:
            ``file:line: ...``).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path}: cannot read: {error}") from None
    numbered = [(i, text) for i, text in enumerate(lines, start=1) if text.strip()]
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    truncated: int | None = None
    for position, (number, text) in enumerate(numbered):
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        except ValueError as error:
            if position == len(numbered) - 1:
                truncated = number
                break
            raise RunDirError(f"{path}:{number}: corrupt line: {error}") from None
        rows.append(obj)
        numbers.append(number)
    return JsonlContents(path, rows, numbers, truncated)


def _describe(error: ValidationError | ValueError) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(record)"
        message = str(first["msg"]).removeprefix("Value error, ")
        more = error.error_count() - 1
        return f"{where}: {message}" + (f" (and {more} more)" if more else "")
    return f"schema_version: {error}"


def _validate(model: type[RecordT], data: Any, where: str) -> RecordT:
    try:
        return model.model_validate(data)
    except (ValidationError, ValueError) as error:
        raise RunDirError(f"{where}: {_describe(error)} (not a {model.__name__})") from None


def _validate_rows(
    contents: JsonlContents, model: type[RecordT], axes: Mapping[str, Any] | None = None
) -> list[RecordT]:
    fill = with_legacy_axes if model is not ReplayRecord else _replay_with_axes
    return [
        _validate(model, fill(row, axes), f"{contents.path}:{number}")
        for row, number in zip(contents.rows, contents.line_numbers, strict=True)
    ]


def with_legacy_axes(row: dict[str, Any], axes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stored record row with the run's single configured value of each scale axis
    it does not record (a row written before the axis was recorded)."""
    if not axes or not isinstance(row, dict):
        return row
    missing = {k: v for k, v in axes.items() if k not in row}
    return {**row, **missing} if missing else row


def _replay_with_axes(row: dict[str, Any], axes: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`with_legacy_axes` for the response and steps inside a replay row."""
    if not axes or not isinstance(row, dict):
        return row
    out = dict(row)
    out["response"] = with_legacy_axes(row.get("response"), axes)
    if isinstance(row.get("steps"), list):
        out["steps"] = [with_legacy_axes(step, axes) for step in row["steps"]]
    return out


def _single(value: Any) -> tuple[bool, Any]:
    """(True, v) for a scalar or a one-entry list, (False, None) for a longer list."""
    if isinstance(value, list | tuple):
        return (True, value[0]) if len(value) == 1 else (False, None)
    return True, value


def legacy_axis_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a record without a scale axis ran at, from a run's resolved config data.

    A run made before the context budget and the retrieval depth were recorded had one
    value of each: its ``context_budget`` (None: the model's maximum) and its
    ``retrieval.k`` (default 5). A config with several values records them in every
    row, so nothing is filled in for that axis.
    """
    out: dict[str, Any] = {}
    single, budget = _single(config.get("context_budget"))
    if single:
        out["context_budget"] = None if budget in (None, "max") else int(budget)
    retrieval = config.get("retrieval")
    raw_k = retrieval.get("k", DEFAULT_RETRIEVAL_K) if isinstance(retrieval, dict) else None
    single, k = _single(DEFAULT_RETRIEVAL_K if raw_k is None else raw_k)
    if single:
        out["retrieval_k"] = int(k)
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path}: cannot read: {error}") from None


def response_key(record: ResponseRecord) -> ResponseKey:
    """Identity of a response in a run: (model, condition, item, samples_budget,
    conflict_dose, context_budget, retrieval_k)."""
    return record.key


def item_corpus_map(corpora: Mapping[str, Corpus]) -> dict[str, str]:
    """Item id -> corpus name over several corpora.

    Raises:
        RunDirError: an item id occurs in two corpora (responses could not be assigned).
    """
    owner: dict[str, str] = {}
    for name, corpus in corpora.items():
        for item in corpus.items:
            if item.id in owner and owner[item.id] != name:
                raise RunDirError(
                    f"item id {item.id!r} occurs in corpora {owner[item.id]!r} and {name!r}; "
                    "responses cannot be assigned to one corpus"
                )
            owner[item.id] = name
    return owner


@dataclass(frozen=True)
class RunData:
    """Everything the metrics read from a run directory.

    Attributes:
        run_dir: the directory.
        manifest: ``manifest.json`` as a (migrated, validated) plain dict.
        responses: validated, de-duplicated responses.
        corpora: corpora by name.
        attribution: failure attributions (may be empty).
        triage: ``detection/triage.json`` contents (plain dicts), or None.
        notes: human-readable notes (ignored truncated lines, dropped duplicates).
        reliance: causal-reliance records of the responses (may be empty).
    """

    run_dir: Path
    manifest: dict[str, Any]
    responses: list[ResponseRecord]
    corpora: dict[str, Corpus]
    attribution: list[AttributionRecord] = field(default_factory=list)
    triage: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)
    reliance: list[RelianceRecord] = field(default_factory=list)


class RunDir:
    """Typed read access to a run directory (the one reader every command uses).

    Args:
        path: the run directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------ paths
    def file(self, name: str | Path) -> Path:
        """A path inside the run directory."""
        return self.path / name

    def detection_dir(self, model: str, corpus: str) -> Path:
        """``detection/<model>__<corpus>/`` (both names must be slugs)."""
        check_slug(model, "model name")
        check_slug(corpus, "corpus name")
        return self.path / DETECTION_DIR / f"{model}__{corpus}"

    def require(self) -> None:
        """Raise RunDirError unless this is a run directory (it has a manifest)."""
        if not self.path.exists():
            raise RunDirError(f"{self.path}: no such directory")
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: not a directory")
        if not (self.path / MANIFEST_FILE).is_file():
            raise RunDirError(
                f"{self.path / MANIFEST_FILE}: no such file (is {self.path} a run directory?)"
            )

    # ------------------------------------------------------------ records
    def manifest(self) -> RunManifest:
        """The validated manifest (migrated to the current schema version)."""
        self.require()
        path = self.path / MANIFEST_FILE
        data = _read_json(path)
        if not isinstance(data, dict):
            raise RunDirError(f"{path}:1: expected a JSON object")
        return _validate(RunManifest, data, str(path))

    def responses_with_contents(self) -> tuple[list[ResponseRecord], JsonlContents]:
        """Validated responses, one per key (the last line of a repeated key wins),
        and the raw file contents (for the truncated-line note)."""
        path = self.path / RESPONSES_FILE
        if not path.is_file():
            if not self.path.is_dir():
                raise RunDirError(f"{self.path}: no such directory")
            raise RunDirError(f"{path}: no such file (is {self.path} a run directory?)")
        contents = read_jsonl(path)
        records = _validate_rows(contents, ResponseRecord, self.legacy_axes())
        unique = {r.key: r for r in records}
        return list(unique.values()), contents

    def responses(self) -> list[ResponseRecord]:
        """Validated, de-duplicated responses (RunDirError when there are none)."""
        records, contents = self.responses_with_contents()
        if not records:
            raise RunDirError(f"{contents.path}: holds no responses")
        return records

    def legacy_axes(self) -> dict[str, Any]:
        """What a record without a scale axis ran at (see :func:`legacy_axis_values`):
        read from the run's ``config.yaml`` ({} without one)."""
        return legacy_axis_values(self.config_data())

    def response_keys(self) -> set[ResponseKey]:
        """Keys of the committed responses (empty when there is no responses file)."""
        if not (self.path / RESPONSES_FILE).is_file():
            return set()
        records, _ = self.responses_with_contents()
        return {r.key for r in records}

    def steps(self) -> list[StepRecord]:
        """Validated step records (empty when there is no ``steps.jsonl``)."""
        path = self.path / STEPS_FILE
        if not path.is_file():
            return []
        return _validate_rows(read_jsonl(path), StepRecord, self.legacy_axes())

    def attribution(self) -> list[AttributionRecord]:
        """Failure attributions (empty when there is no ``attribution.jsonl``)."""
        path = self.path / ATTRIBUTION_FILE
        if not path.is_file():
            return []
        return _validate_rows(read_jsonl(path), AttributionRecord, self.legacy_axes())

    def replays(self) -> list[ReplayRecord]:
        """What-if replays written by ``safescale replay`` (empty when there are none)."""
        path = self.path / REPLAYS_FILE
        if not path.is_file():
            return []
        return _validate_rows(read_jsonl(path), ReplayRecord, self.legacy_axes())

    def reliance(self) -> list[RelianceRecord]:
        """Causal-reliance records (empty when there is no ``reliance.jsonl``); a
        response measured twice keeps its last record."""
        path = self.path / RELIANCE_FILE
        if not path.is_file():
            return []
        rows = _validate_rows(read_jsonl(path), RelianceRecord, self.legacy_axes())
        latest = {r.key: r for r in rows}
        return list(latest.values())

    def triage(self) -> list[TriageReportRecord] | None:
        """The reports of ``detection/triage.json`` (one per model x corpus), or None."""
        path = self.path / TRIAGE_FILE
        if not path.is_file():
            return None
        data = _read_json(path)
        if not isinstance(data, list):
            raise RunDirError(f"{path}:1: expected a JSON list of triage reports")
        return [
            _validate(TriageReportRecord, entry, f"{path}: [{i}]") for i, entry in enumerate(data)
        ]

    def metrics(self) -> MetricsReport:
        """``metrics.json`` (RunDirError when absent: run ``safescale report`` first)."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            raise RunDirError(f"{path}: no such file (run `safescale report {self.path}`)")
        return _validate(MetricsReport, _read_json(path), str(path))

    def config_data(self) -> dict[str, Any]:
        """The resolved config (``config.yaml``) as plain data ({} when absent)."""
        import yaml

        path = self.path / CONFIG_FILE
        if not path.is_file():
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise RunDirError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path}:1: expected a mapping")
        return data

    def corpora(self, manifest: RunManifest | None = None) -> dict[str, Corpus]:
        """The run's corpora by name, each checked against the manifest's content hash.

        Raises:
            RunDirError: no corpus recorded, a corpus that does not load, or one whose
                content hash differs from the recorded one.
        """
        from safescale.corpora import CorpusError, load_corpus

        manifest = manifest or self.manifest()
        where = self.path / MANIFEST_FILE
        if not manifest.corpora:
            raise RunDirError(f"{where}: corpora: the run records no corpus")
        corpora: dict[str, Corpus] = {}
        for name, entry in manifest.corpora.items():
            source = entry.path if entry.path and Path(entry.path).is_dir() else entry.ref
            try:
                corpus = load_corpus(source)
            except CorpusError as error:
                raise RunDirError(
                    f"{where}: corpora.{name}: cannot load {source!r}: {error}"
                ) from None
            if corpus.content_hash != entry.content_hash:
                raise RunDirError(
                    f"{where}: corpora.{name}.content_hash: corpus {corpus.name!r} now has "
                    f"content hash {corpus.content_hash[:12]}…, but the run was made with "
                    f"{entry.content_hash[:12]}…; metrics would use other labels"
                )
            corpora[name] = corpus
        return corpora

    def load(self) -> RunData:
        """Responses, corpora, attributions and triage results (what metrics read).

        Raises:
            RunDirError: missing responses, corrupt lines, unknown items or corpus drift.
        """
        manifest = self.manifest()
        responses, contents = self.responses_with_contents()
        notes = []
        if contents.truncated_line is not None:
            notes.append(
                f"{contents.path}:{contents.truncated_line}: truncated last line ignored "
                "(an interrupted write)"
            )
        dropped = len(contents.rows) - len(responses)
        if dropped:
            notes.append(f"{contents.path}: {dropped} duplicated response(s) dropped (last kept)")
        corpora = self.corpora(manifest)
        owner = item_corpus_map(corpora)
        unknown = sorted({r.item for r in responses} - owner.keys())
        if unknown:
            raise RunDirError(
                f"{contents.path}: item: {len(unknown)} item(s) not in the run's corpora "
                f"{sorted(corpora)}: {unknown[:5]}"
            )
        attribution_path = self.path / ATTRIBUTION_FILE
        attribution = self.attribution()
        if attribution_path.is_file():
            tail = read_jsonl(attribution_path).truncated_line
            if tail is not None:
                notes.append(f"{attribution_path}:{tail}: truncated last line ignored")
        triage = self.triage()
        return RunData(
            run_dir=self.path,
            manifest=manifest.model_dump(mode="json"),
            responses=responses,
            corpora=corpora,
            attribution=attribution,
            triage=None if triage is None else [t.model_dump(mode="json") for t in triage],
            notes=notes,
            reliance=self.reliance(),
        )


# ------------------------------------------------------------ thin function wrappers
def load_responses(run_dir: str | Path) -> tuple[list[ResponseRecord], JsonlContents]:
    """:meth:`RunDir.responses_with_contents`."""
    return RunDir(run_dir).responses_with_contents()


def load_steps(run_dir: str | Path) -> list[StepRecord]:
    """:meth:`RunDir.steps`."""
    return RunDir(run_dir).steps()


def load_attribution(run_dir: str | Path) -> list[AttributionRecord]:
    """:meth:`RunDir.attribution`."""
    return RunDir(run_dir).attribution()


def load_triage(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """:meth:`RunDir.triage` as plain dicts (one per model x corpus), or None."""
    reports = RunDir(run_dir).triage()
    return None if reports is None else [r.model_dump(mode="json") for r in reports]


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """:meth:`RunDir.manifest` as a plain dict."""
    return RunDir(run_dir).manifest().model_dump(mode="json")


def load_run_corpora(run_dir: str | Path) -> dict[str, Corpus]:
    """:meth:`RunDir.corpora`."""
    return RunDir(run_dir).corpora()


def load_run(run_dir: str | Path) -> RunData:
    """:meth:`RunDir.load`."""
    return RunDir(run_dir).load()


# ------------------------------------------------------------ the writer lock
class RunLock:
    """The exclusive writer lock of a run directory (``RUN_DIR/.lock``, ``fcntl.flock``).

    The kernel releases it when the holder exits, however it exits (kill -9
    included), so a stale lock never blocks a resume. The file records the holder's
    pid and host for the message a second writer gets.

    Args:
        run_dir: the run directory (created if missing).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None
        #: the last :meth:`acquire` created the directory.
        self.created_dir = False

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock at once or raise.

        Raises:
            RunLockedError: another process holds it (the message names its pid and host).
            RunDirError: the run directory path is a file or a dangling symlink; the
                directory cannot be written (read-only, no permission); ``.lock`` is a
                directory or a symlink.
        """
        if self._fd is not None:
            return self
        if self.run_dir.is_symlink() and not self.run_dir.exists():
            raise RunDirError(
                f"{self.run_dir}: --out: is a symlink to {os.readlink(self.run_dir)}, which "
                "does not exist; create that directory or give another --out"
            )
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir}: --out: is a file, not a directory")
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"{error.filename or self.run_dir}: cannot create the run directory: "
                f"{error.strerror or error}"
            ) from None
        if self.path.is_symlink():
            raise RunDirError(
                f"{self.path}: is a symlink (to {os.readlink(self.path)}), not the run's lock "
                "file; remove it"
            )
        if self.path.is_dir():
            raise RunDirError(f"{self.path}: is a directory, not the run's lock file; remove it")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise RunDirError(
                f"{self.path}: cannot take the writer lock: {error.strerror or error} (run, "
                "detect train and replay write the run directory: copy it somewhere "
                "writable; trace and view --serve only read it)"
                if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
                else f"{self.path}: cannot take the writer lock: {error.strerror or error}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = (
                    f"pid {info.get('pid')} on host {info.get('host')} (since {info.get('since')})"
                )
            except ValueError:
                who = "another process"
            raise RunLockedError(
                f"{self.run_dir}: locked: {who} is writing this run directory; wait for it to "
                "finish or use another --out"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the file stays; an unlocked file means nothing)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def records_frame(records: Iterable[BaseModel], *, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """A DataFrame with one row per record (pydantic ``model_dump``; nested values kept
    as Python objects), minus the ``exclude``d columns."""
    rows = [r.model_dump(exclude=set(exclude)) for r in records]
    return pd.DataFrame(rows)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (readers see
    the old or the new file, never a partial one; a symlink at ``path`` is replaced,
    not followed).

    Raises:
        RunDirError: the directory cannot be written (read-only, no permission, full).
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes | Callable[[Path], None]) -> None:
    """Write ``data`` (bytes, or a function that writes the file it is given) to
    ``path`` via a temporary file in the same directory and ``os.replace``.

    Raises:
        RunDirError: the directory cannot be written (read-only, no permission, full).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise RunDirError(
            f"{error.filename or path.parent}: cannot write {path.name}: {error.strerror or error}"
        ) from None
    try:
        if callable(data):
            os.close(fd)
            data(Path(tmp))
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise RunDirError(f"{path}: cannot write: {error.strerror or error}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_dir(run_dir: str | Path, name: str) -> Path:
    """``RUN_DIR/name`` as a real directory inside the run directory, for derived
    output (``view/``, ``plots/``): created if missing; a symlink pointing inside the
    run directory (or nowhere) is replaced by a real directory; nothing is written
    through a symlink.

    Raises:
        RunDirError: ``name`` is a symlink to somewhere outside the run directory, or a
            file; or the directory cannot be created.
    """
    check_slug(name, "output directory name")
    run_dir = Path(run_dir)
    path = run_dir / name
    try:
        if path.is_symlink():
            target = Path(os.readlink(path))
            resolved = (path.parent / target).resolve()
            root = run_dir.resolve()
            if resolved != root and root not in resolved.parents:
                raise RunDirError(
                    f"{path}: is a symlink to {target}, outside the run directory; safescale "
                    f"does not write through it (remove it, or give it a real {name}/ "
                    "directory)"
                )
            path.unlink()
        elif path.exists() and not path.is_dir():
            raise RunDirError(f"{path}: is a file, not the {name}/ directory; remove it")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(
            f"{error.filename or path}: cannot create {name}/: {error.strerror or error}"
        ) from None
    return path
