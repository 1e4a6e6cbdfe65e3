"""MIRAGE (Xiong et al., 2024): the medical RAG benchmark's ``benchmark.json``.

One JSON object with a key per subset (``medqa``, ``medmcqa``, ``pubmedqa``,
``bioasq``, ``mmlu``), each an object of records keyed by id::

    {"medqa": {"0000": {"question": ..., "options": {"A": ..., "D": ...}, "answer": "B"}},
     "pubmedqa": {"<PMID>": {"question": ..., "options": {"A": "yes", "B": "no",
                  "C": "maybe"}, "answer": "C"}}, ...}

Mapping: item ``mirage-<subset>-<id>``, options and gold ``answer`` as given, category
= the subset, ``evidence_id`` = the item id; a yes/no(/maybe) item's ``maybe`` option is
its defer option. MIRAGE ships no passages (its PubMedQA* subset drops the abstracts:
"question-only retrieval"), so the items are closed-book-only unless ``passages_from``
names a corpus to retrieve from. ``subsets`` picks some of the subsets (default: all).
The licenses are those of the five source datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.importers._common import Draft, SourceRecord, read_records, slug
from safescale.corpora.importers.rules import yes_no_letters

__all__ = ["LICENSE", "SUBSETS", "read_mirage"]

LICENSE = (
    "the licenses of MIRAGE's sources: MedQA (MIT), MedMCQA (MIT), PubMedQA (MIT), "
    "BioASQ (CC BY 2.5), MMLU (MIT)"
)
SUBSETS = ("medqa", "medmcqa", "pubmedqa", "bioasq", "mmlu")


def read_mirage(source: str | Path, *, subsets: Sequence[str] | None = None) -> Draft:
    """Read MIRAGE's ``benchmark.json`` into a draft (see the module docs).

    Raises:
        CorpusError: not a MIRAGE file, an unknown subset, or a malformed record.
    """
    # an object of objects comes back as keyed records: here, one per subset
    by_subset = {r.key: r.data for r in read_records(source) if r.key is not None}
    if not by_subset:
        raise CorpusError(
            [Problem(str(source), 0, "-", "expected benchmark.json: an object of subsets")]
        )
    wanted = list(subsets) if subsets else list(by_subset)
    unknown = [s for s in wanted if s not in by_subset]
    if unknown:
        raise CorpusError(
            [
                Problem(
                    str(source),
                    0,
                    "-",
                    f"no subset(s) {unknown} (the file has {', '.join(by_subset)})",
                )
            ]
        )
    draft = Draft()
    problems: list[Problem] = []
    for subset in wanted:
        entries = by_subset[subset]
        for key, data in entries.items():
            draft.records += 1
            record = SourceRecord(f"{source}[{subset}][{key}]", 0, str(key), data)
            if not isinstance(data, dict):
                problems.append(record.problem("-", "expected a JSON object"))
                continue
            question, options, answer = (
                data.get("question"),
                data.get("options"),
                data.get("answer"),
            )
            if not isinstance(question, str) or not question.strip():
                problems.append(record.problem("question", "missing or not a string"))
                continue
            if not isinstance(options, dict) or len(options) < 2:
                problems.append(record.problem("options", "expected an object of 2+ options"))
                continue
            if not isinstance(answer, str) or answer not in options:
                problems.append(
                    record.problem("answer", f"{answer!r} is not among the options {list(options)}")
                )
                continue
            options = {str(k): str(v) for k, v in sorted(options.items())}
            yes_no = yes_no_letters(options)
            item = {
                "id": f"mirage-{slug(subset)}-{slug(key)}",
                "question": question,
                "options": options,
                "gold": answer,
                "category": subset,
                "evidence_id": f"mirage-{slug(subset)}-{slug(key)}",
            }
            if yes_no is not None and "maybe" in yes_no:
                item["labels"] = {"defer": yes_no["maybe"]}
            draft.items.append((record, item))
    if problems:
        raise CorpusError(problems[:50], hidden=max(0, len(problems) - 50))
    draft.resolved["subsets"] = ",".join(wanted)
    return draft
