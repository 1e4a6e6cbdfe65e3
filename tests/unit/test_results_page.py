"""docs/results.md is made by benchmarks/render_results.py from the committed result
files, never typed: the page must equal what the generator makes now, every benchmark
script writes its own result file with ``--json``, and every result file belongs to a
script."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


def _load_renderer():
    spec = importlib.util.spec_from_file_location(
        "render_results", BENCHMARKS / "render_results.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_results", module)
    spec.loader.exec_module(module)
    return module


rr = _load_renderer()
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


def test_committed_page_is_what_the_generator_makes() -> None:
    expected = rr.render(rr.RESULTS_DIR)
    actual = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert actual == expected, (
        "docs/results.md differs from benchmarks/results/: do not edit the page, edit the "
        "result files and run `python benchmarks/render_results.py`"
    )


def test_every_result_file_belongs_to_a_script_and_every_script_has_one() -> None:
    results = {r["benchmark"] for r in rr.load_results(rr.RESULTS_DIR)}
    scripts = {p.stem for p in SCRIPTS}
    assert results <= scripts, f"result files without a script: {sorted(results - scripts)}"
    assert scripts <= results, f"scripts without a result file: {sorted(scripts - results)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_writes_its_result_file_with_json(script: Path) -> None:
    source = script.read_text(encoding="utf-8")
    assert re.search(r'add_argument\(\s*"--json"', source), f"{script.name}: no --json option"
    match = re.search(r'write_result\(\s*args\.json,\s*"([a-z_]+)"', source)
    assert match, f"{script.name}: does not write its result file with write_result(args.json"
    assert match.group(1) == script.stem, f"{script.name} writes as {match.group(1)!r}"


def test_a_measured_result_is_rendered_with_its_provenance(tmp_path: Path) -> None:
    rows = [rr.figure("thing vs raw", "1.23x", "<= 1.5x", ratio=1.23, bad=float("nan"))]
    path = rr.write_result(tmp_path / "bench_demo.json", "bench_demo", "A demo", rows,
                           notes=["Read the ratio."])  # fmt: skip
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["provenance"]["kind"] == "measured"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", data["provenance"]["date"])
    assert data["rows"][0]["values"] == {"ratio": 1.23, "bad": None}  # NaN is not JSON
    page = rr.render(tmp_path)
    assert "### `bench_demo`" in page
    assert "| thing vs raw | 1.23x | <= 1.5x |" in page
    assert f"Measured {data['provenance']['date']} on " in page
    assert "Read the ratio." in page
    assert "## Studies" not in page  # no studies.md in this directory


def test_check_fails_on_a_retyped_figure(tmp_path: Path) -> None:
    results = tmp_path / "results"
    rr.write_result(results / "bench_demo.json", "bench_demo", "A demo",
                    [rr.figure("thing", "2.00x")])  # fmt: skip
    page = tmp_path / "results.md"
    assert rr.main(["--results", str(results), "--out", str(page)]) == 0
    assert rr.main(["--results", str(results), "--out", str(page), "--check"]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("2.00x", "1.50x"), encoding="utf-8")
    assert rr.main(["--results", str(results), "--out", str(page), "--check"]) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["provenance"].update(kind="seed", note=""), "provenance.note"),
        (lambda d: d["rows"][0].update(measured="1 | 2"), "rows[0]"),
        (lambda d: d.update(rows=[]), "rows"),
        (lambda d: d.update(format=2), "format"),
        (lambda d: d.update(benchmark="bench_other"), "benchmark"),
    ],
)
def test_a_bad_result_file_is_one_line_naming_the_field(tmp_path: Path, change, field) -> None:
    path = rr.write_result(tmp_path / "bench_demo.json", "bench_demo", "A demo",
                           [rr.figure("thing", "2.00x")])  # fmt: skip
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(rr.ResultError) as info:
        rr.render(tmp_path)
    message = str(info.value)
    assert message.startswith(f"error: {path}: {field}:"), message
    assert "\n" not in message


def test_the_recorded_command_is_the_same_from_any_directory(monkeypatch) -> None:
    """Paths are recorded from the repository root; values (`6`, `A,C`, `none`) are
    never taken for paths, whatever directory the script ran in."""
    argv = ["bench_prefix.py", "--limit", "6", "--runs", "A,C", "--json",
            "results/bench_prefix.json"]  # fmt: skip
    monkeypatch.chdir(BENCHMARKS)
    assert [rr._relative(a) for a in argv] == [
        "benchmarks/bench_prefix.py", "--limit", "6", "--runs", "A,C", "--json",
        "benchmarks/results/bench_prefix.json",
    ]  # fmt: skip
