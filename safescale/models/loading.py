"""``load_model``: resolve a model spec to a ready :class:`LanguageModel`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from safescale.models.backend import LanguageModel
from safescale.models.cache import (
    cache_root,
    cached_model_dir,
    convert_gguf,
    is_valid_cache,
    sha256_files,
)
from safescale.models.registry import (
    DEFAULT_MODEL,
    RegisteredModel,
    UnknownModelError,
    get_registered,
    gguf_parts,
    looks_like_hub_id,
    unknown_model_message,
)

__all__ = [
    "load_model",
    "model_cache_status",
    "resolve_model_dir",
    "transformers_progress_bars",
    "warm_model",
]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    system_prompt: str | None = None,
    batch_size: int = 8,
    use_chat_template: bool | None = None,
    progress: bool = False,
    verbose: bool = False,
    prefix_cache_mb: float = 0,
) -> LanguageModel:
    """Load a language model.

    Args:
        spec: a registered name (``smollm2-135m-instruct``, ``gemma3-270m``; see
            ``safescale models``), a local model directory, a ``.gguf`` file, or a
            Hugging Face model id (resolved from the local Hugging Face cache only when
            ``HF_HUB_OFFLINE=1``).
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, or ``"auto"`` (accelerate
            ``device_map="auto"`` for large models).
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
        system_prompt: system turn for chat models (None keeps the template default).
        batch_size: prompts per forward pass in ``score_options``.
        use_chat_template: force the chat (True) or plain (False) template; None uses
            the registry setting, or the chat template whenever the tokenizer has one.
        progress: show a progress bar while converting a GGUF the first time.
        verbose: show transformers' own progress bars while the weights load
            ("Loading weights"); off by default so that commands print only their
            output.
        prefix_cache_mb: bound of the model's cross-call prefix cache in MiB
            (:mod:`safescale.models.prefix_cache`); 0 (default) prefills every prompt
            from scratch.

    Raises:
        UnknownModelError: the spec is not registered, not a path and not loadable; the
            message lists the registered names.
        MissingModelPackageError: a registered model's package is not installed; the
            message gives the exact install command.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    entry = get_registered(spec)
    if entry is not None:
        directory, model_hash = resolve_model_dir(entry, progress=progress)
        name = entry.name
        chat = entry.use_chat_template if use_chat_template is None else use_chat_template
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise UnknownModelError(f"GGUF file {path} does not exist")
            model_hash = sha256_files([path])
            directory = cached_model_dir(path.stem, model_hash)
            if not is_valid_cache(directory, model_hash):
                convert_gguf([path], path.name, model_hash, directory, progress=progress)
            name, chat = path.stem, use_chat_template
        elif path.is_dir():
            directory, name, chat = path, path.name, use_chat_template
            model_hash = directory_hash(path)
        elif _looks_like_hub_id(spec):
            directory, name, chat = None, spec, use_chat_template
            model_hash = f"hub:{spec}"
        else:
            raise UnknownModelError(_unknown_message(spec))
    return _build(
        str(directory) if directory is not None else spec,
        name=name,
        model_hash=model_hash,
        device=device,
        dtype=_DTYPES[dtype],
        system_prompt=system_prompt,
        batch_size=batch_size,
        use_chat_template=chat,
        verbose=verbose,
        prefix_cache_mb=prefix_cache_mb,
    )


def resolve_model_dir(entry: RegisteredModel, *, progress: bool = False) -> tuple[Path, str]:
    """The converted safetensors directory of a registered model (building it once).

    Returns:
        ``(directory, gguf_sha256)``.
    """
    parts = gguf_parts(entry)
    sha = entry.source.sha256 or cached_sha(parts)
    directory = cached_model_dir(Path(entry.source.filename).stem, sha)
    if not is_valid_cache(directory, sha):
        convert_gguf(parts, entry.source.filename, sha, directory, progress=progress)
    return directory, sha


def warm_model(name: str, *, progress: bool = True) -> Path:
    """Build the conversion cache of a registered model; returns its directory."""
    entry = get_registered(name)
    if entry is None:
        raise UnknownModelError(_unknown_message(name))
    return resolve_model_dir(entry, progress=progress)[0]


def model_cache_status(entry: RegisteredModel) -> dict[str, object]:
    """Whether a registered model's package is installed and its cache is warm."""
    from safescale.models.registry import MissingModelPackageError

    try:
        parts = gguf_parts(entry)
    except MissingModelPackageError:
        return {"installed": False, "cached": False, "cache_dir": None}
    sha = entry.source.sha256 or cached_sha(parts)
    directory = cached_model_dir(Path(entry.source.filename).stem, sha)
    return {"installed": True, "cached": is_valid_cache(directory, sha), "cache_dir": directory}


@contextmanager
def transformers_progress_bars(show: bool) -> Iterator[None]:
    """Show (``show=True``) or hide transformers' and huggingface_hub's progress bars
    for the duration of the block, then restore the previous setting.

    Use it around a ``from_pretrained`` call; the setting is process-wide while the
    block runs.
    """
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    if show == before:
        yield
        return
    if show:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()


def _build(
    source: str,
    *,
    name: str,
    model_hash: str,
    device: str,
    dtype: torch.dtype,
    system_prompt: str | None,
    batch_size: int,
    use_chat_template: bool | None,
    verbose: bool = False,
    prefix_cache_mb: float = 0,
) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with transformers_progress_bars(verbose):
            tokenizer = AutoTokenizer.from_pretrained(source)
            kwargs: dict[str, object] = {"dtype": dtype}
            if device == "auto":
                kwargs["device_map"] = "auto"
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise UnknownModelError(f"{_unknown_message(source)}\n(loading failed: {exc})") from exc
    if device != "auto":
        model = model.to(device)
    return LanguageModel(
        model,
        tokenizer,
        name=name,
        model_hash=model_hash,
        use_chat_template=use_chat_template,
        system_prompt=system_prompt,
        batch_size=batch_size,
        prefix_cache_mb=prefix_cache_mb,
    )


def cached_sha(parts: list[Path]) -> str:
    """sha256 of the (concatenated) parts, memoized by path, size and mtime."""
    memo_path = cache_root() / "sha256-memo.json"
    key = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in parts)
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    sha = sha256_files(parts)
    memo[key] = sha
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(memo, indent=1))
    os.replace(tmp, memo_path)
    return sha


def directory_hash(path: Path) -> str:
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.suffix in {".safetensors", ".bin"} or p.name == "config.json")
    )
    if not files:
        raise UnknownModelError(f"{path} holds no model weights (config.json + *.safetensors)")
    return cached_sha(files)


_looks_like_hub_id = looks_like_hub_id
_unknown_message = unknown_model_message
