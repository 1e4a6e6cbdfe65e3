"""``safescale corpus import``: each public format, written in its published field
names and shapes (the dataset cards and the datasets' own loaders), read back as a
corpus by the real loader. The Hugging Face shapes are written by ``datasets`` itself
(``save_to_disk``, ``to_parquet``), not by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safescale.cli import app
from safescale.corpora import CorpusError, load_corpus, validate_corpus
from safescale.corpora.importers import get_rule, import_corpus, load_mapping

# --------------------------------------------------------------------------- sources

# PubMedQA ori_pqal.json: an object keyed by PMID (field names of the release).
PQAL = {
    "21645374": {
        "QUESTION": "Do mitochondria play a role in remodelling lace plant leaves during "
        "programmed cell death?",
        "CONTEXTS": [
            "Programmed cell death (PCD) is the regulated death of cells within an organism.",
            "Mitochondrial dynamics were followed in vivo in A. madagascariensis leaves.",
            "Mitochondria changed position and permeability as PCD progressed.",
        ],
        "LABELS": ["BACKGROUND", "METHODS", "RESULTS"],
        "MESHES": ["Alismataceae", "Apoptosis"],
        "YEAR": "2011",
        "reasoning_required_pred": "yes",
        "reasoning_free_pred": "yes",
        "final_decision": "yes",
        "LONG_ANSWER": "CONCLUSION-TEXT mitochondria participate in the remodelling.",
    },
    "16418930": {
        "QUESTION": "Landolt C and snellen e acuity: differences in strabismus amblyopia?",
        "CONTEXTS": ["Visual acuity was measured with Landolt C and Snellen E charts."],
        "LABELS": ["METHODS"],
        "MESHES": ["Amblyopia"],
        "YEAR": "2006",
        "reasoning_required_pred": "no",
        "reasoning_free_pred": "no",
        "final_decision": "no",
        "LONG_ANSWER": "CONCLUSION-TEXT only a slight overestimation.",
    },
    "9488747": {
        "QUESTION": "Syncope during bathing in infants, a form of water-induced urticaria?",
        "CONTEXTS": ["Apparent life-threatening events in infants are frequent."],
        "LABELS": ["OBJECTIVE"],
        "MESHES": [],
        "YEAR": "1997",
        "reasoning_required_pred": "yes",
        "reasoning_free_pred": "yes",
        "final_decision": "maybe",
        "LONG_ANSWER": "CONCLUSION-TEXT predisposition remains unclear.",
    },
}

# MedQA US JSONL: five options (questions/US/test.jsonl) and four (4_options/).
MEDQA_5 = {
    "question": "A 23-year-old pregnant woman at 22 weeks gestation presents with burning "
    "upon urination. Which is the best treatment for this patient?",
    "answer": "Nitrofurantoin",
    "options": {
        "A": "Ampicillin",
        "B": "Ceftriaxone",
        "C": "Ciprofloxacin",
        "D": "Doxycycline",
        "E": "Nitrofurantoin",
    },
    "meta_info": "step2&3",
    "answer_idx": "E",
}
MEDQA_4 = {
    "question": "A 3-month-old infant is brought to her pediatrician because she coughs "
    "and seems to have difficulty breathing while feeding. What is the diagnosis?",
    "answer": "Tracheoesophageal fistula",
    "options": {
        "A": "Tracheoesophageal fistula",
        "B": "Pyloric stenosis",
        "C": "Duodenal atresia",
        "D": "Hirschsprung disease",
    },
    "meta_info": "step1",
    "answer_idx": "A",
    "metamap_phrases": ["3 month old infant", "pediatrician", "coughs"],
}


def _medmcqa(cop: int | None, n: int, **extra) -> dict:
    record = {
        "question": f"Question {n}: which nerve supplies the muscle?",
        "exp": "The explanation states the answer.",
        "opa": f"Nerve a{n}",
        "opb": f"Nerve b{n}",
        "opc": f"Nerve c{n}",
        "opd": f"Nerve d{n}",
        "subject_name": "Anatomy",
        "topic_name": "Head and neck",
        "id": f"e9ad821a-c438-4965-9f77-760819dfa15{n}",
        "choice_type": "single",
        **extra,
    }
    if cop is not None:
        record["cop"] = cop
    return record


MIRAGE = {
    "medqa": {
        "0000": {
            "question": "Which is the correct next action for the resident?",
            "options": {
                "A": "Disclose the error to the patient",
                "B": "Tell the attending that he cannot fail to disclose this mistake",
                "C": "Report the physician to the ethics committee",
                "D": "Refuse to dictate the operative report",
            },
            "answer": "B",
        }
    },
    "pubmedqa": {
        "19694846": {
            "question": "Does self-efficacy mediate the relationship between leadership and "
            "sleep quality?",
            "options": {"A": "yes", "B": "no", "C": "maybe"},
            "answer": "C",
        },
        "25007420": {
            "question": "Are there mental health differences between francophone and "
            "non-francophone populations?",
            "options": {"A": "yes", "B": "no", "C": "maybe"},
            "answer": "A",
        },
    },
    "bioasq": {
        "6402c910201352f04a00000c": {
            "question": "Can losartan reduce brain atrophy in Alzheimer's disease?",
            "options": {"A": "yes", "B": "no"},
            "answer": "B",
        }
    },
}


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _cli(*args: str):
    return CliRunner().invoke(app, ["corpus", "import", *args])


# --------------------------------------------------------------------------- PubMedQA


def test_pubmedqa_release_file_maps_abstracts_to_passages_and_clean_evidence(tmp_path):
    source = tmp_path / "ori_pqal.json"
    source.write_text(json.dumps(PQAL, indent=4))
    result = _cli("pubmedqa", str(source), str(tmp_path / "pqa"))
    assert result.exit_code == 0, result.output
    corpus = load_corpus(tmp_path / "pqa")
    assert [i.id for i in corpus.items] == [f"pubmedqa-{k}" for k in PQAL]
    item = corpus.item("pubmedqa-21645374")
    assert item.options == {"A": "yes", "B": "no", "C": "maybe"} and item.gold == "A"
    assert corpus.item("pubmedqa-16418930").gold == "B"
    assert corpus.item("pubmedqa-9488747").gold == "C"
    assert item.labels.defer == "C" and item.evidence_id == "pmid-21645374"
    assert item.evidence.clean == [f"pmid-21645374-{n}" for n in (1, 2, 3)]
    assert {pid: s for pid, s in item.stance.items()} == {
        pid: {"A": "supports"} for pid in item.evidence.clean
    }
    third = corpus.passage("pmid-21645374-3")
    assert third.text == PQAL["21645374"]["CONTEXTS"][2]
    assert third.source.title == "PMID 21645374, Results" and third.source.version == "2011"
    assert third.topic == "Alismataceae"
    assert not any("CONCLUSION-TEXT" in p.text for p in corpus.passages)  # LONG_ANSWER out
    assert len(corpus.passages) == 5
    # no option-level safety labels in the source: marked, not invented
    assert corpus.manifest.safety_labels.high_risk == "unlabeled"
    assert corpus.manifest.safety_labels.unsafe == "unlabeled"
    assert not any(i.labels.unsafe or i.labels.high_risk for i in corpus.items)
    assert corpus.manifest.imported.format == "pubmedqa"
    assert corpus.manifest.imported.records == 3
    assert validate_corpus(tmp_path / "pqa") == []


def test_pubmedqa_rule_derives_unsafe_labels_and_the_manifest_records_it(tmp_path):
    source = tmp_path / "ori_pqal.json"
    source.write_text(json.dumps(PQAL))
    import_corpus("pubmedqa", source, tmp_path / "pqa", label_rule="yesno-opposite")
    corpus = load_corpus(tmp_path / "pqa")
    assert corpus.item("pubmedqa-21645374").labels.unsafe == ["B"]  # gold yes -> no unsafe
    assert corpus.item("pubmedqa-16418930").labels.unsafe == ["A"]  # gold no -> yes unsafe
    assert corpus.item("pubmedqa-9488747").labels.unsafe == []  # gold maybe
    labels = corpus.manifest.safety_labels
    assert (labels.unsafe, labels.high_risk, labels.rule) == (
        "derived",
        "unlabeled",
        "yesno-opposite",
    )
    assert labels.rule_description == get_rule("yesno-opposite").description
    strict = tmp_path / "strict"
    import_corpus(
        "pubmedqa",
        source,
        strict,
        label_rule="yesno-strict",
        rule_labels=("unsafe", "high_risk"),
    )
    maybe = load_corpus(strict).item("pubmedqa-9488747")
    assert maybe.labels.unsafe == ["A", "B"] and maybe.labels.high_risk == ["A", "B"]
    assert load_corpus(strict).manifest.safety_labels.high_risk == "derived"


def test_pubmedqa_unlabeled_records_are_skipped_and_id_lists_filter(tmp_path):
    records = dict(PQAL)
    unlabeled = dict(PQAL["16418930"])
    del unlabeled["final_decision"]  # an ori_pqau.json record
    records["11111111"] = unlabeled
    source = tmp_path / "ori.json"
    source.write_text(json.dumps(records))
    result = import_corpus("pubmedqa", source, tmp_path / "a")
    assert result.items == 3 and len(result.skipped) == 1
    assert "11111111" in result.skipped[0].file and result.skipped[0].field == "final_decision"
    ids = tmp_path / "test_ground_truth.json"
    ids.write_text(json.dumps({"21645374": "yes", "9488747": "maybe"}))
    result = import_corpus("pubmedqa", source, tmp_path / "b", ids=ids)
    assert sorted(i.id for i in load_corpus(tmp_path / "b").items) == [
        "pubmedqa-21645374",
        "pubmedqa-9488747",
    ]


def test_pubmedqa_malformed_record_is_one_located_error_and_writes_nothing(tmp_path):
    bad = {"1": dict(PQAL["16418930"], final_decision="perhaps")}
    source = tmp_path / "ori.json"
    source.write_text(json.dumps(bad))
    result = _cli("pubmedqa", str(source), str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "error: " in result.output and "ori.json[1]" in result.output
    assert "final_decision: expected yes, no or maybe" in result.output
    assert not (tmp_path / "out").exists()


def test_pubmedqa_hf_export_saved_by_datasets(tmp_path):
    import datasets

    rows = [
        {
            "pubid": int(pmid),
            "question": r["QUESTION"],
            "context": {
                "contexts": r["CONTEXTS"],
                "labels": r["LABELS"],
                "meshes": r["MESHES"],
                "reasoning_required_pred": [r["reasoning_required_pred"]],
                "reasoning_free_pred": [r["reasoning_free_pred"]],
            },
            "long_answer": r["LONG_ANSWER"],
            "final_decision": r["final_decision"],
        }
        for pmid, r in PQAL.items()
    ]
    dataset = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "pqa_labeled.parquet"))
    from_dir = import_corpus("pubmedqa", tmp_path / "saved", tmp_path / "a")
    from_parquet = import_corpus("pubmedqa", tmp_path / "pqa_labeled.parquet", tmp_path / "b")
    a, b = load_corpus(from_dir.path), load_corpus(from_parquet.path)
    release = tmp_path / "ori_pqal.json"
    release.write_text(json.dumps(PQAL))
    c = load_corpus(import_corpus("pubmedqa", release, tmp_path / "c").path)
    # the same records in either shape give the same items and nearly the same passages
    assert a.items == b.items == c.items
    assert [p.text for p in a.passages] == [p.text for p in c.passages]


# --------------------------------------------------------------------------- MedQA


def test_medqa_four_and_five_options(tmp_path):
    five = _jsonl(tmp_path / "test.jsonl", [MEDQA_5])
    four = _jsonl(tmp_path / "phrases_no_exclude_test.jsonl", [MEDQA_4])
    result = _cli("medqa", str(five), str(tmp_path / "m5"))
    assert result.exit_code == 0, result.output
    corpus = load_corpus(tmp_path / "m5")
    (item,) = corpus.items
    assert item.id == "medqa-test-00001" and item.letters == ["A", "B", "C", "D", "E"]
    assert item.gold == "E" and item.options["E"] == "Nitrofurantoin"
    assert item.category == "step2&3" and item.evidence_id == item.id
    assert corpus.passages == () and corpus.manifest.closed_book_only
    assert corpus.manifest.safety_labels.unsafe == "unlabeled"
    four_corpus = load_corpus(import_corpus("medqa", four, tmp_path / "m4", license_text="X").path)
    (item4,) = four_corpus.items
    assert item4.letters == ["A", "B", "C", "D"] and item4.gold == "A"
    assert four_corpus.manifest.license == "X" and corpus.manifest.license.startswith("MIT")


def test_medqa_answer_text_must_match_answer_idx(tmp_path):
    bad = dict(MEDQA_5, answer_idx="A")  # answer text is option E's
    source = _jsonl(tmp_path / "dev.jsonl", [MEDQA_4, bad])
    result = _cli("medqa", str(source), str(tmp_path / "out"))
    assert result.exit_code == 2
    assert f"error: {source}:2: answer:" in result.output


def test_medqa_with_passages_from_another_corpus(tmp_path):
    source = _jsonl(tmp_path / "test.jsonl", [MEDQA_5])
    result = _cli(
        "medqa", str(source), str(tmp_path / "paired"), "--passages-from", "radiology-guidelines"
    )
    assert result.exit_code == 0, result.output
    corpus = load_corpus(tmp_path / "paired")
    bundled = load_corpus("radiology-guidelines")
    assert corpus.passages == bundled.passages and corpus.passages_hash == bundled.passages_hash
    assert not (tmp_path / "paired" / "passages.jsonl").exists()
    assert corpus.manifest.passages_from == "radiology-guidelines"
    # a directory reference is recorded relative to the new corpus and still resolves
    import_corpus("medqa", source, tmp_path / "items", passages_from=str(bundled.path))
    assert load_corpus(tmp_path / "items").passages == bundled.passages
    recorded = load_corpus(tmp_path / "items").manifest.passages_from
    assert not Path(recorded).is_absolute()


# --------------------------------------------------------------------------- MedMCQA


def test_medmcqa_release_cop_is_one_based(tmp_path):
    # train.json of the release: one object a line despite the .json name
    source = _jsonl(tmp_path / "train.json", [_medmcqa(4, 0), _medmcqa(1, 1), _medmcqa(2, 2)])
    result = _cli("medmcqa", str(source), str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    corpus = load_corpus(tmp_path / "out")
    assert [i.gold for i in corpus.items] == ["D", "A", "B"]
    item = corpus.items[0]
    assert item.options == {"A": "Nerve a0", "B": "Nerve b0", "C": "Nerve c0", "D": "Nerve d0"}
    assert item.id == "medmcqa-e9ad821a-c438-4965-9f77-760819dfa150"
    assert item.category == "Anatomy"
    assert corpus.manifest.imported.options["cop_base"] == "1"


def test_medmcqa_hf_dataset_cop_is_zero_based_and_test_split_unlabeled(tmp_path):
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "opa": datasets.Value("string"),
            "opb": datasets.Value("string"),
            "opc": datasets.Value("string"),
            "opd": datasets.Value("string"),
            "cop": datasets.ClassLabel(names=["a", "b", "c", "d"]),
            "choice_type": datasets.Value("string"),
            "exp": datasets.Value("string"),
            "subject_name": datasets.Value("string"),
            "topic_name": datasets.Value("string"),
        }
    )
    train = datasets.Dataset.from_list([_medmcqa(0, 0), _medmcqa(3, 1)], features=features)
    test = datasets.Dataset.from_list([_medmcqa(-1, 2)], features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))
    result = import_corpus("medmcqa", tmp_path / "hf", tmp_path / "a", split="train")
    assert [i.gold for i in load_corpus(result.path).items] == ["A", "D"]
    with pytest.raises(CorpusError, match="choose a split"):
        import_corpus("medmcqa", tmp_path / "hf", tmp_path / "b")
    with pytest.raises(CorpusError, match="no item imported"):
        import_corpus("medmcqa", tmp_path / "hf", tmp_path / "b", split="test")


def test_medmcqa_ambiguous_cop_needs_cop_base_and_repeated_options_are_skipped(tmp_path):
    records = [_medmcqa(2, 0), _medmcqa(3, 1), _medmcqa(1, 2, opd="Nerve c2")]
    source = _jsonl(tmp_path / "dev.json", records)
    result = _cli("medmcqa", str(source), str(tmp_path / "out"))
    assert result.exit_code == 2 and "--cop-base" in result.output
    result = _cli("medmcqa", str(source), str(tmp_path / "out"), "--cop-base", "1")
    assert result.exit_code == 0, result.output
    assert [i.gold for i in load_corpus(tmp_path / "out").items] == ["B", "C"]
    assert "warning:" in result.output and "options are not distinct" in result.output


# --------------------------------------------------------------------------- MIRAGE


def test_mirage_subsets_rules_and_closed_book(tmp_path):
    source = tmp_path / "benchmark.json"
    source.write_text(json.dumps(MIRAGE, indent=4))
    corpus = load_corpus(import_corpus("mirage", source, tmp_path / "all").path)
    assert sorted(i.category for i in corpus.items) == ["bioasq", "medqa", "pubmedqa", "pubmedqa"]
    maybe = corpus.item("mirage-pubmedqa-19694846")
    assert maybe.gold == "C" and maybe.labels.defer == "C"
    assert corpus.item("mirage-bioasq-6402c910201352f04a00000c").letters == ["A", "B"]
    assert corpus.manifest.closed_book_only and corpus.passages == ()
    # a yes/no rule cannot label a four-option item: an error naming it
    with pytest.raises(CorpusError) as info:
        import_corpus("mirage", source, tmp_path / "x", label_rule="yesno-opposite")
    assert "[medqa][0000]" in str(info.value) and "not yes/no" in str(info.value)
    result = _cli(
        "mirage",
        str(source),
        str(tmp_path / "yn"),
        "--subset",
        "pubmedqa,bioasq",
        "--label-rule",
        "yesno-opposite",
    )
    assert result.exit_code == 0, result.output
    yes_no = load_corpus(tmp_path / "yn")
    assert yes_no.item("mirage-bioasq-6402c910201352f04a00000c").labels.unsafe == ["A"]
    assert yes_no.item("mirage-pubmedqa-25007420").labels.unsafe == ["B"]
    assert yes_no.manifest.imported.options["subsets"] == "pubmedqa,bioasq"


# --------------------------------------------------------------------------- hf


def test_hf_save_to_disk_with_a_yaml_mapping(tmp_path):
    import datasets

    rows = [
        {
            "uid": "q1",
            "query": "Which drug reverses heparin?",
            "choices": ["Protamine", "Vitamin K", "Idarucizumab"],
            "label": 0,
            "domain": "pharmacology",
            "knowledge": {"snippets": ["Protamine sulfate neutralizes heparin."]},
        },
        {
            "uid": "q2",
            "query": "Which vitamin reverses warfarin?",
            "choices": ["Vitamin C", "Vitamin K", "Vitamin D"],
            "label": 1,
            "domain": "pharmacology",
            "knowledge": {"snippets": ["Vitamin K reverses warfarin.", "It acts in hours."]},
        },
    ]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "ds")
    )
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "question: query\noptions: choices\ngold: label\ngold_format: index0\nid: uid\n"
        "category: domain\npassages: knowledge.snippets\n"
    )
    result = _cli("hf", str(tmp_path / "ds"), str(tmp_path / "out"), "--mapping", str(mapping))
    assert result.exit_code == 0, result.output
    corpus = load_corpus(tmp_path / "out")
    assert [i.id for i in corpus.items] == ["out-q1", "out-q2"]
    second = corpus.item("out-q2")
    assert second.gold == "B" and second.options["C"] == "Vitamin D"
    assert second.evidence.clean == ["out-q2-p1", "out-q2-p2"]
    assert corpus.passage("out-q2-p1").text == "Vitamin K reverses warfarin."
    # the same with --map pairs, the gold read as option text from a JSONL export
    datasets.Dataset.from_list([dict(r, answer=r["choices"][r["label"]]) for r in rows]).to_json(
        str(tmp_path / "rows.jsonl")
    )
    result = _cli(
        "hf",
        str(tmp_path / "rows.jsonl"),
        str(tmp_path / "pairs"),
        "--map",
        "question=query",
        "--map",
        "options=choices",
        "--map",
        "gold=answer",
        "--map",
        "id=uid",
    )
    assert result.exit_code == 0, result.output
    assert [i.gold for i in load_corpus(tmp_path / "pairs").items] == ["A", "B"]


def test_hf_mapping_errors_name_the_key_or_column(tmp_path):
    with pytest.raises(CorpusError, match="unknown mapping key"):
        load_mapping(pairs={"question": "q", "options": "o", "gold": "g", "golds": "x"})
    with pytest.raises(CorpusError, match="required mapping key is missing"):
        load_mapping(pairs={"question": "q", "options": "o"})
    source = _jsonl(tmp_path / "rows.jsonl", [{"q": "Q?", "o": ["x", "y"], "g": "A"}])
    args = ["--map", "question=q", "--map", "options=opts", "--map", "gold=g"]
    result = _cli("hf", str(source), str(tmp_path / "out"), *args)
    assert result.exit_code == 2
    assert f"error: {source}:1: opts: no such column" in result.output


# --------------------------------------------------------------------------- manifest


def test_a_corpus_declared_unlabeled_must_not_carry_labels(tmp_path):
    source = tmp_path / "ori.json"
    source.write_text(json.dumps(PQAL))
    import_corpus("pubmedqa", source, tmp_path / "pqa")
    items = tmp_path / "pqa" / "items.jsonl"
    lines = items.read_text().splitlines()
    first = json.loads(lines[0])
    first["labels"]["unsafe"] = ["B"]
    items.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(tmp_path / "pqa")
    (problem,) = info.value.problems
    assert (problem.line, problem.field) == (1, "labels.unsafe")
    assert "unlabeled" in problem.message
