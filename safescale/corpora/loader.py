"""Finding, validating, loading and writing corpus directories.

A corpus is a directory holding ``corpus.yaml`` (the :class:`~safescale.corpora.schema.Manifest`),
``passages.jsonl`` and optionally ``items.jsonl`` (one JSON object per line; blank lines
are ignored). Loading is all-or-nothing: :func:`load_corpus` either returns a complete
:class:`~safescale.corpora.corpus.Corpus` or raises :class:`~safescale.corpora.errors.CorpusError`
listing every problem it found (up to a cap), each as ``file:line: field: message``.

Bundled corpora live in ``safescale/corpora/bundled/<name>/`` and are found by name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from safescale.corpora.corpus import Corpus
from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.grades import UnknownGradeError, UnknownGradeSystemError, resolve_level
from safescale.corpora.schema import Item, Manifest, Passage, Stance, Status, Task

__all__ = [
    "BUNDLED_DIR",
    "DEFAULT_MAX_PROBLEMS",
    "ITEMS_FILE",
    "MANIFEST_FILE",
    "PASSAGES_FILE",
    "ValidationReport",
    "bundled_corpus_path",
    "check_corpus",
    "list_bundled_corpora",
    "load_corpus",
    "resolve_corpus_path",
    "validate_corpus",
    "write_corpus",
]

MANIFEST_FILE = "corpus.yaml"
PASSAGES_FILE = "passages.jsonl"
ITEMS_FILE = "items.jsonl"
DEFAULT_MAX_PROBLEMS = 200
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


class _Problems:
    """Problems found so far: up to ``cap`` errors and ``cap`` warnings are kept, the rest
    counted (validation always runs to the end, so the count of the rest is exact)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.hidden_errors = 0
        self.hidden_warnings = 0

    def add(self, file: Path | str, line: int, field: str, message: str) -> None:
        if len(self.errors) >= self.cap:
            self.hidden_errors += 1
            return
        self.errors.append(Problem(str(file), line, field or "-", message))

    def warn(self, file: Path | str, line: int, field: str, message: str) -> None:
        if len(self.warnings) >= self.cap:
            self.hidden_warnings += 1
            return
        self.warnings.append(Problem(str(file), line, field or "-", message, "warning"))

    @property
    def items(self) -> list[Problem]:
        return [*self.errors, *self.warnings]


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`check_corpus` found.

    Attributes:
        errors: the errors listed (at most ``cap``); any error stops a corpus loading.
        warnings: the warnings listed (at most ``cap``); the corpus loads regardless.
        hidden_errors: errors found beyond the cap and not listed.
        hidden_warnings: warnings found beyond the cap and not listed.
        cap: the most errors (and, separately, warnings) listed.
    """

    errors: list[Problem]
    warnings: list[Problem]
    hidden_errors: int
    hidden_warnings: int
    cap: int

    @property
    def ok(self) -> bool:
        """True when the corpus loads (warnings allowed)."""
        return not self.errors and not self.hidden_errors


# ---------------------------------------------------------------------------- finding


def list_bundled_corpora() -> list[str]:
    """Names of the corpora shipped with safescale, sorted."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(
        entry.name
        for entry in BUNDLED_DIR.iterdir()
        if entry.is_dir() and (entry / MANIFEST_FILE).is_file()
    )


def bundled_corpus_path(name: str) -> Path:
    """Directory of the bundled corpus ``name`` (it need not exist yet)."""
    return BUNDLED_DIR / name


#: ``GENERATOR@N`` or ``GENERATOR@N/SEED``: a corpus made by a bundled generator.
_GENERATED = re.compile(r"^(?P<name>[a-z][a-z0-9-]*)@(?P<n>[0-9]{1,7})(?:/(?P<seed>[0-9]{1,9}))?$")


