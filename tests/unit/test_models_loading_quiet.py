"""Model loading prints no transformers progress bars unless asked to."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from safescale.models.loading import load_model, transformers_progress_bars


@pytest.fixture(scope="module")
def saved_tiny(tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-model")
    tiny_lm.model.save_pretrained(directory)
    tiny_lm.tokenizer.save_pretrained(directory)
    return directory


def test_loading_is_quiet_by_default_and_verbose_on_request(
    saved_tiny: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = hf_logging.is_progress_bar_enabled()
    quiet = load_model(str(saved_tiny))
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == before  # restored after the load
    loud = load_model(str(saved_tiny), verbose=True)
    assert "Loading weights" in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == before
    assert quiet.model_hash == loud.model_hash


def test_progress_bar_setting_is_restored_after_an_error() -> None:
    before = hf_logging.is_progress_bar_enabled()
    with pytest.raises(RuntimeError), transformers_progress_bars(not before):
        assert hf_logging.is_progress_bar_enabled() is (not before)
        raise RuntimeError("load failed")
    assert hf_logging.is_progress_bar_enabled() is before
