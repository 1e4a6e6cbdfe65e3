"""MedQA-USMLE (Jin et al., 2021; MIT): four- and five-option board questions.

Read from the released JSONL (``questions/US/{train,dev,test}.jsonl`` with five options
``A``-``E``; ``questions/US/4_options/phrases_no_exclude_*.jsonl`` with four), one object
a line::

    {"question": ..., "answer": <text of the gold option>, "options": {"A": ..., ...},
     "meta_info": "step1" | "step2&3", "answer_idx": "A", "metamap_phrases": [...]}

and from Hugging Face exports of the same fields (e.g. ``GBaker/MedQA-USMLE-4-options``;
``options`` may also be a list of ``{"key": "A", "value": ...}`` as in
``bigbio/med_qa``).

Mapping: item ``medqa-<file stem>-<line>`` (or ``medqa-<id>`` when the record has an
``id``), options as given (their letters, in letter order), gold ``answer_idx`` (checked
against ``answer``: a record whose ``answer`` is not the text of option ``answer_idx`` is
an error, since it means the file is not what it claims), category ``meta_info`` (or
``medqa``), ``evidence_id`` = the item id. MedQA ships no passages: the items are
closed-book-only unless ``passages_from`` names a corpus to retrieve from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.importers._common import Draft, SourceRecord, read_records, slug

__all__ = ["LICENSE", "read_medqa"]

LICENSE = "MIT (MedQA, Jin et al. 2021)"


def _options(record: SourceRecord) -> dict[str, str] | Problem:
    raw = record.data.get("options")
    if isinstance(raw, list) and all(isinstance(o, dict) and "key" in o for o in raw):
        raw = {str(o["key"]): o.get("value") for o in raw}
    if not isinstance(raw, dict) or not raw:
        return record.problem("options", "expected an object of letter -> option text")
    if not all(isinstance(v, str) for v in raw.values()):
        return record.problem("options", "every option text must be a string")
    options = {str(k).strip(): v for k, v in sorted(raw.items())}
    if len(options) not in (4, 5):
        return record.problem("options", f"expected 4 or 5 options, got {len(options)}")
    return options


def read_medqa(source: str | Path, *, split: str | None = None) -> Draft:
    """Read MedQA records into a draft (see the module docs for the mapping).

    Raises:
        CorpusError: a record that is not MedQA-shaped (file, line, field).
    """
    draft = Draft()
    problems: list[Problem] = []
    stem = slug(Path(source).stem if Path(source).is_file() else Path(source).name)
    for record in read_records(source, split=split):
        draft.records += 1
        data: dict[str, Any] = record.data
        question = data.get("question")
        if not isinstance(question, str) or not question.strip():
            problems.append(record.problem("question", "missing or not a string"))
            continue
        options = _options(record)
        if isinstance(options, Problem):
            problems.append(options)
            continue
        gold = data.get("answer_idx")
        if not isinstance(gold, str) or gold.strip() not in options:
            problems.append(
                record.problem("answer_idx", f"{gold!r} is not among the options {list(options)}")
            )
            continue
        gold = gold.strip()
        answer = data.get("answer")
        if isinstance(answer, str) and answer.strip() != options[gold].strip():
            problems.append(
                record.problem(
                    "answer",
                    f"{answer!r:.60} is not the text of option {gold} ({options[gold]!r:.60})",
                )
            )
            continue
        if data.get("id") not in (None, ""):
            item_id = f"medqa-{slug(data['id'])}"
        else:
            item_id = f"medqa-{stem}-{record.line or draft.records:05d}"
        meta = data.get("meta_info")
        draft.items.append(
            (
                record,
                {
                    "id": item_id,
                    "question": question,
                    "options": options,
                    "gold": gold,
                    "category": str(meta).strip() if meta not in (None, "") else "medqa",
                    "evidence_id": item_id,
                },
            )
        )
    if problems:
        raise CorpusError(problems[:50], hidden=max(0, len(problems) - 50))
    return draft
