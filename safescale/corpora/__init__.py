"""Evidence corpora: graded passages, benchmark items, loading, validation and splits.

A corpus is a directory (``corpus.yaml`` + ``passages.jsonl`` + optional ``items.jsonl``)
found by bundled name or by path::

    from safescale.corpora import load_corpus
    corpus = load_corpus("radiology-guidelines")
    corpus.passage("fleischner-2017-solid-6to8").grade.level
"""

from __future__ import annotations

from safescale.corpora.corpus import Corpus
from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.grades import (
    BUILTIN_GRADE_SYSTEMS,
    GradeSystem,
    UnknownGradeError,
    UnknownGradeSystemError,
    builtin_grade_system,
    normalize_grade,
    resolve_level,
)
from safescale.corpora.loader import (
    ValidationReport,
    bundled_corpus_path,
    check_corpus,
    list_bundled_corpora,
    load_corpus,
    resolve_corpus_path,
    validate_corpus,
    write_corpus,
)
from safescale.corpora.schema import (
    SCHEMA_VERSION,
    EvidenceSets,
    GeneratorInfo,
    Grade,
    GradeSystemSpec,
    Item,
    Manifest,
    OptionLabels,
    Passage,
    Source,
    Stance,
    Status,
    Task,
)
from safescale.corpora.split import GroupedSplit, assign_groups, grouped_kfold, grouped_split
from safescale.corpora.stats import CorpusStats, corpus_stats

__all__ = [
    "BUILTIN_GRADE_SYSTEMS",
    "SCHEMA_VERSION",
    "Corpus",
    "CorpusError",
    "CorpusStats",
    "EvidenceSets",
    "GeneratorInfo",
    "Grade",
    "GradeSystem",
    "GradeSystemSpec",
    "GroupedSplit",
    "Item",
    "Manifest",
    "OptionLabels",
    "Passage",
    "Problem",
    "Source",
    "Stance",
    "Status",
    "Task",
    "UnknownGradeError",
    "UnknownGradeSystemError",
    "ValidationReport",
    "assign_groups",
    "builtin_grade_system",
    "bundled_corpus_path",
    "check_corpus",
    "corpus_stats",
    "grouped_kfold",
    "grouped_split",
    "list_bundled_corpora",
    "load_corpus",
    "normalize_grade",
    "resolve_corpus_path",
    "resolve_level",
    "validate_corpus",
    "write_corpus",
]
