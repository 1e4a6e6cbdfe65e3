"""Embedder plumbing that needs no model: hashing of model files, the Embedder protocol."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from safescale.models.embedder import Embedder, load_embedder, model_files_hash
from safescale.retrieval.testing import HashingEmbedder


def _model_dir(root: Path) -> Path:
    (root / "1_Pooling").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 8}')
    (root / "model.safetensors").write_bytes(b"\x01\x02\x03" * 100)
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (root / "README.md").write_text("docs")
    return root


def test_model_files_hash_tracks_weights_not_docs(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "m")
    first = model_files_hash(directory)
    assert first == model_files_hash(directory)
    assert len(first) == 64
    (directory / "README.md").write_text("other docs")
    assert model_files_hash(directory) == first
    weights = directory / "model.safetensors"
    weights.write_bytes(b"\x01\x02\x04" * 100)
    os.utime(weights, ns=(1, 1))  # a new (size, mtime) signature invalidates the cache
    assert model_files_hash(directory) != first
    copy = _model_dir(tmp_path / "copy")
    assert model_files_hash(copy) == first  # content, not location, decides


def test_model_files_hash_needs_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model files"):
        model_files_hash(tmp_path / "empty")


def test_unknown_embedder_fails_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        load_embedder("no-such-org/no-such-model")


def test_hashing_embedder_implements_the_protocol() -> None:
    embedder = HashingEmbedder(dimension=32)
    assert isinstance(embedder, Embedder)
    vectors = embedder.encode(["pulmonary nodule", "pulmonary nodules", "thyroid"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert HashingEmbedder(seed=1).content_hash != HashingEmbedder(seed=2).content_hash
