"""The condition contract and external conditions/detectors, without a model: the
bundled six satisfy the contract, a config names external conditions by import path or
entry point, and a broken one is refused at config load with file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plugin_fixtures import CONDITION_PLUGIN, DETECTOR_PLUGIN, extending_block, install_distribution
from typer.testing import CliRunner

from safescale.agents import CONDITIONS, check_condition, resolve_condition
from safescale.agents.contract import ConditionContractError, contract_problems
from safescale.agents.registry import ConditionError, registered_conditions
from safescale.experiments.config import ConfigError, parse_config
from safescale.rundir import ResponseRecord

TESTS = Path(__file__).resolve().parents[1]

BASE = """\
name: byo
models: [{model}]
corpora: [radiology-guidelines]
"""


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def _config(conditions: str, extra: str = "", model: str = "smollm2-135m-instruct") -> str:
    return BASE.format(model=model) + conditions + extra


@pytest.mark.parametrize("name", CONDITIONS)
def test_every_bundled_condition_satisfies_the_contract(name):
    spec = resolve_condition(name)
    assert spec.bundled and spec.name == name
    assert check_condition(spec.build()).name == name


def test_a_broken_graph_is_described_rule_by_rule():
    import fixtures_conditions

    problems = contract_problems(fixtures_conditions.build_bad_graph())
    assert len(problems) == 4
    assert "lacks 'evidence', 'excluded'" in problems[0]
    assert "'steps' must accumulate" in problems[1]
    assert "context_schema must be AgentContext" in problems[2]
    assert "no node named 'answer'" in problems[3]
    with pytest.raises(ConditionContractError):
        check_condition(fixtures_conditions.build_bad_graph())
    assert contract_problems(object())[0].startswith("the builder returned object")


def test_an_import_path_names_an_external_condition_by_its_graph_name():
    config = parse_config(
        _config(
            'conditions: [closed_book, "fixtures_conditions:build_graph"]\n',
            "metrics:\n  comparisons: [[top_two_rag, closed_book]]\n",
        )
    )
    assert config.conditions == ("closed_book", "fixtures_conditions:build_graph")
    assert config.condition_names == ("closed_book", "top_two_rag")
    assert [c.condition for c in config.grid()] == ["closed_book", "top_two_rag"]
    assert config.condition_source("top_two_rag") == "fixtures_conditions:build_graph"
    # the resolved config round-trips (the import path is what is stored)
    assert parse_config(config.to_yaml()) == config


def test_broken_or_unknown_conditions_are_config_errors_with_lines():
    text = _config(
        "conditions:\n"
        "  - closed_book\n"
        "  - fixtures_conditions:build_bad_graph\n"
        "  - fixtures_conditions:build_unnamed_graph\n"
        "  - fixtures_conditions:build_impostor_graph\n"
        "  - no_such_module_here:build_graph\n"
        "  - fixtures_conditions:missing\n"
        "  - hyde\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml")
    problems = info.value.problems
    assert len(problems) == 6
    assert problems[0].startswith(
        "c.yaml:6: conditions[1]: condition 'fixtures_conditions:build_bad_graph' breaks "
        "the condition contract: the state schema lacks 'evidence', 'excluded'"
    )
    assert problems[1].startswith("c.yaml:7: conditions[2]:")
    assert "the graph has no name" in problems[1]
    assert problems[2].startswith("c.yaml:8: conditions[3]:")
    assert "named 'standard_rag', the name of a bundled condition" in problems[2]
    assert problems[3].startswith(
        "c.yaml:9: conditions[4]: cannot import module 'no_such_module_here'"
    )
    assert problems[4].startswith("c.yaml:10: conditions[5]: module 'fixtures_conditions' has")
    assert problems[5].startswith("c.yaml:11: conditions[6]: unknown condition 'hyde'")
    assert "group 'safescale.conditions'" in problems[5]


def test_a_condition_under_two_sources_repeats():
    text = _config(
        "conditions: [standard_rag, safescale.agents.conditions.standard_rag:build_graph]\n"
    )
    with pytest.raises(ConfigError, match=r"c.yaml:4: conditions: conditions repeat"):
        parse_config(text, source="c.yaml")


def test_comparisons_may_name_the_configs_own_conditions_only():
    text = _config(
        'conditions: [standard_rag, "fixtures_conditions:build_graph"]\n',
        "metrics:\n  comparisons:\n"
        "    - [top_two_rag, standard_rag]\n"
        "    - [top_too_rag, closed_book]\n",
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml")
    (problem,) = info.value.problems
    assert problem.startswith(
        "c.yaml:5: metrics: comparison [top_too_rag, closed_book]: unknown condition(s) "
        "['top_too_rag']"
    )


def test_the_cli_refuses_a_broken_condition_before_loading_any_model(tmp_path):
    from safescale.cli import app

    config = tmp_path / "bad.yaml"
    # the model spec does not exist either: loading it first would fail differently
    config.write_text(
        _config(
            "conditions: [closed_book, fixtures_conditions:build_bad_graph]\n",
            model=f"{{name: tiny, spec: {tmp_path / 'no-model'}}}",
        )
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2
    assert f"error: {config}:4: conditions[1]: condition 'fixtures_conditions:build_bad_graph'" in (
        result.output
    )
    assert not out.exists()


def test_records_carry_any_condition_slug():
    base = {
        "run": "r",
        "model": "m",
        "item": "i",
        "letters": ["A", "B"],
        "option_logits": [0.0, 1.0],
        "chosen": "B",
        "response": "Answer: B) x",
        "message": "q",
        "message_noctx": "q",
    }
    record = ResponseRecord.model_validate({**base, "condition": "top_two_rag"})
    assert record.condition == "top_two_rag"
    assert ResponseRecord.model_validate_json(record.model_dump_json()) == record
    with pytest.raises(ValueError, match="condition name 'a/b' is not a slug"):
        ResponseRecord.model_validate({**base, "condition": "a/b"})


def test_an_entry_point_condition_is_named_by_its_entry_point(tmp_path, monkeypatch):
    install_distribution(
        tmp_path,
        "byo_condition_plugin",
        "byo_condition_plugin",
        CONDITION_PLUGIN,
        "[safescale.conditions]\nreranked = byo_condition_plugin:build_graph\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "reranked" in registered_conditions()
    config = parse_config(_config("conditions: [standard_rag, reranked]\n"))
    assert config.condition_names == ("standard_rag", "reranked")
    assert resolve_condition("reranked").build().name == "reranked_rag"


def test_an_entry_point_detector_is_picked_up(tmp_path, monkeypatch):
    from safescale.detection import DetectionConfig
    from safescale.detection.registry import available_detectors, get_detector

    install_distribution(
        tmp_path,
        "byo_detector_plugin",
        "byo_detector_plugin",
        DETECTOR_PLUGIN,
        "[safescale.detectors]\npmi_nll = byo_detector_plugin:PmiNll\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "pmi_nll" in available_detectors()
    config = DetectionConfig(detectors=("ecrt", "pmi_nll"))
    cls = get_detector(config.detectors[1])
    assert cls.__module__ == "byo_detector_plugin" and cls.name == "pmi_nll"
    assert cls.requires == frozenset({"ctx_pass", "noctx_pass"})
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"pmi": rng.normal(size=40), "msp_seq": rng.normal(size=40)})
    y = (frame["pmi"] < 0).astype(int).to_numpy()
    detector = cls().fit(cls().design_matrix(frame), y)
    scores = detector.risk_score(detector.design_matrix(frame))
    assert scores[y == 1].mean() > scores[y == 0].mean()  # it learned the signal
    detector.save(tmp_path / "saved")
    again = cls.load(tmp_path / "saved")
    np.testing.assert_allclose(again.risk_score(again.design_matrix(frame)), scores)
    with pytest.raises(KeyError, match="unknown detector 'pmi_nl'"):
        get_detector("pmi_nl")


def test_an_unknown_condition_lists_installed_entry_points():
    with pytest.raises(ConditionError, match="not an import path 'module:function'"):
        resolve_condition("no_such_condition")


def test_the_readme_condition_example_satisfies_the_contract(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "hyde.py").write_text(extending_block("Your own condition"))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = parse_config(
        _config(
            'conditions: [closed_book, standard_rag, agentic_rag, "mypkg.hyde:build_graph"]\n',
            "metrics:\n  comparisons: [[hyde, standard_rag], [standard_rag, closed_book]]\n",
        )
    )
    assert config.condition_names[-1] == "hyde"


@pytest.mark.parametrize("name", ["hyde", "crag"])
def test_the_example_configs_load_from_the_repository_root(name, monkeypatch):
    from safescale.experiments.config import load_config

    root = TESTS.parent
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    config = load_config(f"examples/{name}.yaml")
    assert config.condition_names == ("closed_book", "standard_rag", "agentic_rag", name)
    assert any(name in pair for pair in config.metrics.comparisons)
