"""What a report compares against, on real runs of the tiny random Llama: the
majority-gold reference (a yes/no/maybe fixture whose gold is mostly "yes"), always
defer on gap items, the ``auto`` calibration interval beside the study's estimate, the
default comparisons, and clean evidence -> standard RAG with the gold passage present
("distractor passages") in metrics, attribution, report and viewer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from safescale.corpora import load_corpus
from safescale.experiments.config import parse_config
from safescale.rundir import RunDir
from safescale.statistics.power import required_items

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pubmedqa-like"

PUBMEDQA_LIKE = f"""
name: pubmedqa-like
corpora: [{FIXTURE}]
conditions: [closed_book, clean_evidence, standard_rag]
retrieval: {{k: 3}}
answer: {{formulation: auto, calibration_items: 8}}
bootstrap: {{replicates: 200}}
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from safescale.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _run(tiny_dir: Path, out: Path, text: str) -> dict:
    from safescale.experiments import run_experiment, write_report

    config = parse_config(text + f"models: [{{name: tiny, spec: {tiny_dir}}}]\n")
    run_experiment(config.with_overrides(output_dir=out), progress=False)
    return write_report(out, plots=False).metrics


@pytest.fixture(scope="module")
def pubmedqa_run(tmp_path_factory, tiny_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pq") / "run"
    return out, _run(tiny_dir, out, PUBMEDQA_LIKE)


def _cell_accuracy(metrics: dict, condition: str) -> dict:
    (cell,) = [c for c in metrics["cells"] if c["condition"] == condition]
    return cell["metrics"]["accuracy"]


def test_majority_gold_is_the_reference_and_the_verdict_says_when_all_are_below(pubmedqa_run):
    run_dir, metrics = pubmedqa_run
    corpus = load_corpus(FIXTURE)
    studied = sorted({r.item for r in RunDir(run_dir).responses()})
    golds = Counter(corpus.item(i).options[corpus.item(i).gold] for i in studied)
    (entry,) = metrics["validity"]
    major = entry["references"]["majority_gold"]
    assert (major["by"], major["answer"]) == ("option text", golds.most_common(1)[0][0])
    assert major["answer"] == "yes" and major["hits"] == golds["yes"]
    assert major["n_items"] == len(studied)
    assert major["estimate"]["value"] == pytest.approx(golds["yes"] / len(studied))
    assert major["estimate"]["lo"] <= major["estimate"]["value"] <= major["estimate"]["hi"]
    rows = {r["condition"]: r for r in entry["references"]["conditions"]}
    assert set(rows) == {"closed_book", "clean_evidence", "standard_rag"}
    for condition, row in rows.items():
        accuracy = _cell_accuracy(metrics, condition)["value"]
        assert row["accuracy"]["value"] == pytest.approx(accuracy)
        assert row["difference"]["value"] == pytest.approx(accuracy - major["estimate"]["value"])
        lo, hi = row["difference"]["lo"], row["difference"]["hi"]
        expected = "below" if hi < 0 else "above" if lo > 0 else "not distinguishable"
        assert row["verdict"] == expected
    responses = RunDir(run_dir).responses()
    for condition, row in rows.items():
        said_yes = sum(
            corpus.item(r.item).options.get(r.chosen) == "yes"
            for r in responses
            if r.condition == condition
        )
        assert row["same_as_constant"] == said_yes
    all_below = all(r["accuracy"]["value"] < major["estimate"]["value"] for r in rows.values())
    sentences = [v for v in entry["verdicts"] if "every condition is below always answering" in v]
    assert all_below  # a random 3-option reader does not reach 60 % "yes"
    assert len(sentences) == 1 and "'yes'" in sentences[0]
    assert not [v for v in entry["verdicts"] if "no condition beats" in v]
    report = (run_dir / "report.md").read_text()
    assert sentences[0] in report
    assert "What a constant answer scores" in report
    assert entry["references"]["always_defer"] is None  # no gap items here


def test_the_calibration_interval_sits_beside_the_study_estimate(pubmedqa_run):
    run_dir, metrics = pubmedqa_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    record = manifest["formulations"]["tiny"]["pubmedqa-like"]
    chosen = record["chosen"]
    candidate = record["candidates"][chosen]
    estimate = candidate["accuracy_clean_evidence_estimate"]
    assert estimate["value"] == pytest.approx(candidate["accuracy_clean_evidence"])
    assert estimate["n"] == len(record["calibration_items"]) == candidate["n"]
    assert estimate["lo"] <= estimate["value"] <= estimate["hi"]
    # how sure the choice was, in the manifest
    selection = record["selection"]
    assert selection["confidence"] in {"firm", "uncertain"}
    assert selection["summary"].startswith(f"choice {selection['confidence']}: {chosen} chosen")
    cross = selection["cross_fit"]
    assert cross["folds"] == len(cross["picks"]) >= 2
    assert cross["agree"] == sum(p == chosen for p in cross["picks"])
    assert 0 <= cross["accuracy"]["value"] <= 1
    runner = record["candidates"][selection["runner_up"]]
    margin = selection["margin"]["value"]
    assert margin == pytest.approx(
        candidate["accuracy_clean_evidence"] - runner["accuracy_clean_evidence"]
    )
    delta, disc = abs(margin), selection["discordance"]
    expected = required_items(delta, disc) if 0 < delta <= disc else None
    assert selection["items_to_separate"] == expected
    firm = selection["margin"]["lo"] > 0 and cross["agree"] == cross["folds"]
    assert selection["confidence"] == ("firm" if firm else "uncertain")
    # the validity section puts both intervals side by side and flags one outside
    (entry,) = metrics["validity"]
    check = entry["calibration_check"]
    assert check["formulation"] == chosen and check["calibration"] == estimate
    study = _cell_accuracy(metrics, "clean_evidence")
    assert check["study"]["value"] == pytest.approx(study["value"])
    outside = (
        "below"
        if study["value"] < estimate["lo"]
        else "above"
        if study["value"] > estimate["hi"]
        else None
    )
    assert check["outside"] == outside
    flagged = [v for v in entry["verdicts"] if "the calibration interval of" in v]
    assert len(flagged) == (outside is not None)
    report = (run_dir / "report.md").read_text()
    assert "Calibration vs study:" in report and selection["summary"][1:40] in report


def test_default_comparisons_hold_every_condition_vs_closed_book_and_clean_vs_rag(pubmedqa_run):
    _, metrics = pubmedqa_run
    pairs = {(c["a"], c["b"]) for c in metrics["comparisons"] if c["kind"] == "condition"}
    assert pairs == {
        ("clean_evidence", "closed_book"),
        ("standard_rag", "closed_book"),
        ("clean_evidence", "standard_rag"),
    }


def test_distractor_passages_are_named_with_item_ids(pubmedqa_run):
    run_dir, metrics = pubmedqa_run
    reader = RunDir(run_dir)
    corpus = load_corpus(FIXTURE)
    by = {(r.condition, r.item): r for r in reader.responses()}
    items = sorted({i for c, i in by if c == "clean_evidence"})
    present = [i for i in items if set(corpus.item(i).evidence.clean) <= set(
        by["standard_rag", i].evidence_ids)]  # fmt: skip
    expected = {"right_to_wrong": [], "wrong_to_right": [], "wrong_to_other": []}
    for i in present:
        gold, was, now = corpus.item(i).gold, by["clean_evidence", i].chosen, by[
            "standard_rag", i].chosen  # fmt: skip
        if was != now:
            kind = "right_to_wrong" if was == gold else "wrong_to_right" if now == gold else (
                "wrong_to_other")  # fmt: skip
            expected[kind].append(i)
    (entry,) = metrics["distractors"]
    assert entry["condition"] == "standard_rag" and entry["n_items"] == len(items)
    assert entry["n_gold_present"] == len(present) > 0
    assert entry["items"] == expected
    assert entry["counts"] == {k: len(v) for k, v in expected.items()}
    assert sum(f["n"] for f in entry["flows"]) == entry["n_changed"]
    assert expected["right_to_wrong"], "the fixture run should show distractor flips"
    # the attribution rows say how many of their failures the distractors caused
    attributed = {
        (a.condition, a.item): a for a in reader.attribution() if a.condition == "standard_rag"
    }
    causes = Counter(
        attributed["standard_rag", i].cause
        for i in expected["right_to_wrong"]
        if ("standard_rag", i) in attributed
    )
    assert entry["attributed"] == dict(causes)
    rows = [r for r in metrics["attribution"] if r["condition"] == "standard_rag"]
    assert {r["cause"]: r["distractor_passages"] for r in rows if r["distractor_passages"]} == (
        dict(causes)
    )
    report = (run_dir / "report.md").read_text()
    assert "Distractor passages changed the answer" in report
    assert expected["right_to_wrong"][0] in report
    if causes:
        assert "of which distractor passages" in report
    # the viewer shows the same section with the item ids
    from safescale.viewer.data import load_view_data

    assert load_view_data(run_dir).index["metrics"]["distractors"] == metrics["distractors"]


def test_always_defer_is_the_reference_on_gap_items(tmp_path, tiny_dir):
    text = """
name: gap-reference
corpora: [retina-rules]
conditions: [closed_book, clean_evidence]
answer: {formulation: cloze_pmi}
bootstrap: {replicates: 100}
item_filter: {tasks: [gap, align]}
limit: 12
"""
    metrics = _run(tiny_dir, tmp_path / "run", text)
    corpus = load_corpus("retina-rules")
    studied = sorted({r.item for r in RunDir(tmp_path / "run").responses()})
    gap = [i for i in studied if str(corpus.item(i).task) == "gap"]
    assert gap and len(gap) < len(studied)
    (entry,) = metrics["validity"]
    defer = entry["references"]["always_defer"]
    assert defer["n_items"] == len(gap)
    hits = sum(corpus.item(i).gold == corpus.item(i).labels.defer for i in gap)
    assert defer["estimate"]["value"] == pytest.approx(hits / len(gap))
    rows = {r["condition"]: r for r in defer["conditions"]}
    responses = RunDir(tmp_path / "run").responses()
    for condition, row in rows.items():
        own = [r for r in responses if r.condition == condition and r.item in gap]
        right = sum(r.chosen == corpus.item(r.item).gold for r in own)
        assert row["n"] == len(own) and row["accuracy"]["value"] == pytest.approx(right / len(own))
    value = defer["estimate"]["value"]
    accuracies = [r["accuracy"]["value"] for r in rows.values()]
    head = (
        "every condition is below"
        if all(a < value for a in accuracies)
        else "no condition beats"
        if all(a <= value for a in accuracies)
        else None
    )
    sentences = [v for v in entry["verdicts"] if "gap items: " in v]
    assert len(sentences) == (head is not None)
    if head is not None:
        assert f"gap items: {head} always deferring" in sentences[0]


CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None
)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)")
def test_the_viewer_lists_the_distractor_items_as_links(pubmedqa_run, tmp_path):
    from safescale.viewer import write_view

    run_dir, metrics = pubmedqa_run
    page = write_view(run_dir)
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    section = re.search(r'<section class="card" id="distractors">.*?</section>', dom, re.S)
    assert section is not None, dom[:500]
    (entry,) = metrics["distractors"]
    for item in entry["items"]["right_to_wrong"]:
        assert f'<a href="#item={item}">{item}</a>' in section.group(0)
