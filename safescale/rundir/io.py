"""Reading and writing the run directory's files: JSONL lines, JSON, atomic writes.

Writers append JSONL lines with one ``write`` + ``fsync`` (:func:`append_lines`), but a
process killed mid-write can still leave a partial *last* line: readers ignore such a
line (and report it in :attr:`JsonlContents.truncated_line`) and a resuming writer cuts
it first (:func:`repair_jsonl`). A line that does not parse anywhere else is corruption,
and is an error naming the file and line. Whole files are replaced atomically
(:func:`atomic_write_text`, :func:`atomic_write_bytes`): readers see the old or the new
file, never a partial one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safescale.rundir.layout import RunDirError
from safescale.rundir.records import check_slug

__all__ = [
    "JsonlContents",
    "append_lines",
    "atomic_write_bytes",
    "atomic_write_text",
    "output_dir",
    "read_json",
    "read_jsonl",
    "repair_jsonl",
]


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


def read_json(path: str | Path) -> Any:
    """Parse a JSON file.

    Raises:
        RunDirError: the file cannot be read or is not valid JSON (message: ``file:line``).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path}: cannot read: {error}") from None


def repair_jsonl(path: str | Path) -> None:
    """Cut a torn final line (a crash mid-write) so appends start on a clean line."""
    path = Path(path)
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


def append_lines(path: str | Path, rows: Iterable[str]) -> None:
    """Append JSONL ``rows`` (each one serialised record, no newline) to ``path`` in one
    ``write`` followed by ``fsync`` (nothing is written for no rows)."""
    payload = "".join(row + "\n" for row in rows).encode()
    if not payload:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)


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