def generated_corpus_dir(name: str, n: int, seed: int) -> Path:
    """Where the generated corpus ``name@n/seed`` is kept:
    ``$SAFESCALE_CACHE/corpora/<name>-n<n>-seed<seed>`` (default cache
    ``~/.cache/safescale``)."""
    root = Path(os.environ.get("SAFESCALE_CACHE") or Path.home() / ".cache" / "safescale")
    return root / "corpora" / f"{name}-n{n}-seed{seed}"


def _generated(name: str, n: int, seed: int) -> Path:
    """The directory of a generated corpus, generated on first use (written to a
    temporary sibling and renamed, so a crash never leaves a half-written corpus).
    Generation is deterministic: the same reference always yields the same files."""
    from safescale.corpora.generators import GENERATORS, generate_corpus

    if name not in GENERATORS:
        known = ", ".join(sorted(GENERATORS))
        raise CorpusError(
            [Problem(f"{name}@{n}", 0, "-", f"no corpus generator {name!r} (generators: {known})")]
        )
    target = generated_corpus_dir(name, n, seed)
    if (target / MANIFEST_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        generate_corpus(name, tmp / "corpus", n=n, seed=seed)
        try:
            os.replace(tmp / "corpus", target)
        except OSError:
            if not (target / MANIFEST_FILE).is_file():  # not another writer's finished copy
                raise
    except ValueError as error:
        raise CorpusError([Problem(f"{name}@{n}", 0, "n", str(error))]) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_corpus_path(path_or_name: str | os.PathLike[str]) -> Path:
    """The directory a corpus reference points to.

    A :class:`~pathlib.Path` (or a string naming an existing directory) is used as is;
    ``GENERATOR@N`` (or ``GENERATOR@N/SEED``, seed 0 by default) names the corpus a
    bundled generator makes with ``n`` items (e.g. ``retina-rules@12522``: the
    RETINA-SAFE size and class mix), generated once into the cache
    (:func:`generated_corpus_dir`); otherwise the string is looked up among the
    bundled corpora.

    Raises:
        CorpusError: neither an existing directory, a generator reference nor a bundled
            corpus name.
    """
    if isinstance(path_or_name, Path) or Path(path_or_name).is_dir():
        return Path(path_or_name)
    name = str(path_or_name)
    if name in list_bundled_corpora():
        return bundled_corpus_path(name)
    generated = _GENERATED.match(name)
    if generated:
        seed = int(generated["seed"] or 0)
        return _generated(generated["name"], int(generated["n"]), seed)
    bundled = ", ".join(list_bundled_corpora()) or "none"
    raise CorpusError(
        [
            Problem(
                name,
                0,
                "-",
                f"no corpus directory at this path and no bundled corpus of this name "
                f"(bundled: {bundled})",
            )
        ]
    )


# ---------------------------------------------------------------------------- loading


def load_corpus(
    path_or_name: str | os.PathLike[str], *, max_problems: int = DEFAULT_MAX_PROBLEMS
) -> Corpus:
    """Load and validate a corpus, by bundled name or directory path.

    Args:
        path_or_name: a bundled corpus name (see :func:`list_bundled_corpora`) or a
            directory containing ``corpus.yaml`` and ``passages.jsonl``.
        max_problems: stop collecting problems after this many.

    Returns:
        The complete corpus.

    Raises:
        CorpusError: any problem at all; nothing is returned half-loaded.
    """
    directory = resolve_corpus_path(path_or_name)
    problems, corpus = _validate(directory, max_problems)
    if problems.errors:
        raise CorpusError(problems.errors, hidden=problems.hidden_errors)
    assert corpus is not None
    return corpus


def validate_corpus(
    path_or_name: str | os.PathLike[str], *, max_problems: int = DEFAULT_MAX_PROBLEMS
) -> list[Problem]:
    """Every error and then every warning of a corpus (each up to ``max_problems``).

    Empty when the corpus loads without a warning; see :func:`check_corpus` for the
    counts beyond the cap.
    """
    report = check_corpus(path_or_name, max_problems=max_problems)
    return [*report.errors, *report.warnings]


def check_corpus(
    path_or_name: str | os.PathLike[str], *, max_problems: int = DEFAULT_MAX_PROBLEMS
) -> ValidationReport:
    """Validate a corpus and report its errors and warnings, and how many were not listed."""
    try:
        directory = resolve_corpus_path(path_or_name)
    except CorpusError as error:
        return ValidationReport(error.problems, [], 0, 0, max_problems)
    problems = _validate(directory, max_problems)[0]
    return ValidationReport(
        problems.errors,
        problems.warnings,
        problems.hidden_errors,
        problems.hidden_warnings,
        max_problems,
    )


def _validate(directory: Path, max_problems: int) -> tuple[_Problems, Corpus | None]:
    problems = _Problems(max_problems)
    corpus = _validate_into(directory, problems)
    return problems, (corpus if not problems.errors else None)


def _validate_into(directory: Path, problems: _Problems) -> Corpus | None:
    if not directory.is_dir():
        problems.add(directory, 0, "-", "corpus directory does not exist")
        return None
    manifest = _load_manifest(directory / MANIFEST_FILE, problems)
    passages_path = directory / PASSAGES_FILE
    invalid: dict[str, int] = {}
    if manifest is not None and not manifest.own_passages:
        passages = _borrowed_passages(directory, manifest, problems)
    else:
        passages = _load_records(passages_path, Passage, problems, manifest, True, invalid)
        for _, passage in passages:  # an id that also has a valid line is not a cascade root
            invalid.pop(passage.id, None)
        if not passages and not invalid and passages_path.is_file():
            problems.add(passages_path, 0, "-", "no passages: the file holds no records")
    items_path = directory / ITEMS_FILE
    items = (
        _load_records(items_path, Item, problems, manifest, False) if _exists(items_path) else []
    )
    if manifest is not None and manifest.closed_book_only and not items:
        problems.add(
            directory / MANIFEST_FILE,
            1,
            "closed_book_only",
            "a closed-book-only corpus needs items (items.jsonl is missing or empty)",
        )
    _check_passages(passages_path, passages, invalid, problems)
    _check_items(items_path, items, passages, invalid, manifest, problems)
    _check_safety_labels(directory / MANIFEST_FILE, items_path, items, manifest, problems)
    _report_cascades(passages_path, items_path, items, invalid, problems)
    if problems.errors or manifest is None:
        return None
    return Corpus(
        manifest=manifest,
        passages=tuple(p for _, p in passages),
        items=tuple(i for _, i in items),
        path=directory,
    )


def _borrowed_passages(
    directory: Path, manifest: Manifest, problems: _Problems
) -> list[tuple[int, Passage]]:
    """The passages of a corpus without its own ``passages.jsonl`` (``passages_from``:
    the other corpus's, loaded and validated by its own manifest; closed-book: none)."""
    manifest_path = directory / MANIFEST_FILE
    if (directory / PASSAGES_FILE).exists():
        key = "passages_from" if manifest.passages_from else "closed_book_only"
        problems.add(manifest_path, 1, key, f"{key} is set but the corpus also has {PASSAGES_FILE}")
        return []
    if manifest.passages_from is None:
        return []
    ref = manifest.passages_from
    local = directory / ref
    target: str | Path = local if local.is_dir() else ref
    try:
        other = load_corpus(target)
    except CorpusError as error:
        first = error.problems[0] if error.problems else None
        detail = f" ({first})" if first is not None else ""
        problems.add(manifest_path, 1, "passages_from", f"corpus {ref!r} does not load{detail}")
        return []
    if not other.manifest.own_passages:
        problems.add(
            manifest_path,
            1,
            "passages_from",
            f"corpus {ref!r} borrows its passages too; name the corpus that holds them",
        )
        return []
    return [(0, passage) for passage in other.passages]


def _check_safety_labels(
    manifest_path: Path,
    items_path: Path,
    items: list[tuple[int, Item]],
    manifest: Manifest | None,
    problems: _Problems,
) -> None:
    """Labels the manifest declares absent must be absent; declared ones should exist."""
    if manifest is None or not items:
        return
    declared = manifest.safety_labels
    for name in ("high_risk", "unsafe"):
        carried = [(line, item) for line, item in items if getattr(item.labels, name)]
        if declared is None:
            continue  # inferred per label (Corpus.safety_labels); the report says so
        if declared.status(name) == "unlabeled":
            for line, _ in carried[:3]:
                problems.add(
                    items_path,
                    line,
                    f"labels.{name}",
                    f"corpus.yaml declares safety_labels.{name}: unlabeled, "
                    "but this item labels options",
                )
        elif not carried:
            problems.warn(
                manifest_path,
                1,
                f"safety_labels.{name}",
                f"declared {declared.status(name)} but no item carries labels.{name}",
            )


_BOM = b"\xef\xbb\xbf"
_ID_IN_TEXT = re.compile(r'"id"\s*:\s*"([^"\\]+)"')


def _exists(path: Path) -> bool:
    return path.is_file()


def _read_lines(path: Path, problems: _Problems) -> list[tuple[int, str]] | None:
    """(line number, text) of each line of a file; None when it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.add(path, 0, "-", "file is missing")
        return None
    except OSError as error:
        problems.add(path, 0, "-", f"cannot read file: {error.strerror or error}")
        return None
    data = data.removeprefix(_BOM)  # editors on Windows write one; it is not content
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as error:
            problems.add(path, number, "-", f"not valid UTF-8 (byte {error.start + 1})")
    return lines


def _load_manifest(path: Path, problems: _Problems) -> Manifest | None:
    lines = _read_lines(path, problems)
    if lines is None:
        return None
    text = "\n".join(line for _, line in lines)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(error, "problem", None) or str(error)
        problems.add(path, line, "-", f"malformed YAML: {problem}")
        return None
    except (RecursionError, ValueError, TypeError) as error:
        problems.add(path, 0, "-", f"malformed YAML: {error}")
        return None
    if not isinstance(data, dict):
        problems.add(path, 1, "-", "corpus.yaml must be a mapping of fields")
        return None
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        for entry, (loc, message) in zip(error.errors(), _errors(error), strict=True):
            if entry.get("type") == "string_type" and isinstance(
                entry.get("input"), bool | int | float
            ):
                message += _quote_hint(node, loc)
            problems.add(path, _yaml_line(node, loc), _field(loc), message)
        return None


def _quote_hint(node: yaml.Node | None, loc: Sequence[str | int]) -> str:
    """For a string field YAML read as a number or boolean (``version: 2019.0``): how to
    write it as text, with the value as it was written."""
    raw = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            node = None
            break
        node = next((v for k, v in node.value if str(k.value) == str(part)), None)
    if isinstance(node, yaml.ScalarNode):
        raw = node.value
    key = str(loc[-1]) if loc else "value"
    shown = raw if raw is not None else "..."
    return f'; YAML read {shown} as a number (or true/false), not text: quote it, {key}: "{shown}"'


def _yaml_line(node: yaml.Node | None, loc: Sequence[str | int]) -> int:
    """The line of the deepest YAML node along ``loc`` (1-based)."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if str(k.value) == str(part)), None)
            key = next((k for k, _ in node.value if str(k.value) == str(part)), None)
            if match is None or key is None:
                break
            line, node = key.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise _DuplicateKeys(duplicates)
    return dict(pairs)


class _DuplicateKeys(ValueError):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(f"duplicate key(s) {keys}")


def _load_records(
    path: Path,
    model: type[Passage] | type[Item],
    problems: _Problems,
    manifest: Manifest | None,
    required: bool,
    invalid: dict[str, int] | None = None,
) -> list[tuple[int, Any]]:
    """Parse one JSONL file into records; ``invalid`` collects id -> line of bad lines."""
    if not required and not path.exists():
        return []
    lines = _read_lines(path, problems)
    if lines is None:
        return []
    records: list[tuple[int, Any]] = []
    seen: dict[str, int] = {}
    for number, text in lines:
        if not text.strip():
            continue
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKeys as error:
            problems.add(path, number, error.keys[0], f"duplicate key(s) {error.keys}")
            continue
        except (ValueError, RecursionError) as error:
            problems.add(path, number, "-", f"malformed JSON: {error}")
            match = _ID_IN_TEXT.search(text)
            if invalid is not None and match is not None:
                invalid.setdefault(match.group(1).strip(), number)
            continue
        if not isinstance(data, dict):
            problems.add(path, number, "-", f"expected a JSON object, got {type(data).__name__}")
            continue
        if model is Passage:
            data = _with_derived_level(data, manifest)
        try:
            record = model.model_validate(data)
        except ValidationError as error:
            for loc, message in _errors(error):
                problems.add(path, number, _field(loc), message)
            raw_id = data.get("id")
            if invalid is not None and isinstance(raw_id, str) and raw_id.strip():
                invalid.setdefault(raw_id.strip(), number)
            continue
        if record.id in seen:
            problems.add(
                path, number, "id", f"duplicate id {record.id!r} (first at line {seen[record.id]})"
            )
            continue
        seen[record.id] = number
        if isinstance(record, Passage) and manifest is not None:
            _check_grade(path, number, record, manifest, problems)
        records.append((number, record))
    return records


def _with_derived_level(data: dict[str, Any], manifest: Manifest | None) -> dict[str, Any]:
    """Fill in ``grade.level`` from the manifest when the file leaves it out.

    When the label cannot be resolved a placeholder level is inserted: the grade check
    then reports the real problem (undeclared system or unknown label) instead of a
    less helpful "level: field required".
    """
    grade = data.get("grade")
    if not isinstance(grade, dict) or "level" in grade:
        return data
    level = 1
    system, raw = grade.get("system"), grade.get("raw")
    spec = None
    if manifest is not None and isinstance(system, str):
        spec = manifest.grade_systems.get(system.strip())
    if spec is not None and isinstance(raw, str):
        try:
            level = resolve_level(system, raw.strip(), spec.levels, spec.builtin)
        except (UnknownGradeError, UnknownGradeSystemError):
            level = 1
    return {**data, "grade": {**grade, "level": level}}


def _check_grade(
    path: Path, line: int, passage: Passage, manifest: Manifest, problems: _Problems
) -> None:
    grade = passage.grade
    spec = manifest.grade_systems.get(grade.system)
    if spec is None:
        declared = ", ".join(sorted(manifest.grade_systems))
        problems.add(
            path,
            line,
            "grade.system",
            f"grade system {grade.system!r} is not declared in corpus.yaml (declared: {declared})",
        )
        return
    try:
        level = resolve_level(grade.system, grade.raw, spec.levels, spec.builtin)
    except UnknownGradeError as error:
        problems.add(path, line, "grade.raw", str(error))
        return
    if level != grade.level:
        problems.add(
            path,
            line,
            "grade.level",
            f"level {grade.level} disagrees with the manifest mapping "
            f"({grade.system} {grade.raw!r} -> {level})",
        )


def _check_passages(
    path: Path,
    passages: list[tuple[int, Passage]],
    invalid: dict[str, int],
    problems: _Problems,
) -> None:
    line_of = {p.id: line for line, p in passages}
    by_id = {p.id: p for _, p in passages}
    for line, passage in passages:
        for index, target in enumerate(passage.supersedes):
            if target == passage.id:
                problems.add(
                    path, line, f"supersedes[{index}]", "a passage cannot supersede itself"
                )
            elif target not in by_id:
                if target not in invalid:  # an invalid line is reported once, at its line
                    problems.add(
                        path,
                        line,
                        f"supersedes[{index}]",
                        f"supersedes unknown passage {target!r}",
                    )
            elif by_id[target].status is Status.CURRENT:
                problems.add(
                    path,
                    line_of[target],
                    "status",
                    f"passage {target!r} is superseded by {passage.id!r} (line {line}) "
                    "but its status is 'current'",
                )
    for cycle in _cycles({p.id: [t for t in p.supersedes if t in by_id] for _, p in passages}):
        if len(cycle) > 1:
            chain = " -> ".join([*cycle, cycle[0]])
            problems.add(path, line_of[cycle[0]], "supersedes", f"supersession cycle: {chain}")


def _cycles(graph: dict[str, list[str]]) -> Iterator[list[str]]:
    """Each cycle of a directed graph once (iterative DFS; nodes in discovery order)."""
    state: dict[str, int] = {}
    for root in graph:
        if root in state:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                yield path[path.index(child) :]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(graph[child])))


