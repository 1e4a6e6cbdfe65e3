"""Corpus problems and the error that carries them.

Every problem names the file, the 1-based line (0 when the problem concerns the whole
file, e.g. a missing file), the field (dotted path, ``-`` when none applies) and a
message, and prints as ``file:line: field: message`` so that editors can jump to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CorpusError", "Problem"]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a corpus.

    Attributes:
        file: path of the file the problem is in (as given by the caller).
        line: 1-based line number; 0 when the problem concerns the whole file.
        field: dotted field path (``grade.raw``, ``evidence.clean[1]``); ``-`` if none.
        message: what is wrong, naming the offending value.
    """

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field or '-'}: {self.message}"


class CorpusError(ValueError):
    """A corpus could not be loaded; ``problems`` lists every problem found (up to a cap).

    Attributes:
        problems: the problems, in file and line order of discovery.
        truncated: True when more problems existed than the validator's cap.
    """

    def __init__(self, problems: Iterable[Problem], *, truncated: bool = False) -> None:
        self.problems: list[Problem] = list(problems)
        self.truncated = truncated
        if not self.problems:
            raise ValueError("CorpusError needs at least one problem")
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [str(problem) for problem in self.problems]
        if self.truncated:
            lines.append(f"(stopped after {len(self.problems)} problems; more were not listed)")
        return "\n".join(lines)

    def __reduce__(self) -> tuple[object, tuple[list[Problem], bool]]:
        # Lets the error cross process boundaries (multiprocessing, Ray workers).
        return (_rebuild, (self.problems, self.truncated))


def _rebuild(problems: list[Problem], truncated: bool) -> CorpusError:
    return CorpusError(problems, truncated=truncated)
