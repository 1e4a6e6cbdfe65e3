"""Config honesty: every key of the experiment config is read by some code, and a knob
has one default (the agents' settings and the config agree)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel

import safescale
from safescale.experiments.config import ExperimentConfig, parse_config, unwrap_annotation

#: Keys that are data for people, not knobs (nothing is supposed to act on them).
FREE_TEXT = {("ExperimentConfig", "description")}

SOURCE = Path(safescale.__file__).resolve().parent


def _sections(model: type[BaseModel], seen: set) -> list[tuple[type[BaseModel], str]]:
    fields = []
    for cls in model.__mro__:
        if cls in seen or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            continue
        seen.add(cls)
    for name, info in model.model_fields.items():
        fields.append((model, name))
        inner = unwrap_annotation(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
            seen.add(inner)
            fields.extend(_sections(inner, seen))
    return fields


def _attribute_reads() -> tuple[set[str], dict[Path, set[str]]]:
    """Attribute names read in safescale: ``x.name`` reads outside the config module
    (which only declares the keys), and ``self.name`` reads per file (they count only
    for a model defined in that file)."""
    names: set[str] = set()
    own: dict[Path, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        is_config = path.name == "config.py" and path.parent.name == "experiments"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                own.setdefault(path.resolve(), set()).add(node.attr)
            elif not is_config:
                names.add(node.attr)
    return names, own


def test_every_config_key_is_read_by_some_code():
    reads, own = _attribute_reads()

    def read(model: type[BaseModel], name: str) -> bool:
        defined_in = Path(inspect.getsourcefile(model)).resolve()
        return name in reads or name in own.get(defined_in, set())

    unread = [
        f"{model.__name__}.{name}"
        for model, name in _sections(ExperimentConfig, set())
        if (model.__name__, name) not in FREE_TEXT and not read(model, name)
    ]
    assert not unread, f"config keys no code reads: {unread}"


def test_one_default_per_knob():
    from safescale.agents import AgentSettings

    config = parse_config("name: x\nmodels: [m]\ncorpus: radiology-guidelines\n")
    settings = AgentSettings()
    assert config.agentic.max_steps == settings.max_steps
    assert config.compute.temperature == settings.temperature
    # the retrieval depth and context budget are lists (one value by default)
    assert config.retrieval.k == (settings.k,)
    assert config.context_budget == (settings.context_budget,)
    # a record made before the retrieval-depth axis is read with the same default
    from safescale.rundir import DEFAULT_RETRIEVAL_K

    assert settings.k == DEFAULT_RETRIEVAL_K
    assert config.compute.detection_samples == settings.extra_samples


def test_rerank_is_not_a_config_key():
    from safescale.experiments.config import ConfigError

    with pytest.raises(ConfigError, match=r":5: retrieval\.rerank: unknown key"):
        parse_config(
            "name: x\nmodels: [m]\ncorpus: radiology-guidelines\nretrieval:\n  rerank: true\n"
        )


def test_zero_temperature_is_refused_at_load_not_replaced():
    from safescale.experiments.config import ConfigError

    text = "name: x\nmodels: [m]\ncorpus: radiology-guidelines\ncompute:\n  temperature: 0.0\n"
    with pytest.raises(ConfigError, match=r"<config>:5: compute\.temperature: .*greater than 0"):
        parse_config(text)


@pytest.mark.parametrize(
    ("yaml_model", "line", "field"),
    [
        ("[{name: ../../../x}]", 2, r"models\[0\]\.name"),
        ("[{name: a/b}]", 2, r"models\[0\]\.name"),
        ("[{name: m, device: tpu}]", 2, r"models\[0\]\.device"),
    ],
)
def test_names_that_become_paths_and_devices_are_checked_at_load(yaml_model, line, field):
    from safescale.experiments.config import ConfigError

    text = f"name: x\nmodels: {yaml_model}\ncorpus: radiology-guidelines\n"
    with pytest.raises(ConfigError, match=rf"<config>:{line}: {field}: "):
        parse_config(text)


def test_bundled_configs_still_load():
    from safescale.experiments.config import list_bundled_configs, load_config

    for name in list_bundled_configs():
        load_config(name)
