"""The context-budget and retrieval-depth axes on the real runner with a tiny random
Llama: each value is a cell recorded in every record, part of the resume key and of
the checkpoint thread; the scaling analysis, report, plot and viewer read the run; and
a run directory written before the axes were recorded still reads and resumes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from safescale.experiments.config import parse_config
from safescale.models.tiny import save_tiny_model
from safescale.rundir import RunDir, load_attribution, load_responses, load_steps


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_swept_budget_and_depth_are_cells_and_the_analysis_reads_them(tiny_dir, tmp_path):
    from safescale.experiments import run_experiment, write_report
    from safescale.models import load_model
    from safescale.viewer.data import load_view_data

    out = tmp_path / "scale"
    config = parse_config(f"""
name: scale
models:
  - name: tiny
    spec: {tiny_dir}
corpora: [radiology-guidelines]
conditions: [closed_book, standard_rag, max_context]
answer: {{formulation: cloze_pmi}}
context_budget: [max, 512]
retrieval: {{k: [2, 1]}}
bootstrap: {{replicates: 100}}
limit: 3
""").with_overrides(output_dir=out)
    summary = run_experiment(config, progress=False)
    # closed-book once; standard RAG at k 2 and 1; max-context at the maximum and 512
    assert summary.answered == 3 * (1 + 2 + 2)
    responses = load_responses(out)[0]
    cells = {(r.condition, r.context_budget, r.retrieval_k) for r in responses}
    assert cells == {
        ("closed_book", None, 2),
        ("standard_rag", None, 2),
        ("standard_rag", None, 1),
        ("max_context", None, 2),
        ("max_context", 512, 2),
    }
    assert len({r.key for r in responses}) == len(responses) == summary.answered
    # steps and attributions carry their response's values
    keys = {r.key for r in responses}
    steps = load_steps(out)
    assert steps and {s.key for s in steps} == keys
    assert {a.key for a in load_attribution(out)} <= keys
    for s in steps:
        if s.node == "retrieve":
            assert len(s.retrieved) <= s.retrieval_k
        if s.node == "pack_context":
            assert s.detail["budget"] == (s.context_budget or 8192)
    # the checkpoint threads of the swept axes are distinct
    conn = sqlite3.connect(out / "checkpoints.sqlite")
    threads = {t for (t,) in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    conn.close()
    assert any(t.endswith("|cmax|k1") for t in threads)
    assert any("max_context" in t and t.endswith("|c512|k2") for t in threads)
    # the manifest records the parameter count (the model-size axis)
    entry = json.loads((out / "manifest.json").read_text())["models"]["tiny"]
    assert entry["parameters"] == load_model(str(tiny_dir)).n_parameters > 0
    # a rerun does nothing: the values are part of the done-keys
    assert run_experiment(config, progress=False).answered == 0

    files = write_report(out, plots=True)
    scaling = files.metrics["scaling"]
    curves = {c["axis"]: c for c in scaling["curves"]}
    assert set(curves) == {"context_budget", "retrieval_k"}
    budget, depth = curves["context_budget"], curves["retrieval_k"]
    assert (budget["condition"], depth["condition"]) == ("max_context", "standard_rag")
    assert [p["value"] for p in budget["points"]] == ["512", "max"]
    assert [p["amount"] for p in budget["points"]] == [512.0, 8192.0]  # the tiny model's length
    assert [p["value"] for p in depth["points"]] == ["1", "2"]
    for curve in (budget, depth):
        # 3 items in fewer than 5 evidence groups: slopes, but no interval and no verdict
        assert curve["n_items"] == 3 and curve["n_units"] < 5 and curve["too_few_units"]
        for metric in ("accuracy", "high_risk_error"):
            slope = curve["slopes"][metric]
            assert slope["n"] == 6 and slope["value"] is not None
            assert slope["lo"] is None and slope["hi"] is None
        test = curve["differences"]["high_risk_error"]
        assert test["verdict_code"] in {"too_few", "no_change"}
        if test["verdict_code"] == "too_few":
            assert "too few to measure" in test["verdict"]
        assert "scale differently" not in test["verdict"]
    axes = {a["axis"]: a for a in scaling["axes"]}
    assert axes["model_size"]["reason"] == "the run has one model (tiny): no slope"
    assert {n["condition"] for n in axes["retrieval_k"]["not_varied"]} == {
        "closed_book", "max_context",
    }  # fmt: skip
    text = files.report_md.read_text()
    assert "### Scaling — context budget (per doubling)" in text
    assert "### Scaling — retrieval depth (per doubling)" in text
    assert "context budgets: 512, max; retrieval depths: k 1, k 2" in text
    assert (out / "plots" / "scaling_axes.png").is_file()
    # the viewer shows the section and each response's budget and depth
    view = load_view_data(out)
    assert view.index["metrics"]["scaling"]["curves"]
    assert view.index["ks"] == [1, 2] and view.index["contexts"] == ["512", "max"]
    assert {(r["condition"], r["context"], r["k"]) for r in view.index["responses"]} == {
        (c, "max" if b is None else str(b), k) for c, b, k in cells
    }


def _strip_axes(path: Path, versions: dict[str, int]) -> int:
    """Rewrite a JSONL file as safescale wrote it before the two axes were recorded."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        row.pop("context_budget")
        row.pop("retrieval_k")
        row["schema_version"] = versions[path.name]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def test_a_run_made_before_the_axes_were_recorded_reads_and_resumes(tiny_dir, tmp_path):
    from safescale.experiments import run_experiment
    from safescale.statistics.metrics import compute_metrics

    out = tmp_path / "legacy"
    text = f"""
name: legacy
models:
  - name: tiny
    spec: {tiny_dir}
corpora: [radiology-guidelines]
conditions: [closed_book, standard_rag]
answer: {{formulation: cloze_pmi}}
context_budget: 1024
retrieval: {{k: 3}}
bootstrap: {{replicates: 50}}
limit: 2
"""
    config = parse_config(text).with_overrides(output_dir=out)
    assert run_experiment(config, progress=False).answered == 4
    versions = {"responses.jsonl": 3, "steps.jsonl": 2, "attribution.jsonl": 2}
    counts = {n: _strip_axes(out / n, versions) for n in versions if (out / n).is_file()}
    # the config.yaml of that time held scalars
    (out / "config.yaml").write_text(text)
    reader = RunDir(out)
    assert {r.schema_version for r in reader.responses()} == {4}
    assert {(k[5], k[6]) for k in reader.response_keys()} == {(1024, 3)}
    assert {(s.context_budget, s.retrieval_k) for s in reader.steps()} == {(1024, 3)}
    # same config hash, nothing redone, no step row dropped as an orphan
    again = run_experiment(config, progress=False)
    assert (again.answered, again.skipped) == (0, 4)
    for name, n in counts.items():
        assert sum(1 for line in (out / name).read_text().splitlines() if line.strip()) == n
    metrics = compute_metrics(out)
    assert {(c["context_budget"], c["retrieval_k"]) for c in metrics["cells"]} == {(1024, 3)}
    # a limit that grows extends the old run with records that carry the values
    bigger = config.with_overrides(limit=3)
    assert run_experiment(bigger, progress=False).answered == 2
    assert {(k[5], k[6]) for k in reader.response_keys()} == {(1024, 3)}
    assert len(reader.response_keys()) == 6
