"""Hardening of the CLI without a model: no code from the working directory, import
paths found only where a config says, and every user error one line on stderr with
exit code 2 (click's own usage errors, bounded numeric options, config file:line)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safescale.cli import app
from safescale.experiments.config import ConfigError, load_config, parse_config

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent

BASE = """\
name: hard
models: [smollm2-135m-instruct]
corpora: [radiology-guidelines]
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Commands run from a scratch directory (a default runs/<name> would land there)."""
    monkeypatch.chdir(tmp_path)


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_line_error(result, *needles: str) -> str:
    """The single stderr line of a user error (exit code 2, nothing on stdout)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------ code from the working dir
MARKER_MODULE = """\
import pathlib
pathlib.Path({marker!r}).write_text("imported from the working directory")
"""


def _trap_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A working directory whose ``pandas.py`` / ``faiss.py`` / ``scipy.py`` record
    being imported."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = tmp_path / "marker"
    for name in ("pandas", "faiss", "scipy"):
        (cwd / f"{name}.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    return cwd, marker


@pytest.mark.parametrize("entry", ["module", "console_script"])
def test_a_command_never_imports_code_from_the_working_directory(tmp_path, entry):
    """`python -m safescale.cli` and the console script both: a pandas.py in the folder
    a command runs from is not imported in place of the installed pandas."""
    cwd, marker = _trap_dir(tmp_path)
    if entry == "module":
        command = [sys.executable, "-m", "safescale.cli"]
    else:  # what the installed `safescale` script does: its own dir is sys.path[0]
        script = tmp_path / "bin" / "safescale-entry.py"
        script.parent.mkdir()
        script.write_text("from safescale.cli import main\nmain()\n")
        command = [sys.executable, str(script)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [*command, "plan", "--effect", "0.05", "--discordance", "0.2"],  # imports pandas, scipy
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "626 items" in result.stdout
    assert not marker.exists(), "a module of the working directory was imported"


def _condition_module(directory: Path) -> str:
    """A copy of the test condition (top_two_rag) under a fresh module name in
    ``directory``; returns the module name."""
    name = f"cfgdir_condition_{uuid.uuid4().hex[:8]}"
    shutil.copy(TESTS / "fixtures_conditions.py", directory / f"{name}.py")
    return name


def test_an_import_path_resolves_in_the_configs_own_directory(tmp_path, monkeypatch):
    study = tmp_path / "study"
    study.mkdir()
    module = _condition_module(study)
    config_file = study / "study.yaml"
    config_file.write_text(BASE + f"conditions: [closed_book, {module}:build_graph]\n")
    monkeypatch.chdir(tmp_path)  # not the config's directory
    config = load_config(config_file)
    assert config.condition_names == ("closed_book", "top_two_rag")
    assert config.import_path == (study.resolve(),)
    # the resolved config records where the code is (absolute), outside the hash
    again = parse_config(config.to_yaml())
    assert again.import_path == (study.resolve(),)
    assert again.config_hash() == config.config_hash()
    moved = parse_config(config.to_yaml().replace(str(study.resolve()), str(tmp_path)))
    assert moved.config_hash() == config.config_hash()


def test_the_same_config_as_text_does_not_search_the_working_directory(tmp_path, monkeypatch):
    study = tmp_path / "study"
    study.mkdir()
    module = _condition_module(study)
    monkeypatch.chdir(study)  # the module sits in the working directory
    with pytest.raises(ConfigError, match=r"conditions\[1\]: cannot import module .*--import-path"):
        parse_config(BASE + f"conditions: [closed_book, {module}:build_graph]\n")


def test_import_path_option_and_key_name_other_directories(tmp_path):
    code, study = tmp_path / "code", tmp_path / "study"
    code.mkdir()
    study.mkdir()
    module = _condition_module(code)
    config_file = study / "study.yaml"
    config_file.write_text(BASE + f"conditions: [closed_book, {module}:build_graph]\n")
    with pytest.raises(ConfigError, match=rf"{config_file}:4: conditions\[1\]: cannot import"):
        load_config(config_file)
    assert load_config(config_file, import_path=[code]).import_path == (code, study)
    # import_path in the config, relative to the config's directory
    config_file.write_text(
        BASE + f"import_path: [../code]\nconditions: [closed_book, {module}:build_graph]\n"
    )
    assert load_config(config_file).import_path == (code.resolve(),)
    config_file.write_text(BASE + "import_path: [../nowhere]\n")
    with pytest.raises(ConfigError, match=r":4: import_path: \.\./nowhere: no such directory"):
        load_config(config_file)


def test_run_import_path_option_reaches_the_config(tmp_path):
    code, study = tmp_path / "code", tmp_path / "study"
    code.mkdir()
    study.mkdir()
    module = _condition_module(code)
    config_file = study / "study.yaml"
    config_file.write_text(
        "name: hard\nmodels: [no-such-model]\ncorpora: [radiology-guidelines]\n"
        f"conditions: [closed_book, {module}:build_graph]\n"
    )
    without = _invoke("run", str(config_file))
    _one_line_error(without, f"{config_file}:4: conditions[1]: cannot import module")
    # with the option the condition resolves, and the next problem is the model's
    with_option = _invoke("run", str(config_file), "--import-path", str(code))
    _one_line_error(with_option, f"{config_file}:2: models[0]: unknown model 'no-such-model'")
    missing = _invoke("run", str(config_file), "--import-path", str(tmp_path / "nope"))
    _one_line_error(missing, "--import-path: ", "no such directory")


def test_a_module_beside_the_config_does_not_shadow_an_installed_one(tmp_path):
    """The config's directory is searched for the module the config names, but it goes
    at the end of sys.path: its xmlrpc.py does not replace the standard library's."""
    study = tmp_path / "study"
    study.mkdir()
    marker = tmp_path / "marker"
    (study / "xmlrpc.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    module = _condition_module(study)
    source = (study / f"{module}.py").read_text()
    (study / f"{module}.py").write_text(source + "\nimport xmlrpc.client  # noqa: E402\n")
    sys.modules.pop("xmlrpc", None)
    sys.modules.pop("xmlrpc.client", None)
    config_file = study / "study.yaml"
    config_file.write_text(BASE + f"conditions: [closed_book, {module}:build_graph]\n")
    try:
        assert load_config(config_file).condition_names[-1] == "top_two_rag"
        import xmlrpc

        assert not marker.exists()
        assert Path(xmlrpc.__file__).parent.parent == Path(os.__file__).parent
    finally:
        sys.path[:] = [p for p in sys.path if p != str(study.resolve())]


@pytest.mark.parametrize("name", ["hyde", "crag"])
def test_the_example_configs_load_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "examples" / f"{name}.yaml")
    assert config.condition_names == ("closed_book", "standard_rag", "agentic_rag", name)
    assert config.import_path == ((ROOT / "examples").resolve(),)


def test_a_condition_module_calling_sys_exit_is_one_line(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    name = f"exits_{uuid.uuid4().hex[:8]}"
    (study / f"{name}.py").write_text("import sys\nsys.exit(3)\n")
    config_file = study / "study.yaml"
    config_file.write_text(BASE + f"conditions:\n  - closed_book\n  - {name}:build_graph\n")
    result = _invoke("run", str(config_file))
    _one_line_error(result, f"{config_file}:6: conditions[1]:", "called sys.exit(3)")


# ------------------------------------------------------------ one line, exit code 2
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("view", "RUN", "--serve", "--port", "70000"), ("view", "'--port'", "65535")),
        (("view", "RUN", "--serve", "--port", "-1"), ("view", "'--port'")),
        (("report", "MISSING"), ("report", "does not exist")),
        (("report", "RUN", "--replicates", "99999999999"), ("'--replicates'", "1000000")),
        (("corpus", "generate", "retina-rules", "MISSING", "--n", "0"), ("'--n'",)),
        (("no-such-command",), ("No such command",)),
        (("run",), ("run", "Missing argument")),
    ],
)
def test_click_usage_errors_are_one_line(tmp_path, args, needles):
    args = tuple(str(tmp_path / "missing") if a == "MISSING" else a for a in args)
    args = tuple(str(tmp_path) if a == "RUN" else a for a in args)
    _one_line_error(_invoke(*args), *needles)


