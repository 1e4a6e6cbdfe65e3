"""Experiment configs: bundled configs load; typos name the key, file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from safescale.detection.pipeline import DetectionConfig
from safescale.experiments.config import (
    CONDITIONS,
    ConfigError,
    ExperimentConfig,
    list_bundled_configs,
    load_config,
    parse_config,
)

MINIMAL = """\
name: tiny
models: [smollm2-135m-instruct]
corpus: radiology-guidelines
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_bundled_configs_all_load():
    names = list_bundled_configs()
    assert {"demo", "safe-scale", "ecrt", "model-scale"} <= set(names)
    for name in names:
        config = load_config(name)
        assert config.name == name


def test_demo_covers_both_corpora_all_conditions_with_detection():
    demo = load_config("demo")
    assert demo.corpora == ("radiology-guidelines", "retina-rules")
    assert demo.conditions == CONDITIONS
    assert demo.compute.samples == (1,)
    assert demo.detection.enabled and "ecrt" in demo.detection.detectors
    assert demo.limit is not None and demo.limit <= 16
    assert len(demo.grid()) == 1 * 2 * 6 * 1


def test_model_scale_spans_two_models_and_two_budgets():
    config = load_config("model-scale")
    assert [m.name for m in config.models] == ["smollm2-135m-instruct", "gemma3-270m"]
    assert config.compute.samples == (1, 4)
    assert len(config.grid()) == 2 * 1 * 6 * 2
    assert load_config("safe-scale").corpora == ("radiology-guidelines",)
    assert load_config("ecrt").corpora == ("retina-rules@12522",)  # generated, paper size


def test_misspelled_top_level_key_names_key_file_and_line(tmp_path):
    path = _write(tmp_path, MINIMAL + "retreival:\n  k: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:4:" in message
    assert "'retreival'" in message
    assert "did you mean 'retrieval'" in message


def test_misspelled_nested_key_names_its_path_and_line(tmp_path):
    text = MINIMAL + "compute:\n  samples: [1]\n  temprature: 0.5\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:6: compute.temprature: unknown key 'temprature'" in str(info.value)
    assert "did you mean 'temperature'" in str(info.value)


def test_typo_inside_a_model_entry_and_in_detection(tmp_path):
    text = (
        "name: tiny\nmodels:\n  - name: a\n    devcie: cpu\ncorpus: retina-rules\n"
        "detection:\n  enabled: true\n  target_recal: 0.9\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml")
    problems = info.value.problems
    assert any(p.startswith("t.yaml:4: models[0].devcie: unknown key") for p in problems)
    assert any(p.startswith("t.yaml:8: detection.target_recal: unknown key") for p in problems)
    # Only the real problems, not the container errors they cause.
    assert len(problems) == 2


def test_invalid_values_are_reported_with_lines():
    text = MINIMAL + "conditions: [closed_book, open_book]\ncompute:\n  samples: [0]\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml")
    message = str(info.value)
    assert "t.yaml:4: conditions[1]:" in message
    assert "t.yaml:6: compute.samples: compute budgets must be >= 1" in message


def test_unknown_corpus_duplicate_key_and_missing_key():
    with pytest.raises(ConfigError, match=r"t.yaml:3: corpora: 'no-such' is neither"):
        parse_config(MINIMAL.replace("radiology-guidelines", "no-such"), source="t.yaml")
    with pytest.raises(
        ConfigError, match=r"t.yaml:4: name: duplicated key \(first given on line 1\)"
    ):
        parse_config(MINIMAL + "name: again\n", source="t.yaml")
    with pytest.raises(ConfigError, match=r"models: required key is missing"):
        parse_config("name: x\ncorpus: retina-rules\n", source="t.yaml")
    with pytest.raises(ConfigError, match="either 'corpus' or 'corpora'"):
        parse_config(MINIMAL + "corpora: [retina-rules]\n", source="t.yaml")


def test_unknown_bundled_name_lists_the_bundled_configs():
    with pytest.raises(ConfigError, match=r"bundled: .*demo"):
        load_config("dmeo")


