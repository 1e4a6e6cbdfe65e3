"""Metrics on hand-made tables, run-directory reading, and the report files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from safescale.corpora import (
    Corpus,
    EvidenceSets,
    Grade,
    GradeSystemSpec,
    Item,
    Manifest,
    OptionLabels,
    Passage,
    Source,
    write_corpus,
)
from safescale.presentation.report import (
    condition_tables,
    format_interval,
    render_markdown,
    write_report,
)
from safescale.rundir import (
    CorpusEntry,
    MetricsReport,
    ModelEntry,
    PassageMasking,
    RelianceRecord,
    ResponseRecord,
    RunDirError,
    RunManifest,
    load_responses,
    load_run,
    read_jsonl,
)
from safescale.statistics.bootstrap import BootstrapConfig
from safescale.statistics.metrics import (
    MetricsConfig,
    compute_metrics,
    mark_not_labeled,
    metrics_from_records,
    outcome_frame,
    read_metrics,
    response_confidence,
    worst_case_concentration,
)

FAST = BootstrapConfig(replicates=200, seed=1, cluster_by_evidence_id=False)


def _passage(pid: str) -> Passage:
    return Passage(
        id=pid,
        text=f"text of {pid}",
        source=Source(org="org", title="t"),
        grade=Grade(system="g", raw="A", level=1),
        topic="topic",
    )


def _item(iid, gold, high_risk, unsafe, category, evidence_id, task, stance=None,
          defer=None) -> Item:  # fmt: skip
    return Item(
        id=iid,
        question=f"question {iid}?",
        options={"A": "alpha", "B": "beta", "C": "gamma"},
        gold=gold,
        labels=OptionLabels(high_risk=high_risk, unsafe=unsafe, defer=defer),
        category=category,
        evidence_id=evidence_id,
        task=task,
        evidence=EvidenceSets(clean=["p1"]),
        stance=stance or {},
    )


# Every evidence-set passage needs a stance (corpus validation); neutral changes no metric.
NEUTRAL = {"p1": {"A": "neutral", "B": "neutral", "C": "neutral"}}


def tiny_corpus() -> Corpus:
    manifest = Manifest(
        name="tiny",
        version="1",
        description="d",
        license="l",
        disclaimer="x",
        grade_systems={"g": GradeSystemSpec(levels={"A": 1})},
    )
    items = (
        _item("i1", "A", ["C"], ["B", "C"], "x", "e1", "align",
              {"p1": {"A": "supports", "B": "contradicts", "C": "contradicts"}}),
        _item("i2", "B", ["A"], ["A"], "x", "e1", "conflict",
              {"p1": {"A": "contradicts", "B": "supports"},
               "p2": {"A": "supports", "B": "contradicts"}}),
        _item("i3", "A", ["B"], ["B"], "y", "e2", "gap", NEUTRAL, defer="A"),
        _item("i4", "C", [], [], "y", "e3", None, NEUTRAL),
    )  # fmt: skip
    return Corpus(manifest=manifest, passages=(_passage("p1"), _passage("p2")), items=items)


def _response(item, chosen, condition="standard_rag", *, logits=(0.0, 0.0, 0.0), budget=1,
              vote=1.0, evidence=(), cited=(), wall=0.0, prompt=0, completion=0,
              model="m") -> ResponseRecord:  # fmt: skip
    return ResponseRecord(
        run="r",
        model=model,
        condition=condition,
        item=item,
        samples_budget=budget,
        letters=["A", "B", "C"],
        option_logits=list(logits),
        chosen=chosen,
        vote_share=vote,
        response=f"{chosen}.",
        message="m",
        message_noctx="m",
        evidence_ids=list(evidence),
        cited_ids=list(cited),
        prompt_tokens=prompt,
        completion_tokens=completion,
        wall_ms=wall,
    )


def standard_rag_records(condition: str = "standard_rag") -> list[ResponseRecord]:
    """Hand-checked table (4 items):

    i1 chooses C: high-risk, unsafe, contradicted by p1, confidence ~1 -> dangerous.
    i2 chooses B: correct; cited p2 contradicts B (cited wins over evidence p1).
    i3 chooses B: high-risk, unsafe, confidence softmax([0, 2, -inf-ish]) < 0.95.
    i4 chooses Z: unparsed -> wrong and nothing else.
    Latency: (100 + 200 + 300 + 400) ms / 4 responses = 250 ms per response, and
    1000 ms / (10 + 5 + 10 + 0) generated tokens = 40 ms per generated token.
    """
    return [
        _response("i1", "C", condition, logits=(0, 0, 12), evidence=["p1"], wall=100, prompt=40,
                  completion=10),
        _response("i2", "B", condition, evidence=["p1"], cited=["p2"], wall=200, prompt=45,
                  completion=5),
        _response("i3", "B", condition, logits=(0, 2, -9), evidence=["p1"], wall=300, prompt=90,
                  completion=10),
        _response("i4", "Z", condition, wall=400),
    ]  # fmt: skip


def closed_book_records() -> list[ResponseRecord]:
    # A everywhere: i1 correct, i2 high-risk (and unsafe), i3 correct, i4 wrong.
    return [
        _response(i, "A", "closed_book", logits=(5, 0, 0), wall=10, prompt=10)
        for i in ("i1", "i2", "i3", "i4")
    ]


def _cell(metrics, condition, model="m", budget=1):
    (cell,) = [
        c
        for c in metrics["cells"]
        if (c["condition"], c["model"], c["samples_budget"]) == (condition, model, budget)
    ]
    return cell


# ---------------------------------------------------------------------------- outcomes


def test_outcome_frame_matches_hand_computed_flags():
    frame = outcome_frame(standard_rag_records(), {"tiny": tiny_corpus()}).set_index("item")
    assert frame["correct"].tolist() == [0, 1, 0, 0]
    assert frame["high_risk_error"].tolist() == [1, 0, 1, 0]
    assert frame["unsafe_answer"].tolist() == [1, 0, 1, 0]
    assert frame["contradiction"].tolist() == [1, 1, 0, 0]
    assert frame["dangerous_overconfidence"].tolist() == [1, 0, 0, 0]
    assert frame.loc["i3", "confidence"] == pytest.approx(
        math.exp(2) / (1 + math.exp(2) + math.exp(-9))
    )
    assert math.isnan(frame.loc["i4", "confidence"])
    assert frame["tokens"].tolist() == [10, 5, 10, 0]  # generated tokens


def test_contradiction_uses_evidence_when_nothing_is_cited():
    record = _response("i2", "B", evidence=["p1"])  # p1 supports B
    assert outcome_frame([record], {"tiny": tiny_corpus()})["contradiction"].item() == 0
    record = _response("i2", "B", evidence=["p2"])  # p2 contradicts B
    assert outcome_frame([record], {"tiny": tiny_corpus()})["contradiction"].item() == 1


def test_confidence_is_vote_share_for_multi_sample_budgets():
    peaked = _response("i1", "C", logits=(0, 0, 20), budget=4, vote=0.75)
    assert response_confidence(peaked) == 0.75
    assert response_confidence(_response("i1", "C", logits=(0, 0, 20))) > 0.999
    frame = outcome_frame(
        [
            _response("i1", "C", budget=4, vote=0.75, logits=(0, 0, 20)),
            _response("i3", "B", budget=4, vote=1.0, logits=(9, 0, 0)),
        ],
        {"tiny": tiny_corpus()},
    )
    assert frame["dangerous_overconfidence"].tolist() == [0, 1]


def test_cell_metrics_equal_hand_computed_values():
    metrics = metrics_from_records(standard_rag_records(), {"tiny": tiny_corpus()}, bootstrap=FAST)
    cell = _cell(metrics, "standard_rag")
    values = {k: v["value"] for k, v in cell["metrics"].items()}
    assert values == {
        "accuracy": 0.25,
        "high_risk_error": 0.5,
        "unsafe_answer": 0.5,
        "contradiction": 0.5,
        "dangerous_overconfidence": 0.25,
        "latency_ms": 250.0,
        "ms_per_generated_token": 40.0,
    }
    for est in cell["metrics"].values():
        assert est["lo"] <= est["value"] <= est["hi"]
        assert est["n"] == 4
    assert cell["counts"]["high_risk_error"] == 2
    # Per task: align (i1) wrong, conflict (i2) right, gap (i3) wrong; i4 has no task.
    assert {t: e["value"] for t, e in cell["by_task"].items()} == {
        "align": 0.0,
        "conflict": 1.0,
        "gap": 0.0,
    }
    assert cell["by_category"]["x"]["high_risk_error_rate"] == 0.5
    assert cell["by_category"]["y"]["high_risk_errors"] == 1


def test_clustering_resamples_evidence_groups():
    clustered = BootstrapConfig(replicates=200, seed=1, cluster_by_evidence_id=True)
    metrics = metrics_from_records(
        standard_rag_records(), {"tiny": tiny_corpus()}, bootstrap=clustered
    )
    cell = _cell(metrics, "standard_rag")
    assert cell["n_units"] == 3  # i1 and i2 share evidence_id e1
    assert cell["metrics"]["accuracy"]["n_units"] == 3
    assert metrics["run"]["resampling_unit"] == "evidence_id"


def test_metrics_are_deterministic_for_a_seed_and_change_with_it():
    corpora = {"tiny": tiny_corpus()}
    a = metrics_from_records(standard_rag_records(), corpora, bootstrap=FAST)
    b = metrics_from_records(standard_rag_records(), corpora, bootstrap=FAST)
    assert a == b
    c = metrics_from_records(
        standard_rag_records(), corpora, bootstrap=FAST.model_copy(update={"seed": 99})
    )
    intervals = lambda m: [(e["lo"], e["hi"]) for e in _cell(m, "standard_rag")["metrics"].values()]  # noqa: E731
    assert intervals(a) != intervals(c)


def test_paired_difference_of_identical_conditions_is_zero_with_zero_width_ci():
    records = standard_rag_records() + standard_rag_records("clean_evidence")
    metrics = metrics_from_records(records, {"tiny": tiny_corpus()}, bootstrap=FAST)
    (comp,) = [
        c for c in metrics["comparisons"] if (c["a"], c["b"]) == ("clean_evidence", "standard_rag")
    ]
    assert comp["n_items"] == 4
    for est in comp["deltas"].values():
        assert (est["value"], est["lo"], est["hi"]) == (0.0, 0.0, 0.0)


def test_paired_difference_between_different_conditions():
    records = standard_rag_records() + closed_book_records()
    metrics = metrics_from_records(records, {"tiny": tiny_corpus()}, bootstrap=FAST)
    (comp,) = [c for c in metrics["comparisons"] if c["kind"] == "condition"]
    assert (comp["a"], comp["b"]) == ("standard_rag", "closed_book")
    # accuracy 1/4 - 2/4; high-risk 2/4 - 1/4.
    assert comp["deltas"]["accuracy"]["value"] == pytest.approx(-0.25)
    assert comp["deltas"]["high_risk_error"]["value"] == pytest.approx(0.25)
    assert comp["deltas"]["accuracy"]["lo"] <= -0.25 <= comp["deltas"]["accuracy"]["hi"]


def test_budget_and_model_comparisons():
    budget4 = [
        r.model_copy(update={"samples_budget": 4, "vote_share": 1.0})
        for r in standard_rag_records()
    ]
    other_model = [r.model_copy(update={"model": "m2"}) for r in closed_book_records()]
    other_model = [r.model_copy(update={"condition": "standard_rag"}) for r in other_model]
    records = standard_rag_records() + budget4 + other_model
    metrics = metrics_from_records(records, {"tiny": tiny_corpus()}, bootstrap=FAST)
    kinds = {(c["kind"], c["a"], c["b"]) for c in metrics["comparisons"]}
    assert ("samples_budget", 4, 1) in kinds
    assert ("model", "m2", "m") in kinds
    (budget,) = [c for c in metrics["comparisons"] if c["kind"] == "samples_budget"]
    # Same answers; only the confidence source changes (vote share 1.0 > 0.95 on i3).
    assert budget["deltas"]["high_risk_error"]["value"] == 0.0
    assert budget["deltas"]["dangerous_overconfidence"]["value"] == pytest.approx(0.25)
    assert metrics["run"]["models"] == ["m", "m2"]


def test_worst_case_concentration_by_hand():
    records = standard_rag_records() + closed_book_records()
    frame = outcome_frame(records, {"tiny": tiny_corpus()})
    # high-risk errors per item: i1 1, i2 1, i3 1, i4 0 -> 3 in total.
    (conc,) = worst_case_concentration(frame, 0.2)
    assert (conc["n_items"], conc["n_worst_items"], conc["high_risk_errors"]) == (4, 1, 3)
    assert conc["share_in_worst"] == pytest.approx(1 / 3)
    assert conc["worst_items"][0]["item"] == "i1"  # ties broken by id
    (half,) = worst_case_concentration(frame, 0.5)
    assert half["share_in_worst"] == pytest.approx(2 / 3)
    categories = {c["category"]: c for c in conc["by_category"]}
    assert categories["x"]["high_risk_errors"] == 2
    assert categories["x"]["share_of_high_risk_errors"] == pytest.approx(2 / 3)
    assert categories["y"]["high_risk_error_rate"] == pytest.approx(1 / 4)


def test_concentration_without_errors_has_no_share():
    frame = outcome_frame([_response("i4", "C"), _response("i1", "A")], {"tiny": tiny_corpus()})
    (conc,) = worst_case_concentration(frame)
    assert conc["high_risk_errors"] == 0 and conc["share_in_worst"] is None


# ---------------------------------------------------------------------------- run dirs


def _write_run(tmp_path: Path, records, *, attribution=(), triage=None) -> Path:
    corpus = tiny_corpus()
    corpus_dir = write_corpus(tmp_path / "corpus", corpus.manifest, corpus.passages, corpus.items)
    run = tmp_path / "run"
    run.mkdir()
    manifest = RunManifest(
        name="unit-run",
        config_hash="0" * 64,
        created="2025-01-01T00:00:00+00:00",
        models={"m": ModelEntry(spec="m", hash="h")},
        corpora={
            "tiny": CorpusEntry(
                ref=str(corpus_dir), path=str(corpus_dir), content_hash=corpus.content_hash
            )
        },
    )
    (run / "manifest.json").write_text(manifest.model_dump_json())
    (run / "responses.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))
    if attribution:
        (run / "attribution.jsonl").write_text("".join(json.dumps(a) + "\n" for a in attribution))
    if triage is not None:
        (run / "detection").mkdir()
        (run / "detection" / "triage.json").write_text(json.dumps(triage))
    (run / "config.yaml").write_text(
        "bootstrap:\n  replicates: 150\n  seed: 4\n  cluster_by_evidence_id: false\n"
    )
    return run


def test_truncated_last_line_is_ignored_but_corruption_elsewhere_is_an_error(tmp_path):
    run = _write_run(tmp_path, standard_rag_records())
    path = run / "responses.jsonl"
    with path.open("a") as handle:
        handle.write('{"run": "r", "model": "m", "cond')  # a crash mid-write
    records, contents = load_responses(run)
    assert len(records) == 4
    assert contents.truncated_line == 5
    assert any("truncated last line" in note for note in load_run(run).notes)

    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(RunDirError, match=r"responses\.jsonl:2: corrupt line"):
        read_jsonl(path)


def test_invalid_record_names_file_and_line(tmp_path):
    run = _write_run(tmp_path, standard_rag_records())
    with (run / "responses.jsonl").open("a") as handle:
        handle.write('{"model": "m"}\n')
        handle.write(standard_rag_records()[0].model_dump_json() + "\n")
    with pytest.raises(RunDirError, match=r"responses\.jsonl:5: run: Field required"):
        load_responses(run)


def test_duplicated_responses_keep_the_last(tmp_path):
    records = standard_rag_records()
    again = records[0].model_copy(update={"chosen": "A"})
    run = _write_run(tmp_path, [*records, again])
    data = load_run(run)
    assert len(data.responses) == 4
    assert {r.item: r.chosen for r in data.responses}["i1"] == "A"
    assert any("duplicated" in note for note in data.notes)


def test_corpus_drift_is_refused(tmp_path):
    run = _write_run(tmp_path, standard_rag_records())
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["corpora"]["tiny"]["content_hash"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirError, match="content hash"):
        load_run(run)


def test_compute_metrics_from_run_dir_uses_run_config_and_counts_attribution(tmp_path):
    attribution = [
        {"model": "m", "condition": "standard_rag", "item": "i1", "samples_budget": 1,
         "severity": "high_risk", "cause": "contradicting_evidence", "step": 2, "node": "answer",
         "explanation": "e"},
        {"model": "m", "condition": "standard_rag", "item": "i3", "samples_budget": 1,
         "severity": "high_risk", "cause": "contradicting_evidence", "step": 1, "node": "answer",
         "explanation": "e"},
        {"model": "m", "condition": "closed_book", "item": "i2", "samples_budget": 1,
         "severity": "high_risk", "cause": "no_evidence", "step": None, "node": None,
         "explanation": "e"},
    ]  # fmt: skip
    run = _write_run(
        tmp_path, standard_rag_records() + closed_book_records(), attribution=attribution
    )
    metrics = compute_metrics(run)
    assert metrics["settings"]["bootstrap"]["replicates"] == 150
    assert metrics["run"]["name"] == "unit-run"
    assert _cell(metrics, "closed_book")["metrics"]["accuracy"]["value"] == 0.5
    counts = {(a["condition"], a["cause"]): a["count"] for a in metrics["attribution"]}
    assert counts == {
        ("standard_rag", "contradicting_evidence"): 2,
        ("closed_book", "no_evidence"): 1,
    }
    assert all(a["corpus"] == "tiny" for a in metrics["attribution"])
    json.dumps(metrics, allow_nan=False)  # strictly JSON-serializable


# ---------------------------------------------------------------------------- report

TRIAGE = [
    {
        "backbone": "m",
        "model_hash": "h",
        "label_source": "task",
        "target_recall": 0.95,
        "seed": 13,
        "n_records": 40,
        "split_sizes": {"train": 24, "val": 8, "test": 8},
        "class_counts": {},
        "rows": [
            {"method": "ecrt", "status": "ok", "threshold": 0.3, "val_recall": 1.0,
             "stage1": {"n": 8, "n_unsafe": 5, "u_recall": 0.8, "flag_rate": 0.625,
                        "s1_ba": 0.733, "auroc": 0.8},
             "stage2": {"n_gap": 3, "n_conflict": 2, "gap_recall": 0.667,
                        "contradiction_recall": 0.5, "s2_ba": 0.583},
             "delta_ba_vs_ecrt": 0.0},
            {"method": "perplexity", "status": "ok", "threshold": 1.2, "val_recall": 1.0,
             "stage1": {"n": 8, "n_unsafe": 5, "u_recall": 1.0, "flag_rate": 1.0,
                        "s1_ba": 0.5, "auroc": 0.55},
             "stage2": None, "delta_ba_vs_ecrt": -0.233},
            {"method": "ptrue", "status": "unavailable", "reason": "no ptrue pass"},
        ],
    }
]  # fmt: skip


def test_format_interval():
    assert format_interval({"value": 0.25, "lo": 0.0, "hi": 0.5}) == "25.0% [0.0, 50.0]"
    assert format_interval({"value": 5.0, "lo": 4.5, "hi": 6.25}, percent=False) == "5.0 [4.5, 6.2]"
    assert format_interval({"value": None, "lo": None, "hi": None}) == "–"
    assert format_interval({"value": 0.1, "lo": -0.05, "hi": 0.2}, signed=True) == (
        "+10.0 pp [-5.0, +20.0]"
    )


def test_condition_table_has_the_results_table_shape():
    records = standard_rag_records() + closed_book_records()
    metrics = metrics_from_records(records, {"tiny": tiny_corpus()}, bootstrap=FAST)
    (table,) = condition_tables(metrics)
    assert table.columns[2:] == (
        "Accuracy", "High-risk error", "Unsafe", "Contradiction", "Dangerous overconf.",
        "Latency (ms/response)", "ms/generated token",
    )  # fmt: skip
    rows = {row[0]: row for row in table.rows}
    assert list(rows) == ["Closed-book", "Standard RAG"]  # canonical condition order
    assert rows["Standard RAG"][2].startswith("25.0% [")
    assert rows["Standard RAG"][3].startswith("50.0% [")
    assert rows["Standard RAG"][7].startswith("250.0 [")
    assert rows["Standard RAG"][8].startswith("40.0 [")
    markdown = render_markdown(metrics)
    assert "| Standard RAG | 4 | 25.0% [" in markdown
    assert "Worst-case concentration — tiny" in markdown


def test_write_report_writes_every_file_from_the_run_dir(tmp_path):
    records = standard_rag_records() + closed_book_records()
    run = _write_run(tmp_path, records, triage=TRIAGE)
    files = write_report(run)
    for path in (files.metrics_json, files.report_md, files.conditions_csv, files.comparisons_csv,
                 files.triage_csv):  # fmt: skip
        assert path is not None and path.is_file() and path.stat().st_size > 0
    names = {p.name for p in files.plots}
    assert names == {
        "accuracy_vs_high_risk.png",
        "high_risk_by_category.png",
        "triage_operating_points.png",
    }  # one model, one budget: no scaling plot
    for plot in files.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_metrics(run) == files.metrics
    assert files.metrics["triage"][0]["backbone"] == "m"
    conditions = pd.read_csv(files.conditions_csv)
    assert len(conditions) == 2
    std = conditions.set_index("condition").loc["standard_rag"]
    assert std["high_risk_error"] == 0.5 and std["latency_ms"] == 250.0
    assert std["ms_per_generated_token"] == 40.0
    assert std["high_risk_error_lo"] <= 0.5 <= std["high_risk_error_hi"]
    report = files.report_md.read_text()
    assert "## Triage" in report and "| ecrt | 0.800 | 0.625 |" in report
    assert "unavailable: no ptrue pass" in report
    assert "plots/accuracy_vs_high_risk.png" in report
    # Regenerating is deterministic.
    assert write_report(run, plots=False).metrics == files.metrics


def test_scaling_plot_when_the_run_spans_budgets(tmp_path):
    records = standard_rag_records() + [
        r.model_copy(update={"samples_budget": 4}) for r in standard_rag_records()
    ]
    run = _write_run(tmp_path, records)
    files = write_report(run)
    assert "scaling.png" in {p.name for p in files.plots}
    assert files.triage_csv is None
    assert len(condition_tables(files.metrics)) == 2  # one table per budget


def test_report_cli_prints_tables_and_writes_files(tmp_path):
    from typer.testing import CliRunner

    from safescale.cli import app

    run = _write_run(tmp_path, standard_rag_records() + closed_book_records(), triage=TRIAGE)
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(app, ["report", str(run), "--replicates", "50", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "Standard RAG" in result.output and "Triage" in result.output
    assert (run / "report.md").is_file() and not (run / "plots").exists()
    assert read_metrics(run)["settings"]["bootstrap"]["replicates"] == 50
    missing = runner.invoke(app, ["report", str(tmp_path / "corpus")])
    assert missing.exit_code == 2
    assert "error: " in missing.output and "manifest.json: no such file" in missing.output


def test_unparsed_answers_do_not_count_as_anything_but_wrong():
    frame = outcome_frame([_response("i1", "")], {"tiny": tiny_corpus()})
    row = frame.iloc[0]
    assert (row["correct"], row["high_risk_error"], row["unsafe_answer"]) == (0, 0, 0)
    assert np.isnan(row["confidence"])


def test_metrics_config_takes_external_condition_names_but_not_non_slugs():
    # which names exist is the experiment config's check (it knows its conditions)
    pairs = (("hyde", "standard_rag"),)
    assert MetricsConfig(comparisons=pairs).comparisons == pairs
    with pytest.raises(ValueError, match="condition name 'open book' is not a slug"):
        MetricsConfig(comparisons=(("clean_evidence", "open book"),))
    with pytest.raises(ValueError, match="compares a condition with itself"):
        MetricsConfig(comparisons=(("hyde", "hyde"),))


# ---------------------------------------------------------------- causal reliance


def _masked(pid, *, flipped, cited=False, weaker=False, kl=0.1):
    return PassageMasking(
        passage=pid, cited=cited, weaker=weaker, span=(1, 5), kl=kl, flipped=flipped,
        chosen_after="B" if flipped else "A",
    )  # fmt: skip


def _reliance(item, *, evidence_flip, passages=(), status="ok", kl=0.5, reason=None):
    return RelianceRecord(
        run="r",
        model="m",
        condition="standard_rag",
        item=item,
        formulation="letter",
        mode="all_later",
        status=status,
        reason=reason,
        tolerance=1e-3,
        chosen="A",
        evidence=None
        if status != "ok"
        else PassageMasking(span=(1, 9), kl=kl, flipped=evidence_flip, chosen_after="A"),
        passages=list(passages),
    )


def _reliance_metrics(reliance):
    records = [_response(i, "A", evidence=["p1"]) for i in ("i1", "i2", "i3", "i4")]
    return metrics_from_records(records, {"tiny": tiny_corpus()}, bootstrap=FAST,
                                reliance=reliance)  # fmt: skip


def test_shares_equal_hand_counts():
    reliance = [
        # depends on the evidence and on its cited passage, not on the weaker one
        _reliance("i1", evidence_flip=True, kl=1.0, passages=[
            _masked("p1", flipped=True, cited=True), _masked("p2", flipped=False, weaker=True)]),
        # depends on the evidence via the weaker passage only
        _reliance("i2", evidence_flip=True, kl=0.5, passages=[
            _masked("p1", flipped=False, cited=True), _masked("p2", flipped=True, weaker=True)]),
        # does not depend; no cited or weaker passage
        _reliance("i3", evidence_flip=False, kl=0.0, passages=[_masked("p1", flipped=False)]),
        # excluded: the re-read did not reproduce the recorded scores
        _reliance("i4", evidence_flip=False, status="mismatch", reason="differs"),
    ]  # fmt: skip
    (cell,) = _reliance_metrics(reliance)["reliance"]
    assert (cell["condition"], cell["n_measured"], cell["n_mismatch"], cell["n_skipped"]) == (
        "standard_rag", 3, 1, 0)  # fmt: skip
    assert cell["depends_on_evidence"]["value"] == pytest.approx(2 / 3)
    assert cell["depends_on_evidence"]["n"] == 3
    assert cell["n_with_cited"] == 2 and cell["depends_on_cited"]["value"] == pytest.approx(0.5)
    assert cell["n_with_weaker"] == 2 and cell["depends_on_weaker"]["value"] == pytest.approx(0.5)
    assert cell["mean_evidence_kl"]["value"] == pytest.approx(0.5)
    lo, hi = cell["depends_on_evidence"]["lo"], cell["depends_on_evidence"]["hi"]
    assert 0.0 <= lo <= 2 / 3 <= hi <= 1.0
    assert cell["verdict"].startswith("2 of 3 answers change")


def test_plain_verdict_when_nothing_depends_on_the_evidence():
    reliance = [
        _reliance(i, evidence_flip=False, kl=0.01, passages=[_masked("p1", flipped=False)])
        for i in ("i1", "i2")
    ] + [_reliance("i3", evidence_flip=False, status="skipped", reason="letter_cyclic")]
    (cell,) = _reliance_metrics(reliance)["reliance"]
    assert cell["depends_on_evidence"]["value"] == 0.0
    assert cell["depends_on_cited"] is None and cell["depends_on_weaker"] is None
    assert cell["skip_reasons"] == {"letter_cyclic": 1}
    assert "do not depend on the evidence" in cell["verdict"]


def test_no_reliance_records_no_section():
    assert _reliance_metrics([])["reliance"] == []


def test_cited_and_weaker_definitions():
    from safescale.corpora import Grade, Passage, Source
    from safescale.corpora.schema import Status
    from safescale.experiments.reliance import cited_passages, weaker_passages

    corpus = tiny_corpus()
    item = corpus.item("i2")  # p1 supports B, p2 supports A

    def passage(pid, level, status=Status.CURRENT):
        grade = Grade(system="g", raw=str(level), level=level)
        source = Source(org="o", title="t")
        return Passage(id=pid, text="t", source=source, topic="x", grade=grade, status=status)

    p1, p2 = passage("p1", 1), passage("p2", 2)
    # no citations: the supporting passages of the chosen option, strongest grade first
    assert cited_passages(_response("i2", "A", evidence=["p1", "p2"]), item, [p1, p2]) == (
        ["p2"], "supporting_stance")  # fmt: skip
    assert cited_passages(_response("i2", "C", evidence=["p1"]), item, [p1]) == ([], "none")
    # the response's own citations win
    cited = _response("i2", "A", evidence=["p1", "p2"], cited=["p1"])
    assert cited_passages(cited, item, [p1, p2]) == (["p1"], "response_citations")
    assert weaker_passages([p1, p2]) == ["p2"]
    old = passage("p3", 1, Status.SUPERSEDED)
    assert weaker_passages([p1, old]) == ["p3"]
    assert weaker_passages([p2]) == []


# ---------------------------------------------------------------------------- typed sections


def _stored(metrics) -> str:
    return json.dumps(metrics, indent=2, allow_nan=False) + "\n"


def _assert_round_trips(metrics) -> MetricsReport:
    """The producer's structure read through the typed sections and dumped again is the
    same ``metrics.json``, byte for byte."""
    text = _stored(metrics)
    report = MetricsReport.model_validate(json.loads(text))
    assert _stored(report.to_json()) == text
    return report


def test_metrics_round_trip_through_the_typed_sections(tmp_path):
    attribution = [
        {"model": "m", "condition": "standard_rag", "item": "i1", "samples_budget": 1,
         "severity": "high_risk", "cause": "contradicting_evidence", "step": 2, "node": "answer",
         "explanation": "e"},
    ]  # fmt: skip
    budget4 = [
        r.model_copy(update={"samples_budget": 4, "vote_share": 1.0})
        for r in standard_rag_records()
    ]
    other = [r.model_copy(update={"model": "m2"}) for r in standard_rag_records()]
    run = _write_run(
        tmp_path,
        standard_rag_records() + closed_book_records() + budget4 + other,
        attribution=attribution,
        triage=TRIAGE,
    )
    (run / "config.yaml").write_text(
        "bootstrap:\n  replicates: 150\n  seed: 4\n  cluster_by_evidence_id: false\n"
        "metrics:\n  compare_budgets: true\n  compare_models: true\n"
    )
    metrics = compute_metrics(run)
    report = _assert_round_trips(metrics)
    # every section the producer wrote is typed and read by attribute
    assert {c.kind for c in report.comparisons} == {"condition", "samples_budget", "model"}
    assert report.attribution[0].cause == "contradicting_evidence"
    assert report.triage is not None and report.triage[0].backbone == "m"
    assert report.scaling.axes and report.validity and report.concentration
    cell = next(c for c in report.cells if c.condition == "closed_book")
    assert cell.metrics["accuracy"].value == 0.5
    assert report.run.models == ["m", "m2"]


def test_reliance_and_unlabeled_rates_round_trip():
    reliance = [
        _reliance("i1", evidence_flip=True, passages=[_masked("p1", flipped=True, cited=True)]),
        _reliance("i2", evidence_flip=False),
        _reliance("i3", evidence_flip=False, status="skipped", reason="no evidence"),
    ]
    report = _assert_round_trips(_reliance_metrics(reliance))
    (row,) = report.reliance
    assert row.n_measured == 2 and row.depends_on_cited is not None
    assert row.depends_on_weaker is None and "depends_on_weaker" in row.model_fields_set
    metrics = metrics_from_records(standard_rag_records(), {"tiny": tiny_corpus()}, bootstrap=FAST)
    report = _assert_round_trips(mark_not_labeled({**metrics, "labels": {"tiny": {
        "high_risk": "unlabeled", "unsafe": "unlabeled"}}}))  # fmt: skip
    estimate = report.cells[0].metrics["high_risk_error"]
    assert estimate.not_labeled and estimate.value is None


def test_a_file_without_the_later_sections_reads_with_empty_ones():
    metrics = metrics_from_records(standard_rag_records(), {"tiny": tiny_corpus()}, bootstrap=FAST)
    early = {k: metrics[k] for k in ("schema_version", "run", "settings", "definitions", "cells")}
    report = MetricsReport.model_validate(early)
    assert report.scaling.curves == [] and report.reliance == [] and report.triage is None
    assert report.to_json() == early  # nothing is added when dumped


def test_a_key_the_sections_do_not_know_is_refused(tmp_path):
    metrics = metrics_from_records(standard_rag_records(), {"tiny": tiny_corpus()}, bootstrap=FAST)
    metrics["cells"][0]["accuracy_typo"] = 1
    with pytest.raises(ValueError, match="accuracy_typo"):
        MetricsReport.model_validate(metrics)