def test_view_errors_are_one_line_on_stderr(tmp_path):
    _one_line_error(_invoke("view", str(tmp_path / "missing")), "missing: no such directory")
    _one_line_error(_invoke("view", str(tmp_path)), "manifest.json: no such file")


def test_a_huge_conflict_dose_is_refused_by_name(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(BASE + "conditions: [clean_evidence]\n")
    out = tmp_path / "run"
    for dose in ("99999999999999999999", "1001", "-1"):
        result = _invoke("run", str(config_file), "--out", str(out), "--conflict-dose", dose)
        _one_line_error(result, "--conflict-dose: ", "0..1000")
    assert not out.exists()
    config_file.write_text(BASE + "conditions: [clean_evidence]\nconflict_dose: [0, 5000]\n")
    with pytest.raises(ConfigError, match=r"c.yaml:5: conflict_dose: conflict dose 5000 is larger"):
        load_config(config_file)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--effect", "nan", "--discordance", "0.2"), "effect must be a finite number"),
        (("--effect", "0.1", "--discordance", "nan"), "discordance must be a finite number"),
        (("--effect", "0.1", "--discordance", "0.2", "--icc", "nan"), "icc must be a finite"),
        (
            ("--effect", "0.1", "--discordance", "0.2", "--cluster-size", "1e308", "--icc", "1"),
            "cluster size 1e+308 with icc 1 gives a design effect of 1e+308",
        ),
    ],
)
def test_plan_numeric_options_are_bounded_by_name(args, needle):
    _one_line_error(_invoke("plan", *args), needle)


