"""The viewer's metrics schema: the committed file is the generated one, and every
metrics key the page script reads is a property of it."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from safescale.statistics.metrics import METRICS
from safescale.viewer.schema import SCHEMA_FILE, main, metrics_schema, schema_text

#: The functions of viewer.js that read metrics objects (cells, comparisons, scaling,
#: attribution, distractor rows and their estimates), and ``INDEX.metrics`` itself.
METRICS_READERS = (
    "fmtMetric",
    "cellGroups",
    "cellAxes",
    "conditionTable",
    "comparisonTable",
    "fmtSlope",
    "scalingSection",
    "attributionSection",
    "distractorSection",
)
#: JavaScript and page names those functions use that are not metrics keys.
JS_NAMES = {
    "append", "filter", "flatMap", "get", "has", "join", "length", "map", "push",
    "replaceAll", "set", "toFixed", "values",
}  # fmt: skip
#: A property read: ``x.name`` or ``(...).name`` (an assignment ``x.name = ...`` sets a
#: field of a local object, not a read).
PROPERTY = re.compile(r"(?<![\w$])(?:[A-Za-z_$][\w$]*|\))\??\.([A-Za-z_$][\w$]*)(?![\w$]|\s*=[^=])")
STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
COMMENT = re.compile(r"//[^\n]*")


def _code(text: str) -> str:
    """``text`` without double-quoted strings and line comments (their words are not reads)."""
    return COMMENT.sub("", STRING.sub('""', text))


def _viewer_js() -> str:
    return resources.files("safescale.viewer").joinpath("assets", "viewer.js").read_text("utf-8")


def _function(source: str, name: str) -> str:
    match = re.search(rf"^function {name}\(.*?^}}$", source, re.M | re.S)
    assert match, f"viewer.js has no function {name}"
    return _code(match.group(0))


def _schema_properties(node: object) -> set[str]:
    """Every property name anywhere in a JSON schema."""
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                out |= set(value)
            out |= _schema_properties(value)
    elif isinstance(node, list):
        for value in node:
            out |= _schema_properties(value)
    return out


def _read_keys(source: str) -> set[str]:
    keys = set()
    for name in METRICS_READERS:
        keys |= set(PROPERTY.findall(_function(source, name)))
    keys |= set(re.findall(r"\bmetrics\.([A-Za-z_$][\w$]*)", _function(source, "renderOverview")))
    keys |= set(re.findall(r"INDEX\.metrics\.([A-Za-z_$][\w$]*)", _code(source)))
    return keys - JS_NAMES


def _known_keys() -> set[str]:
    """The schema's property names and the metric names (the open keys of the per-metric
    maps: ``metrics``, ``deltas``, ``slopes``, ``differences``)."""
    return _schema_properties(metrics_schema()) | set(METRICS)


def test_the_committed_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "assets/metrics.schema.json is stale: run python -m safescale.viewer.schema"
    )
    assert main(["--check"]) == 0


def test_every_metrics_key_viewer_js_reads_is_in_the_schema():
    keys = _read_keys(_viewer_js())
    # the reader finds what the overview reads (a regex that matched nothing would pass)
    assert {"cells", "comparisons", "scaling", "n_items", "safe_to_unsafe", "lo"} <= keys
    missing = keys - _known_keys()
    assert not missing, f"viewer.js reads metrics keys the schema does not have: {missing}"


def test_a_key_the_schema_lacks_is_reported():
    source = _viewer_js().replace("c.n_items", "c.n_item_typo", 1)
    assert "n_item_typo" in _read_keys(source) - _known_keys()
    source = _viewer_js().replace("metrics.comparisons", "metrics.comparison", 1)
    assert "comparison" in _read_keys(source) - _known_keys()


def test_a_stale_schema_file_is_reported(tmp_path, monkeypatch, capsys):
    import safescale.viewer.schema as schema

    stale = tmp_path / "metrics.schema.json"
    stale.write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(schema, "SCHEMA_FILE", stale)
    assert main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert main([]) == 0 and stale.read_text(encoding="utf-8") == schema_text()


@pytest.mark.parametrize("name", ["Cell", "Comparison", "ScalingCurve", "Estimate"])
def test_the_schema_describes_the_rows(name):
    definitions = metrics_schema()["$defs"]
    assert definitions[name]["additionalProperties"] is False