def test_config_is_frozen_and_round_trips_through_yaml():
    config = parse_config(MINIMAL)
    with pytest.raises(ValidationError):
        config.seed = 3  # type: ignore[misc]
    assert parse_config(config.to_yaml()) == config
    assert config.corpora == ("radiology-guidelines",)
    assert config.models[0].source == "smollm2-135m-instruct"


def test_config_hash_ignores_output_dir_and_limit_only():
    config = parse_config(MINIMAL)
    moved = config.with_overrides(output_dir=Path("/tmp/elsewhere"))
    assert moved.output_dir == Path("/tmp/elsewhere")
    assert moved.config_hash() == config.config_hash()
    # a larger limit extends the same run (nested item order), so it is not a new config
    assert config.with_overrides(limit=5).config_hash() == config.config_hash()
    assert config.with_overrides(seed=1).config_hash() != config.config_hash()
    assert config.run_dir == Path("runs") / "tiny"
    with pytest.raises(ConfigError, match="limit"):
        config.with_overrides(limit=0)


def test_items_in_flight_is_a_model_knob_outside_the_config_hash():
    base = parse_config("name: x\nmodels: [m]\ncorpus: radiology-guidelines\n")
    assert base.models[0].items_in_flight == 1
    four = parse_config(
        "name: x\nmodels: [{name: m, items_in_flight: 4}]\ncorpus: radiology-guidelines\n"
    )
    assert four.models[0].items_in_flight == 4
    # how many items are answered at once does not change the answers: same run
    assert four.config_hash() == base.config_hash()
    wider = parse_config(
        "name: x\nmodels: [{name: m, batch_size: 4}]\ncorpus: radiology-guidelines\n"
    )
    assert wider.config_hash() != base.config_hash()
    with pytest.raises(ConfigError, match=r"<config>:2: models\[0\]\.items_in_flight: "):
        parse_config(
            "name: x\nmodels: [{name: m, items_in_flight: 0}]\ncorpus: radiology-guidelines\n"
        )


def test_detection_section_embeds_the_detection_config():
    config = parse_config(MINIMAL + "detection:\n  enabled: true\n  detectors: [ecrt, length]\n")
    inner = config.detection.detection_config()
    assert type(inner) is DetectionConfig
    assert inner.detectors == ("ecrt", "length")
    assert not hasattr(inner, "enabled")
    with pytest.raises(ConfigError, match="unknown detector"):
        parse_config(MINIMAL + "detection:\n  detectors: [nope]\n")


def test_grid_is_the_cross_product_in_order():
    config = ExperimentConfig.model_validate(
        {
            "name": "g",
            "models": ["a", {"name": "b", "spec": "/tmp/b"}],
            "corpora": ["radiology-guidelines", "retina-rules"],
            "conditions": ["closed_book", "standard_rag"],
            "compute": {"samples": [4, 1]},
        }
    )
    grid = config.grid()
    assert len(grid) == 2 * 2 * 2 * 2
    assert (grid[0].model.name, grid[0].corpus, grid[0].condition, grid[0].samples_budget) == (
        "a", "radiology-guidelines", "closed_book", 1,
    )  # fmt: skip
    assert grid[1].samples_budget == 4
    assert config.models[1].source == "/tmp/b"


# A config written before the context budget and the retrieval depth were lists, and
# its sha256 as safescale computed it then: a run directory made from it must resume.
LEGACY = (
    MINIMAL
    + """\
conditions: [closed_book, standard_rag, max_context]
retrieval: {k: 3}
context_budget: 1024
"""
)
# The hash of this config since the detection settings (which score frozen responses
# and never change an answer) left the hash; a run made under the earlier rule still
# resumes: the runner re-reads its config.yaml (see
# tests/integration/test_run_directory.py::test_a_run_hashed_under_an_earlier_rule_resumes).
LEGACY_HASH = "6e058a9b74aca712f7ea3dab54e4240783f9c18e66aa9ad344848d1de964605c"


