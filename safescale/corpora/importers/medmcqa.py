"""MedMCQA (Pal et al., 2022; MIT): four-option Indian medical entrance questions.

Records (the original release's ``train.json`` / ``dev.json``, one JSON object a line,
and the Hugging Face ``openlifescienceai/medmcqa`` dataset as Parquet, JSONL or
``save_to_disk``) carry ``id``, ``question``, ``opa``, ``opb``, ``opc``, ``opd``, ``cop``,
``choice_type``, ``exp``, ``subject_name`` and ``topic_name``.

``cop`` (the correct option) is **1-based in the original release** (1 = ``opa``; its
own loader subtracts 1) and **0-based in the Hugging Face dataset** (a ClassLabel
``a``/``b``/``c``/``d``, 0 = ``opa``), whose unlabeled test split has ``cop = -1``. The
importer takes ``cop_base`` (0 or 1) or, with ``auto``, infers it from the values: a 0
means 0-based, a 4 means 1-based; both, or neither (every value in 1..3), is an error
that asks for ``cop_base``. Records without a ``cop`` or with ``cop = -1`` are skipped
as unlabeled.

Mapping: item ``medmcqa-<id>``, options ``A``-``D`` from ``opa``-``opd``, gold from
``cop``, category ``subject_name`` (or ``medmcqa``), ``evidence_id`` = the item id.
Records whose options repeat (MedMCQA has some) are skipped with the reason. ``exp``
(the explanation) is not imported: it often states the answer. MedMCQA ships no
passages: the items are closed-book-only unless ``passages_from`` names a corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.importers._common import Draft, SourceRecord, read_records, slug

__all__ = ["LICENSE", "infer_cop_base", "read_medmcqa"]

LICENSE = "MIT (MedMCQA, Pal et al. 2022)"
_OPTION_FIELDS = ("opa", "opb", "opc", "opd")


def _cop(record: SourceRecord) -> int | Problem | None:
    raw = record.data.get("cop")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return record.problem("cop", f"expected an integer, got {raw!r}")
    if value == -1:
        return None
    if not 0 <= value <= 4:
        return record.problem("cop", f"expected 0..3 (0-based) or 1..4 (1-based), got {value}")
    return value


def infer_cop_base(values: list[int], source: str) -> int:
    """0 or 1 from the ``cop`` values of a file (see the module docs).

    Raises:
        CorpusError: both 0 and 4 occur, or neither does.
    """
    zero, four = 0 in values, 4 in values
    if zero and not four:
        return 0
    if four and not zero:
        return 1
    reason = (
        "cop takes both 0 and 4" if zero else "every cop is in 1..3, which fits both numberings"
    )
    raise CorpusError(
        [
            Problem(
                source,
                0,
                "cop",
                f"cannot tell 0- from 1-based cop ({reason}); pass "
                "--cop-base 1 for the original release, 0 for the Hugging Face dataset",
            )
        ]
    )


def read_medmcqa(
    source: str | Path,
    *,
    split: str | None = None,
    cop_base: Literal["auto", "0", "1"] | int = "auto",
) -> Draft:
    """Read MedMCQA records into a draft (see the module docs for the mapping).

    Raises:
        CorpusError: a record that is not MedMCQA-shaped, or an ambiguous ``cop``.
    """
    draft = Draft()
    problems: list[Problem] = []
    rows: list[tuple[SourceRecord, int | None]] = []
    for record in read_records(source, split=split):
        draft.records += 1
        missing = [
            f for f in ("question", *_OPTION_FIELDS) if not isinstance(record.data.get(f), str)
        ]
        if missing:
            problems.append(record.problem(missing[0], "missing or not a string"))
            continue
        cop = _cop(record)
        if isinstance(cop, Problem):
            problems.append(cop)
            continue
        rows.append((record, cop))
    if problems:
        raise CorpusError(problems[:50], hidden=max(0, len(problems) - 50))
    labeled = [cop for _, cop in rows if cop is not None]
    if str(cop_base) == "auto":
        base = infer_cop_base(labeled, str(source)) if labeled else 0
    else:
        base = int(cop_base)
        if base not in (0, 1):
            raise ValueError(f"cop_base must be 0, 1 or auto, got {cop_base!r}")
    for record, cop in rows:
        if cop is None:
            draft.skip(record, "cop", "no correct option (unlabeled test record)")
            continue
        index = cop - base
        if not 0 <= index < 4:
            raise CorpusError(
                [record.problem("cop", f"{cop} is out of range for {base}-based numbering")]
            )
        data = record.data
        raw_id = data.get("id")
        item_id = (
            f"medmcqa-{slug(raw_id)}"
            if raw_id not in (None, "")
            else (f"medmcqa-{slug(Path(record.file).stem)}-{record.line:06d}")
        )
        subject = data.get("subject_name")
        draft.items.append(
            (
                record,
                {
                    "id": item_id,
                    "question": data["question"],
                    "options": {
                        letter: data[name]
                        for letter, name in zip("ABCD", _OPTION_FIELDS, strict=True)
                    },
                    "gold": "ABCD"[index],
                    "category": str(subject).strip() if subject not in (None, "") else "medmcqa",
                    "evidence_id": item_id,
                },
            )
        )
    draft.resolved["cop_base"] = base
    return draft
