"""Importers of public medical QA benchmarks into safescale corpora.

``safescale corpus import FORMAT SRC OUT`` (and :func:`import_corpus`) reads a public
benchmark in its published shape and writes a corpus directory that
:func:`safescale.corpora.load_corpus` and ``safescale run`` use like any other:

``pubmedqa``
    ``ori_pqal.json`` or the HF ``qiaojin/PubMedQA`` export; the abstracts become the
    passages and each item's clean evidence (:mod:`.pubmedqa`).
``medqa``
    MedQA-USMLE JSONL, 4 or 5 options (:mod:`.medqa`).
``medmcqa``
    MedMCQA JSON lines / HF export, ``cop`` 1- or 0-based (:mod:`.medmcqa`).
``mirage``
    MIRAGE's ``benchmark.json`` (:mod:`.mirage`).
``hf``
    any ``save_to_disk`` directory, Parquet or JSONL with a column mapping (:mod:`.hf`).

Sets without passages become closed-book-only corpora, or take their passages from
another corpus by name (``passages_from``: a study pairs items from one source with
passages from another). None of these sets has option-level safety labels: the
manifest marks them ``unlabeled`` unless a labeling rule (:mod:`.rules`) is named, and
then records the rule. The field-by-field mapping of every format is in
``docs/data-and-exports.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.importers._common import Draft, ImportResult, finish_import, slug
from safescale.corpora.importers.hf import ColumnMapping, load_mapping, read_hf
from safescale.corpora.importers.medmcqa import LICENSE as MEDMCQA_LICENSE
from safescale.corpora.importers.medmcqa import read_medmcqa
from safescale.corpora.importers.medqa import LICENSE as MEDQA_LICENSE
from safescale.corpora.importers.medqa import read_medqa
from safescale.corpora.importers.mirage import LICENSE as MIRAGE_LICENSE
from safescale.corpora.importers.mirage import read_mirage
from safescale.corpora.importers.pubmedqa import LICENSE as PUBMEDQA_LICENSE
from safescale.corpora.importers.pubmedqa import read_pubmedqa
from safescale.corpora.importers.rules import LABEL_RULES, LabelRule, get_rule

__all__ = [
    "FORMATS",
    "LABEL_RULES",
    "ColumnMapping",
    "ImportResult",
    "LabelRule",
    "get_rule",
    "import_corpus",
    "load_mapping",
]

_DESCRIPTIONS = {
    "pubmedqa": "PubMedQA questions (yes/no/maybe) with the abstract sections they were "
    "labeled from as passages and clean evidence",
    "medqa": "MedQA-USMLE board questions",
    "medmcqa": "MedMCQA entrance-exam questions",
    "mirage": "MIRAGE benchmark questions (MedQA, MedMCQA, PubMedQA*, BioASQ, MMLU-Med)",
    "hf": "questions imported from a Hugging Face dataset",
}
_LICENSES = {
    "pubmedqa": PUBMEDQA_LICENSE,
    "medqa": MEDQA_LICENSE,
    "medmcqa": MEDMCQA_LICENSE,
    "mirage": MIRAGE_LICENSE,
    "hf": "the source dataset's license (not recorded by the importer: set it here)",
}


def _read(fmt: str, source: Path, name: str, split: str | None, options: dict[str, Any]) -> Draft:
    if fmt == "pubmedqa":
        return read_pubmedqa(
            source,
            split=split,
            ids=options.get("ids"),
            grade_level=int(options.get("grade_level") or 3),
            category=options.get("category") or "pubmedqa",
        )
    if fmt == "medqa":
        return read_medqa(source, split=split)
    if fmt == "medmcqa":
        return read_medmcqa(source, split=split, cop_base=options.get("cop_base") or "auto")
    if fmt == "mirage":
        return read_mirage(source, subsets=options.get("subsets"))
    mapping = options.get("mapping")
    if not isinstance(mapping, ColumnMapping):
        raise CorpusError(
            [
                Problem(
                    str(source),
                    0,
                    "-",
                    "the hf format needs a column mapping "
                    "(--mapping FILE.yaml or --map key=column)",
                )
            ]
        )
    return read_hf(source, mapping, name=name, split=split)


#: The formats and what they read.
FORMATS: dict[str, str] = dict(_DESCRIPTIONS)


def import_corpus(
    fmt: str,
    source: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    label_rule: str | None = None,
    rule_labels: Sequence[str] = ("unsafe",),
    passages_from: str | None = None,
    split: str | None = None,
    overwrite: bool = False,
    license_text: str | None = None,
    **options: Any,
) -> ImportResult:
    """Import a public benchmark as a corpus directory.

    Args:
        fmt: ``pubmedqa``, ``medqa``, ``medmcqa``, ``mirage`` or ``hf``.
        source: the file or directory to read.
        out: the corpus directory to write.
        name: the corpus name (default: the output directory's name).
        label_rule: a rule of :data:`LABEL_RULES` deriving ``unsafe`` (and, with
            ``rule_labels``, ``high_risk``) labels; None leaves them unlabeled.
        rule_labels: which labels the rule writes (``unsafe``, ``high_risk``).
        passages_from: a corpus (bundled name or directory) whose passages these items
            are answered over (for sets without passages of their own).
        split: the split of a ``DatasetDict`` ``save_to_disk`` directory.
        overwrite: replace an existing corpus at ``out``.
        license_text: the manifest's ``license`` (default: the source dataset's license
            for the named formats; for ``hf`` a placeholder asking for it).
        **options: format options: ``ids``, ``grade_level``, ``category`` (pubmedqa);
            ``cop_base`` (medmcqa); ``subsets`` (mirage); ``mapping`` (hf, a
            :class:`ColumnMapping`).

    Returns:
        What was written, with every skipped record and its reason.

    Raises:
        CorpusError: unreadable or malformed input (file, line or record, field), a
            rule that does not fit an item, or a corpus that would not load.
        ValueError: an unknown format, rule or label name.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    rule: LabelRule | None = get_rule(label_rule) if label_rule else None
    bad = [label for label in rule_labels if label not in ("unsafe", "high_risk")]
    if bad or not rule_labels:
        raise ValueError(f"rule labels must be unsafe and/or high_risk, got {list(rule_labels)}")
    source = Path(source)
    target = Path(out)
    corpus_name = slug(name or target.name)
    if passages_from is not None:
        from safescale.corpora.loader import resolve_corpus_path

        resolve_corpus_path(passages_from)  # a clear error before the slow part
    draft = _read(fmt, source, corpus_name, split, options)
    recorded = {
        "split": split,
        "label_rule": label_rule,
        "rule_labels": ",".join(rule_labels) if rule is not None else None,
        **{
            k: (",".join(v) if isinstance(v, list | tuple) else v)
            for k, v in options.items()
            if k != "mapping"
        },
    }
    if isinstance(options.get("mapping"), ColumnMapping):
        mapping = options["mapping"].model_dump(exclude_none=True)
        recorded.update(
            {f"map.{k}": (",".join(v) if isinstance(v, tuple) else v) for k, v in mapping.items()}
        )
    description = _DESCRIPTIONS[fmt]
    if passages_from is not None:
        description += f"; answered over the passages of {passages_from}"
    elif not draft.passages:
        description += "; no passages (closed-book only)"
    return finish_import(
        draft,
        target,
        fmt=fmt,
        source=source,
        name=corpus_name,
        description=description,
        license_text=license_text or _LICENSES[fmt],
        options=recorded,
        rule=rule,
        rule_labels=tuple(rule_labels),
        passages_from=passages_from,
        overwrite=overwrite,
        split=split,
    )