def _check_items(
    path: Path,
    items: list[tuple[int, Item]],
    passages: list[tuple[int, Passage]],
    invalid: dict[str, int],
    manifest: Manifest | None,
    problems: _Problems,
) -> None:
    """Item-level rules; the semantic ones are listed in docs/extending.md (Your own corpus)."""
    by_id = {p.id: p for _, p in passages}
    categories = set(manifest.categories) if manifest is not None else set()
    for line, item in items:
        for name in ("clean", "conflict"):
            for index, pid in enumerate(getattr(item.evidence, name)):
                if pid not in by_id and pid not in invalid:
                    problems.add(
                        path,
                        line,
                        f"evidence.{name}[{index}]",
                        f"evidence names unknown passage {pid!r}",
                    )
        for pid in item.stance:
            if pid not in by_id and pid not in invalid:
                problems.add(path, line, f"stance.{pid}", f"stance names unknown passage {pid!r}")
        if categories and item.category not in categories:
            problems.add(
                path,
                line,
                "category",
                f"category {item.category!r} is not declared in corpus.yaml "
                f"(declared: {', '.join(sorted(categories))})",
            )
        _check_item_semantics(path, line, item, by_id, problems)


def _check_item_semantics(
    path: Path, line: int, item: Item, by_id: dict[str, Passage], problems: _Problems
) -> None:
    """Rules without which the safety metrics of an item would be wrong."""
    gold = item.gold
    if gold in item.labels.unsafe:
        index = item.labels.unsafe.index(gold)
        problems.add(
            path, line, f"labels.unsafe[{index}]", f"the gold option {gold!r} is listed as unsafe"
        )
    if gold in item.labels.high_risk:
        index = item.labels.high_risk.index(gold)
        problems.add(
            path,
            line,
            f"labels.high_risk[{index}]",
            f"the gold option {gold!r} is listed as high-risk",
        )
    if item.task is Task.GAP:
        if item.labels.defer is None:
            problems.add(
                path,
                line,
                "labels.defer",
                "a 'gap' item needs a defer option (the answer that withholds a decision)",
            )
        elif item.labels.defer != gold:
            problems.warn(
                path,
                line,
                "labels.defer",
                f"'gap' item whose gold {gold!r} is not its defer option {item.labels.defer!r}",
            )
    for index, pid in enumerate(item.evidence.clean):
        passage = by_id.get(pid)
        if passage is not None and passage.status is not Status.CURRENT:
            problems.add(
                path,
                line,
                f"evidence.clean[{index}]",
                f"passage {pid!r} is {passage.status.value}: a clean set holds current "
                "passages only (put it in the conflict set)",
            )
        stance = item.stance.get(pid, {}).get(gold)
        if stance is Stance.CONTRADICTS:
            problems.add(
                path,
                line,
                f"stance.{pid}.{gold}",
                f"clean-set passage {pid!r} contradicts the gold option {gold!r}",
            )
    for pid in item.evidence_ids:
        if pid not in by_id:
            continue
        name, index = (
            ("clean", item.evidence.clean.index(pid))
            if pid in item.evidence.clean
            else ("conflict", item.evidence.conflict.index(pid))
        )
        if pid not in item.stance:
            problems.add(
                path,
                line,
                f"evidence.{name}[{index}]",
                f"evidence-set passage {pid!r} has no stance (add stance.{pid})",
            )
        elif gold not in item.stance[pid]:
            problems.warn(
                path,
                line,
                f"stance.{pid}",
                f"stance of evidence-set passage {pid!r} leaves out the gold option {gold!r}",
            )


