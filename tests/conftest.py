"""Shared fixtures. The suite never reaches a hub or the network: the served-model
tests talk to a real server they start on loopback (``served_fixtures``)."""

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


#: The API key the loopback llama-cpp-python server requires (read from this variable).
SERVED_KEY_ENV = "SAFESCALE_TEST_SERVER_KEY"


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A llama-cpp-python OpenAI-compatible server serving the bundled SmolLM2 GGUF on a
    free loopback port (skipped, with the reason, when the ``served`` extra is absent).
    It requires an API key, set in :data:`SERVED_KEY_ENV` for the tests."""
    from served_fixtures import SKIP_REASON, LlamaServer, have_llama_server

    if not have_llama_server():
        pytest.skip(SKIP_REASON)
    key = "sk-loopback-" + os.urandom(6).hex()
    os.environ[SERVED_KEY_ENV] = key
    server = LlamaServer(log=tmp_path_factory.mktemp("llama") / "server.log", api_key=key)
    server.start()
    yield server
    server.stop()