def test_scalar_axes_are_one_value_lists_with_the_hash_they_always_had():
    legacy = parse_config(LEGACY.replace("name: tiny", "name: legacy"))
    assert legacy.context_budget == (1024,) and legacy.retrieval.k == (3,)
    assert legacy.config_hash() == LEGACY_HASH
    listed = parse_config(
        LEGACY.replace("name: tiny", "name: legacy")
        .replace("k: 3", "k: [3]")
        .replace("context_budget: 1024", "context_budget: [1024]")
    )
    assert listed.config_hash() == LEGACY_HASH
    # two values are a sweep: another run
    swept = parse_config(LEGACY.replace("name: tiny", "name: legacy").replace("k: 3", "k: [3, 6]"))
    assert swept.config_hash() != LEGACY_HASH
    # the model's maximum: null or "max"
    assert parse_config(MINIMAL + "context_budget: [max, 512]\n").context_budget == (None, 512)
    assert parse_config(MINIMAL + "context_budget: null\n").context_budget == (None,)


def test_each_axis_applies_to_the_conditions_that_read_it():
    config = parse_config(
        MINIMAL
        + "conditions: [closed_book, standard_rag, agentic_rag, max_context]\n"
        + "retrieval: {k: [4, 1, 2]}\ncontext_budget: [max, 512]\ncompute: {samples: [1, 4]}\n"
    )
    cells = {(c.condition, c.samples_budget, c.context_budget, c.retrieval_k)
             for c in config.grid()}  # fmt: skip
    # k for the RAG conditions, the budget for max-context; the others at the first value
    rag = ("standard_rag", "agentic_rag")
    assert cells == {
        *((c, b, None, 4) for c in ("closed_book", "max_context") for b in (1, 4)),
        *((c, b, None, k) for c in rag for b in (1, 4) for k in (4, 1, 2)),
        *(("max_context", b, 512, 4) for b in (1, 4)),
    }
    assert config.swept_axes() == ("compute_samples", "context_budget", "retrieval_k")
    narrow = parse_config(
        MINIMAL
        + "conditions: [closed_book, standard_rag, agentic_rag]\nretrieval: {k: [4, 8]}\n"
        + "compute: {samples: [1, 4]}\n"
        + "axis_conditions: {retrieval_k: [standard_rag], compute_samples: [closed_book]}\n"
    )
    cells = {(c.condition, c.samples_budget, c.retrieval_k) for c in narrow.grid()}
    assert cells == {
        ("closed_book", 1, 4), ("closed_book", 4, 4), ("standard_rag", 1, 4),
        ("standard_rag", 1, 8), ("agentic_rag", 1, 4),
    }  # fmt: skip


def test_axis_values_and_conditions_are_checked_with_lines():
    cases = {
        "context_budget: 32\n": r"<config>:4: context_budget\[0\]: .*greater than or equal to 64",
        "context_budget: [512, 512]\n": r"<config>:4: context_budget: context budgets repeat",
        "context_budget: lots\n": r"<config>:4: context_budget: .*got 'lots'",
        "retrieval: {k: [2, 2]}\n": r"<config>:4: retrieval\.k: retrieval depths repeat",
        "axis_conditions: {retrieval_k: [max_context]}\n": (
            r"<config>:4: axis_conditions\.retrieval_k: max_context does not read this axis "
            r"\(only the RAG conditions retrieve top-k passages\)"
        ),
        "axis_conditions: {context_budget: [standard_rag]}\n": "does not read this axis",
        "axis_conditions: {retrieval_k: [hyde]}\n": r"'hyde' is not a condition of this config",
        "axis_conditions: {k: [standard_rag]}\n": r"unknown key 'k'",
    }
    for line, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            parse_config(MINIMAL + line)


def test_the_bundled_scaling_config_sweeps_every_axis_in_twenty_cells_per_model():
    config = load_config("scaling")
    assert [m.name for m in config.models] == ["smollm2-135m-instruct", "gemma3-270m"]
    assert config.context_budget == (None, 512, 1024, 2048, 4096)
    assert config.retrieval.k == (4, 1, 2, 8) and config.compute.samples == (1, 4)
    assert config.corpora == ("radiology-guidelines",) and config.limit == 12
    assert len(config.grid()) == 2 * 20
