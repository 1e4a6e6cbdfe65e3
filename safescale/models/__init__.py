"""The language-model backend: loading (registered names, HF ids, local dirs, GGUF),
option scoring, generation and teacher-forced internals; the model interface every
model implements (:mod:`safescale.models.interface`, ``docs/models.md``); plus the
sentence embedder."""

from __future__ import annotations

from safescale.models.backend import (
    ANSWER_CUE,
    NEUTRAL_MESSAGE,
    ContinuationScores,
    Generation,
    LanguageModel,
    PromptError,
    PromptPass,
)
from safescale.models.cache import cache_root
from safescale.models.embedder import Embedder, load_embedder
from safescale.models.interface import BlackBoxModel, WhiteBoxModel, is_whitebox
from safescale.models.internals import Internals
from safescale.models.loading import load_model, model_cache_status, warm_model
from safescale.models.microbatch import MicroBatchedLM, MicroBatcher, score_continuations_batched
from safescale.models.registry import (
    DEFAULT_MODEL,
    MissingModelPackageError,
    RegisteredModel,
    UnknownModelError,
    registered_models,
)

__all__ = [
    "ANSWER_CUE",
    "DEFAULT_MODEL",
    "NEUTRAL_MESSAGE",
    "BlackBoxModel",
    "ContinuationScores",
    "Embedder",
    "Generation",
    "Internals",
    "LanguageModel",
    "MicroBatchedLM",
    "MicroBatcher",
    "MissingModelPackageError",
    "PromptError",
    "PromptPass",
    "RegisteredModel",
    "UnknownModelError",
    "WhiteBoxModel",
    "cache_root",
    "is_whitebox",
    "load_embedder",
    "load_model",
    "model_cache_status",
    "registered_models",
    "score_continuations_batched",
    "warm_model",
]
