"""Corpus problems and the error that carries them.

Every problem names the file, the 1-based line (0 when the problem concerns the whole
file, e.g. a missing file), the field (dotted path, ``-`` when none applies) and a
message, and prints as ``file:line: field: message`` so that editors can jump to it.
A problem is an ``error`` (the corpus does not load) or a ``warning`` (it loads; the
validator prints it so that a user can check it), see :data:`Severity`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["CorpusError", "Problem", "Severity"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a corpus.

    Attributes:
        file: path of the file the problem is in (as given by the caller).
        line: 1-based line number; 0 when the problem concerns the whole file.
        field: dotted field path (``grade.raw``, ``evidence.clean[1]``); ``-`` if none.
        message: what is wrong, naming the offending value.
        severity: ``error`` (the corpus does not load) or ``warning`` (it loads).
    """

    file: str
    line: int
    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}: {self.field or '-'}: {prefix}{self.message}"


class CorpusError(ValueError):
    """A corpus could not be loaded; ``problems`` lists every problem found (up to a cap).

    Attributes:
        problems: the problems, in file and line order of discovery.
        hidden: how many further problems were found but not listed (over the cap).
        truncated: True when more problems existed than the validator's cap.
    """

    def __init__(self, problems: Iterable[Problem], *, hidden: int = 0) -> None:
        self.problems: list[Problem] = list(problems)
        self.hidden = hidden
        if not self.problems:
            raise ValueError("CorpusError needs at least one problem")
        super().__init__(str(self))

    @property
    def truncated(self) -> bool:
        """True when more problems existed than were listed."""
        return self.hidden > 0

    def __str__(self) -> str:
        lines = [str(problem) for problem in self.problems]
        if self.hidden:
            lines.append(hidden_note(self.hidden, len(self.problems)))
        return "\n".join(lines)

    def __reduce__(self) -> tuple[object, tuple[list[Problem], int]]:
        # Lets the error cross process boundaries (multiprocessing, Ray workers).
        return (_rebuild, (self.problems, self.hidden))


def hidden_note(hidden: int, cap: int, noun: str = "problem") -> str:
    """The line that says how many problems were over the cap and not shown."""
    return f"... and {hidden} more {noun}(s) not shown (cap {cap})"


def _rebuild(problems: list[Problem], hidden: int) -> CorpusError:
    return CorpusError(problems, hidden=hidden)
