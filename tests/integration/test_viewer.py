"""The run viewer on a real run of the tiny model over both bundled corpora and every
condition, rendered by a real headless Chromium (``--dump-dom`` on the file:// page,
and on the loopback server for ``--serve``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from safescale.experiments.config import parse_config
from safescale.rundir import load_responses, load_steps

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None
)
ALL_CONDITIONS = [
    "closed_book",
    "clean_evidence",
    "conflict_evidence",
    "standard_rag",
    "agentic_rag",
    "max_context",
]
RUN = """
name: viewer
corpora: [radiology-guidelines, retina-rules]
retrieval: {k: 3}
agentic: {max_steps: 2}
context_budget: 1024
bootstrap: {replicates: 100}
limit: 2
"""


def make_tiny_run(out: Path, tiny_lm, config_text: str = RUN, *, report: bool = True) -> Path:
    """Run the real runner on the tiny model (saved as a local model directory)."""
    from safescale.experiments import run_experiment, write_report

    model_dir = out.parent / "tiny-model"
    if not model_dir.is_dir():
        tiny_lm.model.save_pretrained(str(model_dir))
        tiny_lm.tokenizer.save_pretrained(str(model_dir))
    text = config_text + f"models: [{{name: tiny, spec: {model_dir}}}]\n"
    config = parse_config(text).with_overrides(output_dir=out)
    run_experiment(config, progress=False)
    if report:
        write_report(out)
    return out


class _Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: _Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Node] = []
        self.text_parts: list[str] = []

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[_Node]:
        out = []
        for node in self.iter():
            if tag is not None and node.tag != tag:
                continue
            if all(
                (value in node.attrs.get("class", "").split())
                if key == "class_"
                else node.attrs.get(key) == value
                for key, value in attrs.items()
            ):
                out.append(node)
        return out

    def find(self, tag: str | None = None, **attrs: str) -> _Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}> in the rendered DOM"
        return found[0]

    @property
    def text(self) -> str:
        return "".join(part for node in self.iter() for part in node.text_parts)


class _Tree(HTMLParser):
    VOID = frozenset(
        {"meta", "link", "img", "br", "hr", "input", "col", "source", "wbr", "area", "base"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.root = _Node("#root", {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.text_parts.append(data)


def render(url: str, tmp_path: Path) -> _Node:
    """The DOM of ``url`` after its scripts ran, from a headless Chromium."""
    profile = tmp_path / f"profile-{os.urandom(4).hex()}"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parser = _Tree()
    parser.feed(result.stdout)
    body = parser.root.find("body")
    assert body.attrs.get("data-ready") == "1", f"page did not finish rendering: {body.text[:500]}"
    return parser.root


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium (apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_lm) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("viewer") / "run", tiny_lm)


@pytest.fixture(scope="module")
def page(run_dir) -> Path:
    from typer.testing import CliRunner

    from safescale.cli import app

    result = CliRunner().invoke(app, ["view", str(run_dir)])
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path == run_dir / "view" / "index.html"
    return path


def test_the_stored_metrics_read_through_the_typed_sections_and_reach_the_page(run_dir):
    from safescale.rundir import MetricsReport
    from safescale.viewer.data import load_view_data

    text = (run_dir / "metrics.json").read_text()
    stored = json.loads(text)
    report = MetricsReport.model_validate(stored)
    assert json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n" == text
    # the viewer's metrics are the stored sections, unchanged
    viewed = load_view_data(run_dir).index["metrics"]
    assert viewed == {
        **{k: stored[k] for k in ("definitions", "settings", "cells", "comparisons")},
        **{k: stored[k] for k in ("attribution", "distractors", "validity", "triage")},
        "scaling": stored["scaling"] or None,
    }
    assert viewed["cells"] and viewed["scaling"]["axes"]


def test_the_page_is_self_contained(page):
    html = page.read_text(encoding="utf-8")
    assert "<script src" not in html and "<link" not in html
    assert "http://" not in html.split('id="view-data"')[0]
    assert "https://" not in html.replace("http://www.w3.org", "")


@needs_chromium
def test_overview_shows_the_condition_tables(page, run_dir, tmp_path):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dom = render(page.as_uri(), tmp_path)
    tables = dom.find_all("table", class_="cond-table")
    assert {(t.attrs["data-model"], t.attrs["data-corpus"]) for t in tables} == {
        ("tiny", "radiology-guidelines"),
        ("tiny", "retina-rules"),
    }
    for table in tables:
        rows = table.find("tbody").find_all("tr")
        assert [r.attrs["data-condition"] for r in rows] == ALL_CONDITIONS
        for row in rows:
            cell = next(
                c
                for c in metrics["cells"]
                if c["corpus"] == table.attrs["data-corpus"]
                and c["condition"] == row.attrs["data-condition"]
            )
            accuracy = row.find("a", **{"data-metric": "accuracy"})
            assert accuracy.text.startswith(f"{100 * cell['metrics']['accuracy']['value']:.1f}%")
            assert "outcome=correct" in accuracy.attrs["href"]
    assert dom.find(id="validity")
    assert dom.find(id="attribution")


@needs_chromium
@pytest.mark.parametrize("metric", ["accuracy", "unsafe_answer", "contradiction"])
def test_a_metric_links_to_the_items_it_counts(page, run_dir, tmp_path, metric):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    overview = render(page.as_uri(), tmp_path)
    for condition in ("clean_evidence", "conflict_evidence"):
        cell = next(
            c
            for c in metrics["cells"]
            if c["corpus"] == "retina-rules" and c["condition"] == condition
        )
        table = overview.find("table", class_="cond-table", **{"data-corpus": "retina-rules"})
        row = table.find("tr", **{"data-condition": condition})
        href = row.find("a", **{"data-metric": metric}).attrs["href"]
        listed = render(page.as_uri() + href, tmp_path).find(id="item-count")
        assert int(listed.attrs["data-count"]) == round(
            cell["metrics"][metric]["value"] * cell["n"]
        )


@needs_chromium
def test_item_list_and_filters_narrow_it(page, run_dir, tmp_path):
    responses, _ = load_responses(run_dir)
    items = sorted({r.item for r in responses})
    dom = render(page.as_uri() + "#view=items", tmp_path)
    rows = dom.find(id="item-list").find_all("tr", class_="item-row")
    assert sorted(r.attrs["data-item"] for r in rows) == items
    assert dom.find(id="item-count").attrs["data-count"] == str(len(items))

    retina = sorted(i for i in items if i.startswith("rr-"))
    dom = render(page.as_uri() + "#view=items&corpus=retina-rules", tmp_path)
    rows = dom.find(id="item-list").find_all("tr", class_="item-row")
    assert sorted(r.attrs["data-item"] for r in rows) == retina
    assert 0 < len(retina) < len(items)

    correct = sorted(
        {r.item for r in responses if r.condition == "standard_rag" and _is_correct(run_dir, r)}
    )
    dom = render(page.as_uri() + "#view=items&condition=standard_rag&outcome=correct", tmp_path)
    rows = dom.find(id="item-list").find_all("tr", class_="item-row")
    assert sorted(r.attrs["data-item"] for r in rows) == correct


def _is_correct(run_dir: Path, record) -> bool:
    from safescale.rundir import load_run_corpora

    for corpus in load_run_corpora(run_dir).values():
        if record.item in corpus.items_by_id:
            return record.chosen == corpus.item(record.item).gold
    raise AssertionError(record.item)


@needs_chromium
def test_item_page_shows_every_conditions_steps(page, run_dir, tmp_path):
    steps = load_steps(run_dir)
    item = next(s.item for s in steps if s.condition == "agentic_rag")
    dom = render(page.as_uri() + f"#item={item}&condition=agentic_rag", tmp_path)
    assert dom.find(id="item-page").attrs["data-item"] == item
    columns = dom.find(id="columns").find_all("section", class_="cond-col")
    assert [c.attrs["data-condition"] for c in columns] == ALL_CONDITIONS
    for column in columns:
        condition = column.attrs["data-condition"]
        expected = [
            (s.step, s.node)
            for s in sorted(steps, key=lambda s: s.step)
            if s.item == item and s.condition == condition
        ]
        shown = [
            (int(s.attrs["data-step"]), s.attrs["data-node"])
            for s in column.find_all("div", class_="step")
        ]
        assert shown == expected, condition
        assert column.find_all("details", class_="prompt"), condition
    assert "focus" in dom.find(id="col-agentic_rag").attrs["class"]
    # the first failing step named by the attribution is highlighted
    from safescale.rundir import load_attribution

    attributed = Counter(
        a.condition for a in load_attribution(run_dir) if a.item == item and a.step is not None
    )
    for column in columns:
        failing = column.find_all("div", class_="failing")
        assert len(failing) == (1 if attributed[column.attrs["data-condition"]] else 0)


@needs_chromium
def test_served_page_loads_item_details_on_demand(run_dir, tmp_path):
    from safescale.viewer import ViewServer, load_view_data

    server = ViewServer(load_view_data(run_dir)).start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        host, root = f"127.0.0.1:{server.port}", f"/{server.token}"
        status, _, _ = server.respond(f"{root}/api/item/../../manifest.json", host)
        assert status == 404
        status, _, _ = server.respond(f"{root}/etc/passwd", host)
        assert status == 404
        item = load_steps(run_dir)[0].item
        dom = render(server.url + f"#item={item}", tmp_path)
        assert dom.find(id="item-page").attrs["data-item"] == item
        assert len(dom.find(id="columns").find_all("section", class_="cond-col")) == 6
        page = server.respond(f"{root}/", host)[2].decode()
        assert '"details":null' in page
    finally:
        server.close()


DETECTED = """
name: viewer-detect
corpora: [retina-rules]
conditions: [clean_evidence]
bootstrap: {replicates: 100}
limit: 15
detection: {enabled: true, detectors: [perplexity, length], label_source: task}
"""


@pytest.fixture(scope="module")
def detected_run(tmp_path_factory) -> Path:
    from safescale.experiments.runner import run_detection_stage
    from safescale.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("viewer-detect") / "run"
    # detection teacher-forces prompt + response: a window long enough for the records
    long_lm = build_tiny_model(seed=0, context_length=4096)
    make_tiny_run(out, long_lm, DETECTED, report=False)
    config = parse_config(DETECTED + f"models: [{{name: tiny, spec: {out.parent / 'tiny-model'}}}]")
    run_detection_stage(config.with_overrides(output_dir=out))
    return out


def test_detector_scores_and_verdicts_per_response(detected_run, tmp_path):
    from safescale.viewer import load_view_data, write_view

    view = load_view_data(detected_run)
    responses = [r for d in view.details.values() for r in d["responses"]]
    assert len(responses) == 15
    for r in responses:
        assert {d["method"] for d in r["detection"]} == {"perplexity", "length"}
        for d in r["detection"]:
            assert d["verdict"] == ("unsafe" if d["score"] >= d["threshold"] else "safe")
    if CHROMIUM is None:
        pytest.skip("no Chromium (apt-get install chromium; .ci/run installs it)")
    page = write_view(detected_run, view)
    item = responses[0]
    dom = render(page.as_uri() + f"#item={next(iter(view.details))}", tmp_path)
    rows = dom.find(id="col-clean_evidence").find("table", class_="det-table").find_all("tr")
    assert len(rows) == 1 + len(item["detection"])


@needs_chromium
def test_a_replay_is_recorded_and_shown_next_to_its_original(tmp_path, tiny_lm):
    from safescale.experiments.replay import replay_item
    from safescale.rundir import RunDir
    from safescale.viewer import write_view

    out = make_tiny_run(
        tmp_path / "run",
        tiny_lm,
        "name: replayed\ncorpora: [radiology-guidelines]\nconditions: [standard_rag]\n"
        "retrieval: {k: 3}\nanswer: {formulation: cloze_pmi}\nbootstrap: {replicates: 50}\n"
        "limit: 1\n",
    )
    (original,) = RunDir(out).responses()
    dropped = original.evidence_ids[0]
    result = replay_item(out, original.item, "standard_rag", [dropped])
    assert dropped not in result.new.evidence_ids
    (record,) = RunDir(out).replays()
    assert record.dropped == [dropped] and record.original_chosen == original.chosen
    assert record.response.key == original.key
    page = write_view(out)
    dom = render(page.as_uri() + f"#item={original.item}", tmp_path)
    columns = dom.find(id="columns").find_all("section", class_="cond-col")
    assert [c.attrs["id"] for c in columns] == ["col-standard_rag", "col-standard_rag-replay-1"]
    note = columns[1].find("p", class_="replay-note")
    assert dropped in note.text and f"the original chose {original.chosen}" in note.text
    shown = [int(s.attrs["data-step"]) for s in columns[1].find_all("div", class_="step")]
    assert shown == sorted(s.step for s in record.steps)


@needs_chromium
def test_evidence_masking_is_shown_per_passage(tmp_path, tiny_lm):
    from safescale.experiments.reliance import run_reliance_stage
    from safescale.rundir import RunDir
    from safescale.viewer import write_view

    text = (
        "name: masked\ncorpora: [radiology-guidelines]\nconditions: [clean_evidence]\n"
        "answer: {formulation: cloze_pmi}\nbootstrap: {replicates: 50}\n"
        "reliance: {enabled: true}\nlimit: 1\n"
    )
    out = make_tiny_run(tmp_path / "run", tiny_lm, text, report=False)
    config = parse_config(text + f"models: [{{name: tiny, spec: {out.parent / 'tiny-model'}}}]")
    run_reliance_stage(config.with_overrides(output_dir=out))
    (record,) = RunDir(out).reliance()
    assert record.status == "ok"
    page = write_view(out)
    dom = render(page.as_uri() + f"#item={record.item}", tmp_path)
    rows = dom.find(id="col-clean_evidence").find("table", class_="reliance-table").find_all("tr")
    assert [r.attrs.get("data-passage") for r in rows[1:]] == [
        "all evidence",
        *[m.passage for m in record.passages],
    ]
    flipped = [r for r in rows[1:] if "flipped" in r.attrs.get("class", "")]
    assert len(flipped) == sum(bool(m.flipped) for m in [record.evidence, *record.passages])


@needs_chromium
def test_a_retrieval_depth_sweep_shows_its_scaling_and_each_depths_answers(tmp_path, tiny_lm):
    from safescale.viewer import write_view

    out = make_tiny_run(
        tmp_path / "run",
        tiny_lm,
        "name: deep\ncorpora: [radiology-guidelines]\nconditions: [closed_book, standard_rag]\n"
        "retrieval: {k: [3, 1]}\nanswer: {formulation: cloze_pmi}\nbootstrap: {replicates: 50}\n"
        "limit: 2\n",
    )
    metrics = json.loads((out / "metrics.json").read_text())
    (curve,) = metrics["scaling"]["curves"]
    page = write_view(out)
    dom = render(page.as_uri(), tmp_path)
    section = dom.find(id="scaling")
    table = section.find("table", class_="scaling-table", **{"data-axis": "retrieval_k"})
    (row,) = table.find("tbody").find_all("tr")
    assert row.attrs["data-condition"] == "standard_rag"
    verdict = row.find("td", class_="verdict")
    assert verdict.attrs["title"] == curve["differences"]["high_risk_error"]["verdict"]
    # flipped items link to their answers at the largest depth
    flips = curve["flips"]["safe_to_unsafe"]
    links = row.find("td", class_="flips").find_all("a", class_="flip")
    assert [a.text for a in links] == [f["item"] for f in flips]
    assert all("k=3" in a.attrs["href"] for a in links)
    # an item page: the base depth shows both conditions, k = 1 only standard RAG
    responses, _ = load_responses(out)
    item = responses[0].item
    base = render(page.as_uri() + f"#item={item}", tmp_path)
    columns = base.find(id="columns").find_all("section", class_="cond-col")
    assert [c.attrs["data-condition"] for c in columns] == ["closed_book", "standard_rag"]
    switch = base.find("div", class_="switch").find_all("a")
    assert sorted(a.text for a in switch) == ["tiny 1x · k 1", "tiny 1x · k 3"]
    shallow = render(page.as_uri() + f"#item={item}&k=1", tmp_path)
    columns = shallow.find(id="columns").find_all("section", class_="cond-col")
    assert [c.attrs["data-condition"] for c in columns] == ["standard_rag"]
