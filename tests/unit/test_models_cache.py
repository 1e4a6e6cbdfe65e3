from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from safescale.models.cache import MARKER, cached_model_dir, is_valid_cache


def _write_safetensors(path: Path, n_floats: int) -> None:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * (4 * n_floats))


def _make_cache(directory: Path, sha: str) -> None:
    directory.mkdir(parents=True)
    _write_safetensors(directory / "model.safetensors", 16)
    (directory / "config.json").write_text("{}")
    files = {p.name: p.stat().st_size for p in directory.iterdir()}
    (directory / MARKER).write_text(json.dumps({"format": 1, "gguf_sha256": sha, "files": files}))


def test_valid_cache_is_accepted(tmp_path):
    _make_cache(tmp_path / "m", "ab" * 32)
    assert is_valid_cache(tmp_path / "m", "ab" * 32)


def test_cache_for_other_gguf_is_rejected(tmp_path):
    _make_cache(tmp_path / "m", "ab" * 32)
    assert not is_valid_cache(tmp_path / "m", "cd" * 32)


@pytest.mark.parametrize("damage", ["truncate", "drop_marker", "drop_file", "bad_header"])
def test_damaged_cache_is_rejected(tmp_path, damage):
    d = tmp_path / "m"
    _make_cache(d, "ab" * 32)
    weights = d / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "drop_marker":
        (d / MARKER).unlink()
    elif damage == "drop_file":
        (d / "config.json").unlink()
    else:
        data = bytearray(weights.read_bytes())
        data[8] = ord("x")
        weights.write_bytes(bytes(data))
    assert not is_valid_cache(d, "ab" * 32)


def test_cache_dir_is_keyed_by_sha(tmp_path):
    a = cached_model_dir("m", "a" * 64, tmp_path)
    b = cached_model_dir("m", "b" * 64, tmp_path)
    assert a != b and a.parent == b.parent == tmp_path / "models"