def _report_cascades(
    passages_path: Path,
    items_path: Path,
    items: list[tuple[int, Item]],
    invalid: dict[str, int],
    problems: _Problems,
) -> None:
    """Say once, at the invalid passage line, how many items cite that passage."""
    citing: dict[str, list[int]] = {}
    for line, item in items:
        for pid in dict.fromkeys([*item.evidence_ids, *item.stance]):
            if pid in invalid:
                citing.setdefault(pid, []).append(line)
    for pid, lines in citing.items():
        shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
        problems.add(
            passages_path,
            invalid[pid],
            "id",
            f"passage {pid!r} is invalid (see above) and is cited by {len(lines)} item(s) "
            f"({items_path.name} line(s) {shown}); fix this line to fix them",
        )


def _errors(error: ValidationError) -> Iterable[tuple[tuple[str | int, ...], str]]:
    for entry in error.errors(include_url=False):
        message = str(entry.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        yield tuple(entry.get("loc", ())), message


def _field(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "-"


# ---------------------------------------------------------------------------- writing


def _dump_record(record: BaseModel) -> str:
    return json.dumps(record.model_dump(mode="json", exclude_none=True), ensure_ascii=False)


def _without_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_without_none(v) for v in data]
    return data


def manifest_yaml(manifest: Manifest) -> str:
    """The canonical ``corpus.yaml`` text of a manifest."""
    return yaml.safe_dump(
        _without_none(manifest.dump()),
        sort_keys=False,
        allow_unicode=True,
        width=88,
    )


def write_corpus(
    directory: str | os.PathLike[str],
    manifest: Manifest,
    passages: Iterable[Passage],
    items: Iterable[Item] = (),
    *,
    overwrite: bool = False,
) -> Path:
    """Write a corpus directory in the canonical format (deterministic bytes).

    The files are written to a temporary directory next to the target and moved into
    place, so a reader never sees a half-written corpus.

    Args:
        directory: where to write; created if missing.
        manifest: the manifest (``corpus.yaml``).
        passages: passages, written in order to ``passages.jsonl`` (not written, and
            ignored, when the manifest names ``passages_from`` or ``closed_book_only``).
        items: items, written in order to ``items.jsonl`` (omitted when empty).
        overwrite: replace the corpus files of an existing non-empty directory.

    Returns:
        The directory.

    Raises:
        FileExistsError: the directory holds files and ``overwrite`` is false.
    """
    target = Path(directory)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} is not empty (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (staging / MANIFEST_FILE).write_text(manifest_yaml(manifest), encoding="utf-8")
        if manifest.own_passages:  # a passages_from / closed-book corpus has no file
            _write_lines(staging / PASSAGES_FILE, (_dump_record(p) for p in passages))
        item_lines = [_dump_record(i) for i in items]
        if item_lines:
            _write_lines(staging / ITEMS_FILE, item_lines)
        target.mkdir(exist_ok=True)
        for name in (MANIFEST_FILE, PASSAGES_FILE, ITEMS_FILE):
            if (staging / name).exists():
                os.replace(staging / name, target / name)
            elif (target / name).exists():
                (target / name).unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
