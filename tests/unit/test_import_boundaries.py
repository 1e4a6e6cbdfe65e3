"""Import boundaries: the run-directory readers stay free of torch and langgraph, and no
module reaches into another module's private names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _private_imports(paths: list[Path], root: Path = ROOT) -> set[tuple[str, str, str]]:
    found = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module.split(".")[0] != "safescale":
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    rel = path.relative_to(root).as_posix()
                    found.add((rel, node.module, alias.name))
    return found


def test_the_scanner_finds_a_private_import(tmp_path):
    # the check below would pass vacuously if the scanner missed the pattern
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from safescale.rundir.reader import _validate, read_json\n"
        "from safescale.rundir import __all__\n"
        "from os import _exit\n"
    )
    assert _private_imports([probe], tmp_path) == {
        ("probe.py", "safescale.rundir.reader", "_validate")
    }


def test_no_module_imports_another_modules_private_names():
    paths = [
        p
        for folder in ("safescale", "tests", "benchmarks", "examples")
        for p in sorted((ROOT / folder).rglob("*.py"))
    ]
    found = _private_imports(paths)
    lines = [f"{f}: from {m} import {n}" for f, m, n in sorted(found)]
    assert not lines, "private names imported across modules:\n" + "\n".join(lines)


READERS = """
import json, sys
import safescale.rundir
import safescale.presentation.report
import safescale.statistics.metrics
import safescale.viewer
import safescale.viewer.server
import safescale.cli.detect
from safescale.detection.pipeline import evaluate_run_dir
from safescale.detection.registry import available_detectors, get_detector
from safescale.experiments import load_run, write_report
from safescale.detection.registry import BUNDLED_DETECTORS
assert "ecrt" in available_detectors() and "perplexity" in available_detectors()
for name in BUNDLED_DETECTORS:  # the viewer loads saved detectors to score responses
    assert get_detector(name).name == name
heavy = sorted(m for m in ("torch", "langgraph", "transformers") if m in sys.modules)
root = sys.argv[1]
elsewhere = sorted(
    name for name, m in list(sys.modules.items())
    if name.startswith("safescale") and getattr(m, "__file__", None)
    and not m.__file__.startswith(root)
)
print(json.dumps([heavy, elsewhere]))
"""


def test_reading_a_run_imports_neither_torch_nor_langgraph():
    """The report, metrics, the viewer, ``detect eval`` and every bundled detector class
    (the viewer loads saved detectors) import without torch (the integration test in
    test_run_directory.py runs them on a real run)."""
    out = subprocess.run(
        [sys.executable, "-c", READERS, str(ROOT / "safescale")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    heavy, elsewhere = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert elsewhere == []  # every module came from this source tree


def test_the_bundled_detector_table_names_every_registered_detector():
    """``available_detectors`` lists the bundled detectors without importing them; the
    table must name exactly the detectors the bundled modules register, each in the
    module that registers it."""
    import importlib
    import pkgutil

    import safescale.detection as detection
    from safescale.detection.registry import BUNDLED_DETECTORS, DETECTORS, get_detector

    for info in pkgutil.walk_packages(detection.__path__, "safescale.detection."):
        importlib.import_module(info.name)
    bundled = {
        name: cls.__module__
        for name, cls in DETECTORS.registered().items()
        if cls.__module__.startswith("safescale.detection.")
    }
    assert bundled == BUNDLED_DETECTORS
    assert get_detector("length").name == "length"


GONE = ("safescale.records", "safescale.agents.records", "safescale.experiments.rundir")


def test_the_old_run_directory_modules_are_gone_and_nothing_imports_them():
    for name in GONE:
        assert not (ROOT / (name.replace(".", "/") + ".py")).exists(), name
    users = []
    for folder in ("safescale", "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module in GONE:
                    users.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}")
                if isinstance(node, ast.Import):
                    users += [
                        f"{path.relative_to(ROOT)}:{node.lineno}: {a.name}"
                        for a in node.names
                        if a.name in GONE
                    ]
    assert not users, "\n".join(users)


# What each layer may import of safescale (its own package included). Running a study
# (experiments/) sits on top; statistics and presentation read finished runs only.
ALLOWED = {
    "safescale/rundir": {"safescale.rundir", "safescale.corpora"},
    "safescale/statistics": {
        "safescale.statistics",
        "safescale.rundir",
        "safescale.corpora",
        "safescale.registry",
    },
    "safescale/presentation": {
        "safescale.presentation",
        "safescale.statistics",
        "safescale.rundir",
        "safescale.corpora",
        "safescale.detection",
    },
}


def _safescale_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n == "safescale" or n.startswith("safescale.")}


def _outside(module: str, allowed: set[str]) -> bool:
    return not any(module == a or module.startswith(a + ".") for a in allowed)


def test_the_layer_checker_flags_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from safescale.experiments.runner import run_experiment\n"
        "from safescale.statistics.bootstrap import Estimate\n"
        "import safescale.rundir.records\n"
    )
    found = {m for m in _safescale_imports(probe) if _outside(m, ALLOWED["safescale/statistics"])}
    assert found == {"safescale.experiments.runner"}


def test_statistics_and_presentation_import_no_layer_above_them():
    """statistics/ reads records and corpora only; presentation/ renders metrics; neither
    imports the runner, the agents or the models (so neither can load torch)."""
    upward = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module in sorted(_safescale_imports(path)):
                if _outside(module, allowed):
                    upward.append(f"{path.relative_to(ROOT)}: {module}")
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)
