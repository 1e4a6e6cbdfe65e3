"""GGUF -> safetensors conversion cache.

transformers dequantizes a GGUF file on every ``from_pretrained(gguf_file=...)`` call
(tens of seconds). The first load converts the model once and saves it as a normal
safetensors directory under ``<cache>/models/<stem>-<sha256[:16]>/``; every later load
reads that directory (well under a second).

Concurrency and integrity: the directory is written to a temporary sibling and renamed
into place, so a reader never sees a half-written cache (if two processes convert at
once, the first rename wins and the other discards its copy). A cache directory is
used only if its marker file names the same GGUF sha256 and every listed file exists
with the recorded size and parses as safetensors; anything else is treated as corrupt,
moved aside and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "cache_root",
    "cached_model_dir",
    "convert_gguf",
    "is_valid_cache",
    "sha256_files",
]

CACHE_ENV = "SAFESCALE_CACHE"
MARKER = "safescale-cache.json"
_CACHE_FORMAT = 1


def cache_root() -> Path:
    """The cache directory: ``$SAFESCALE_CACHE`` or ``~/.cache/safescale``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "safescale"


def sha256_files(paths: Iterable[Path], chunk: int = 1 << 22) -> str:
    """sha256 of the concatenation of ``paths`` (streamed)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def cached_model_dir(stem: str, sha256: str, root: Path | None = None) -> Path:
    """Where the converted model for a GGUF with this sha256 lives."""
    return (root or cache_root()) / "models" / f"{stem}-{sha256[:16]}"


def is_valid_cache(directory: Path, sha256: str) -> bool:
    """True when ``directory`` is a complete conversion of the GGUF with ``sha256``."""
    marker = directory / MARKER
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("format") != _CACHE_FORMAT or meta.get("gguf_sha256") != sha256:
        return False
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        path = directory / name
        try:
            if path.stat().st_size != size:
                return False
        except OSError:
            return False
        if name.endswith(".safetensors") and not _safetensors_header_ok(path):
            return False
    return True


def _safetensors_header_ok(path: Path) -> bool:
    """Cheap structural check: the JSON header parses and the data length matches."""
    try:
        with path.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if header_len <= 0 or header_len > 100_000_000:
                return False
            header = json.loads(fh.read(header_len))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        return path.stat().st_size == 8 + header_len + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert_gguf(
    parts: list[Path],
    filename: str,
    sha256: str,
    target: Path,
    *,
    progress: bool = False,
) -> Path:
    """Dequantize a GGUF (given as one file or ordered chunks) into ``target``.

    Writes into a temporary sibling directory and renames it into place. Returns
    ``target``. Safe against concurrent callers and against a corrupt ``target``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if len(parts) == 1 and parts[0].name == filename:
            gguf_dir, gguf_name = parts[0].parent, parts[0].name
        else:
            gguf_dir, gguf_name = tmp / "gguf", filename
            gguf_dir.mkdir()
            with (gguf_dir / gguf_name).open("wb") as out:
                for part in parts:
                    with part.open("rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 22)
        actual = sha256_files([gguf_dir / gguf_name])
        if actual != sha256:
            raise RuntimeError(
                f"GGUF sha256 mismatch for {filename}: expected {sha256}, got {actual}; "
                "reinstall the package that carries it"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_dir), gguf_file=gguf_name, dtype="float32"
        )
        # transformers refuses save_pretrained on a GGUF-loaded model; the weights are
        # already dequantized, so drop the quantization marker before saving.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        out_dir = tmp / "model"
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
        (out_dir / MARKER).write_text(
            json.dumps(
                {"format": _CACHE_FORMAT, "gguf_sha256": sha256, "gguf": filename, "files": files},
                indent=2,
            )
        )
        if target.exists():
            if is_valid_cache(target, sha256):
                return target  # another process finished first
            aside = target.parent / f".corrupt-{target.name}-{uuid.uuid4().hex[:8]}"
            os.replace(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(out_dir, target)
        except OSError:
            if not is_valid_cache(target, sha256):
                raise
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
