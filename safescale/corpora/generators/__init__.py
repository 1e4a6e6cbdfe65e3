"""Rule generators of the bundled corpora, found by name.

``generate_corpus(name, out_dir, n=..., seed=...)`` writes a corpus directory. The
bundled snapshots are exactly ``BUNDLED_SPECS`` run through the generators; regenerate
them with ``regenerate_bundled()`` (or ``safescale corpus generate NAME --bundled``)
after changing a generator, and commit the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safescale.corpora.generators import radiology, retina
from safescale.corpora.loader import bundled_corpus_path, write_corpus
from safescale.corpora.schema import Item, Manifest, Passage

__all__ = [
    "BUNDLED_SPECS",
    "GENERATORS",
    "GeneratorSpec",
    "generate",
    "generate_corpus",
    "regenerate_bundled",
]

Generated = tuple[Manifest, list[Passage], list[Item]]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GeneratorSpec:
    """A registered generator: its function and whether it takes ``n``."""

    function: Callable[..., Generated]
    default_n: int | None
    description: str


GENERATORS: dict[str, GeneratorSpec] = {
    "radiology-guidelines": GeneratorSpec(
        radiology.generate, None, "graded radiology guideline passages and rule-generated items"
    ),
    "retina-rules": GeneratorSpec(
        retina.generate, retina.DEFAULT_N, "diabetic-retinopathy E-Align/E-Conflict/E-Gap items"
    ),
}

#: (n, seed) of each bundled snapshot.
BUNDLED_SPECS: dict[str, tuple[int | None, int]] = {
    "radiology-guidelines": (None, 0),
    "retina-rules": (600, 0),
}


def generate(
    name: str, *, n: int | None = None, seed: int = 0, progress: Progress | None = None
) -> Generated:
    """Run a generator in memory.

    Args:
        name: a key of :data:`GENERATORS`.
        n: number of items (generators with a fixed grid accept only None).
        seed: random seed.
        progress: optional callback (done, total).

    Returns:
        (manifest, passages, items).

    Raises:
        KeyError: unknown generator.
        ValueError: ``n`` not supported by that generator.
    """
    if name not in GENERATORS:
        raise KeyError(f"unknown generator {name!r} (known: {', '.join(sorted(GENERATORS))})")
    spec = GENERATORS[name]
    if n is None and spec.default_n is not None:
        n = spec.default_n
    return spec.function(n, seed=seed, progress=progress)


def generate_corpus(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    n: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Generate a corpus and write it to ``out_dir`` (see :func:`generate`)."""
    manifest, passages, items = generate(name, n=n, seed=seed, progress=progress)
    return write_corpus(out_dir, manifest, passages, items, overwrite=overwrite)


def regenerate_bundled(names: list[str] | None = None) -> list[Path]:
    """Rewrite the bundled snapshots from :data:`BUNDLED_SPECS`."""
    written = []
    for name in names or list(BUNDLED_SPECS):
        n, seed = BUNDLED_SPECS[name]
        written.append(
            generate_corpus(name, bundled_corpus_path(name), n=n, seed=seed, overwrite=True)
        )
    return written
