"""PubMedQA (Jin et al., 2019; MIT): yes/no/maybe questions over PubMed abstracts.

Two published shapes are read:

* the original release, ``ori_pqal.json`` (PQA-L, 1,000 expert-labeled questions; also
  ``ori_pqaa.json`` / ``ori_pqau.json``): one object keyed by PMID, each record with
  ``QUESTION``, ``CONTEXTS`` (the abstract's sections without its conclusion),
  ``LABELS`` (the section name of each context), ``MESHES``, ``YEAR``,
  ``reasoning_required_pred``, ``reasoning_free_pred``, ``final_decision`` and
  ``LONG_ANSWER``;
* the Hugging Face ``qiaojin/PubMedQA`` configs (Parquet, JSONL or ``save_to_disk``):
  ``pubid``, ``question``, ``context`` (``contexts``, ``labels``, ``meshes``, ...),
  ``long_answer``, ``final_decision``.

Mapping: item ``pubmedqa-<PMID>``, options ``A: yes``, ``B: no``, ``C: maybe`` (``C`` is
the defer option), gold from ``final_decision``, ``evidence_id`` ``pmid-<PMID>``. Each
context becomes a passage ``pmid-<PMID>-<n>`` (source PubMed, title naming the PMID and
the section label, version = ``YEAR``) in the item's clean evidence set, with stance
``supports`` toward the gold option (the expert label was read off that abstract; the
stance is abstract-level, not per section). ``LONG_ANSWER`` (the abstract's conclusion)
is left out: it states the answer. Records without ``final_decision`` (PQA-U) are
skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.importers._common import Draft, SourceRecord, read_records, ungraded_grade
from safescale.corpora.schema import Passage

__all__ = ["LICENSE", "OPTIONS", "read_pubmedqa"]

LICENSE = "MIT (PubMedQA, Jin et al. 2019)"
OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
_GOLD = {text: letter for letter, text in OPTIONS.items()}


def _ids_filter(path: str | Path | None) -> set[str] | None:
    """PMIDs to keep from a JSON object (e.g. ``test_ground_truth.json``) or list."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CorpusError(
            [Problem(str(path), 0, "-", f"cannot read the id list: {error}")]
        ) from None
    if isinstance(data, dict):
        return {str(k) for k in data}
    if isinstance(data, list):
        return {str(k) for k in data}
    raise CorpusError([Problem(str(path), 0, "-", "expected a JSON object or list of PMIDs")])


def _fields(record: SourceRecord) -> dict[str, Any]:
    """The record in the original release's field names (HF records are mapped)."""
    data = record.data
    if "QUESTION" in data:
        return {**data, "PMID": record.key if record.key is not None else data.get("PMID")}
    context = data.get("context") or {}
    if not isinstance(context, dict):
        context = {}
    return {
        "PMID": data.get("pubid"),
        "QUESTION": data.get("question"),
        "CONTEXTS": context.get("contexts"),
        "LABELS": context.get("labels"),
        "MESHES": context.get("meshes") or [],
        "YEAR": data.get("year"),
        "final_decision": data.get("final_decision"),
    }


def read_pubmedqa(
    source: str | Path,
    *,
    split: str | None = None,
    ids: str | Path | None = None,
    grade_level: int = 3,
    category: str = "pubmedqa",
) -> Draft:
    """Read PubMedQA records into a draft (see the module docs for the mapping).

    Args:
        source: ``ori_pqal.json`` (or another release file), or a HF export.
        split: the split of a ``DatasetDict`` directory.
        ids: a JSON file whose keys (or entries) are the PMIDs to keep.
        grade_level: the level of the single ``ungraded`` grade of every passage.
        category: the items' category.

    Raises:
        CorpusError: a record that is not PubMedQA-shaped (file, record, field).
    """
    keep = _ids_filter(ids)
    grade_systems, grade = ungraded_grade(grade_level)
    draft = Draft(grade_systems=grade_systems)
    problems: list[Problem] = []
    for record in read_records(source, split=split):
        fields = _fields(record)
        pmid = fields.get("PMID")
        where = f"{record.file}[{pmid}]" if record.line == 0 else record.file
        located = SourceRecord(where, record.line, record.key, record.data)
        if pmid is None or not str(pmid).strip():
            problems.append(located.problem("PMID", "record has no PMID (key or pubid)"))
            continue
        pmid = str(pmid).strip()
        if keep is not None and pmid not in keep:
            continue
        draft.records += 1
        question = fields.get("QUESTION")
        contexts = fields.get("CONTEXTS")
        labels = fields.get("LABELS") or []
        decision = fields.get("final_decision")
        if not isinstance(question, str) or not question.strip():
            problems.append(located.problem("QUESTION", "missing or not a string"))
            continue
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            problems.append(located.problem("CONTEXTS", "expected a list of strings"))
            continue
        if not isinstance(labels, list) or (labels and len(labels) != len(contexts)):
            problems.append(
                located.problem(
                    "LABELS",
                    f"expected one section label per context ({len(contexts)}), got {labels!r:.60}",
                )
            )
            continue
        if decision is None:
            draft.skip(located, "final_decision", "no final_decision (unlabeled PQA-U record)")
            continue
        gold = _GOLD.get(str(decision).strip().lower())
        if gold is None:
            problems.append(
                located.problem("final_decision", f"expected yes, no or maybe, got {decision!r}")
            )
            continue
        meshes = [m for m in fields.get("MESHES") or [] if isinstance(m, str) and m.strip()]
        year = fields.get("YEAR")
        pids = []
        for index, text in enumerate(contexts, start=1):
            if not text.strip():
                continue
            section = str(labels[index - 1]).strip().title() if labels else "Context"
            pid = f"pmid-{pmid}-{index}"
            pids.append(pid)
            draft.passages.append(
                Passage(
                    id=pid,
                    text=text,
                    source={
                        "org": "PubMed",
                        "title": f"PMID {pmid}, {section or 'Context'}",
                        "version": str(year) if year not in (None, "") else None,
                        "url": f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/",
                    },
                    grade=grade,
                    topic=meshes[0] if meshes else "pubmed",
                )
            )
        if not pids:
            draft.skip(located, "CONTEXTS", "no non-empty context")
            continue
        draft.items.append(
            (
                located,
                {
                    "id": f"pubmedqa-{pmid}",
                    "question": question,
                    "options": dict(OPTIONS),
                    "gold": gold,
                    "labels": {"defer": "C"},
                    "category": category,
                    "evidence_id": f"pmid-{pmid}",
                    "evidence": {"clean": pids},
                    "stance": {pid: {gold: "supports"} for pid in pids},
                },
            )
        )
    if problems:
        raise CorpusError(problems[:50], hidden=max(0, len(problems) - 50))
    _drop_orphans(draft)
    return draft


def _drop_orphans(draft: Draft) -> None:
    """Keep only passages of imported items (a skipped record leaves none behind), once."""
    wanted = {pid for _, data in draft.items for pid in data["evidence"]["clean"]}
    seen: set[str] = set()
    kept = []
    for passage in draft.passages:
        if passage.id in wanted and passage.id not in seen:
            seen.add(passage.id)
            kept.append(passage)
    draft.passages = kept
