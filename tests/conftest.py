"""Shared fixtures. The suite never reaches a hub or a socket."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration is the ``integration`` tier (it builds or
    loads a model); ``make test-fast`` deselects it."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_lm():
    """A tiny random Llama with a ChatML template (built in code, no files)."""
    from safescale.models.tiny import build_tiny_model

    return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def bundled_lm():
    """The real bundled SmolLM2-135M-Instruct (converted once into the user cache)."""
    from safescale.models import load_model

    return load_model("smollm2-135m-instruct")