# ------------------------------------------------------------ config file:line
@pytest.mark.parametrize(
    ("models", "line", "field", "needle"),
    [
        ("models: [no-such-model]", 2, "models[0]", "unknown model 'no-such-model'"),
        ("models:\n  - name: tiny\n    spec: /no/such/model/dir", 4, "models[0].spec",
         "no such model directory: /no/such/model/dir"),
        ("models:\n  - name: g\n    spec: /no/such/file.gguf", 4, "models[0].spec",
         "GGUF file /no/such/file.gguf does not exist"),
    ],
)  # fmt: skip
def test_an_unloadable_model_is_the_configs_file_and_line(tmp_path, models, line, field, needle):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"name: hard\n{models}\ncorpora: [radiology-guidelines]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config_file)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{config_file}:{line}: {field}: ") and needle in problem
    _one_line_error(_invoke("run", str(config_file)), f"{config_file}:{line}: {field}: ")


def test_registered_names_directories_and_hub_ids_pass_the_model_check(tmp_path):
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    config_file = tmp_path / "c.yaml"
    config_file.write_text(
        "name: hard\ncorpora: [radiology-guidelines]\nmodels:\n  - smollm2-135m-instruct\n"
        f"  - {{name: local, spec: {model_dir}}}\n  - {{name: hub, spec: org/some-model}}\n"
    )
    assert [m.name for m in load_config(config_file).models] == ["smollm2-135m-instruct",
                                                                 "local", "hub"]  # fmt: skip


# ------------------------------------------------------------ reliance refusals
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            "conditions: [closed_book]\nreliance: {enabled: true}\n",
            ":5: reliance: enabled, but no condition of this run carries evidence",
        ),
        (
            "conditions: [closed_book, clean_evidence]\n"
            "reliance: {enabled: true, conditions: [clean_evidnce]}\n",
            ":5: reliance: conditions: 'clean_evidnce' is not a condition of this run",
        ),
        (
            "conditions: [closed_book, clean_evidence]\n"
            "reliance: {enabled: true, conditions: [closed_book]}\n",
            ":5: reliance: conditions: closed_book carries no evidence",
        ),
    ],
)
def test_reliance_refuses_conditions_without_evidence_and_unknown_names(tmp_path, extra, needle):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(BASE + extra)
    with pytest.raises(ConfigError, match=needle):
        load_config(config_file)
    _one_line_error(_invoke("run", str(config_file)), needle)


# ------------------------------------------------------------ corpus.yaml
def test_a_yaml_float_version_says_to_quote_it(tmp_path):
    from safescale.corpora import CorpusError, load_corpus

    out = tmp_path / "corpus"
    assert _invoke("corpus", "generate", "retina-rules", "--n", "10", str(out)).exit_code == 0
    manifest = out / "corpus.yaml"
    lines = manifest.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("version:"))
    lines[number] = "version: 2019.10"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError) as caught:
        load_corpus(out)
    text = str(caught.value)
    assert f"corpus.yaml:{number + 1}: version: " in text
    assert 'quote it, version: "2019.10"' in text  # as written, not as the float 2019.1
