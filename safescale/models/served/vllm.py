"""``kind: vllm``: vLLM in the worker process (optional extra ``safescale[vllm]``).

The weights are loaded by ``vllm.LLM``; prompts are built by the in-process backend's
prompt code over vLLM's own tokenizer (:class:`~.prompting.PromptFormat`) and sent as
token ids, so the token sequences are exactly those of the transformers backend.

* **continuations**: ``prompt ids + continuation ids`` with
  ``SamplingParams(max_tokens=1, prompt_logprobs=0)``; the continuation's log-prob is
  the sum of the prompt log-probs at its positions (the engine's own teacher forcing:
  no offsets, no alignment question);
* **letters**: the cued prompt with ``logprobs=top_logprobs``, read like the OpenAI
  path (a letter outside the alternatives is censored and counted);
* **generation**: one request per sample with its own seed (derived from the run seed
  and the prompt), ``logprobs=0`` (the sampled tokens' log-probs).

Every pending prompt of a call goes to one ``generate`` call, and with
``items_in_flight > 1`` the scoring calls of the items in flight are merged first
(:class:`VLLMBatcher`), so a shard's pending prompts reach the engine together.

**Deterministic by default**: prefix caching off (vLLM issue #42019: with it on,
prompt log-probs depend on request order), a fixed engine seed, per-request seeds;
``engine_args`` can change them, and the settings used are recorded in the manifest
(:meth:`VLLMModel.served_info`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from safescale.models.backend import (
    ContinuationScores,
    Generation,
    PromptError,
    continuation_arrays,
)
from safescale.models.microbatch import MicroBatcher
from safescale.models.served.base import ALL_FORMULATIONS, ServedModel
from safescale.models.served.errors import ServedModelError
from safescale.models.served.openai import check_decoding, sample_seed
from safescale.models.served.settings import ServedSettings

__all__ = ["DETERMINISTIC_ENGINE_ARGS", "VLLMBatcher", "VLLMModel"]

#: Engine arguments used unless ``engine_args`` overrides them.
DETERMINISTIC_ENGINE_ARGS: dict[str, Any] = {"enable_prefix_caching": False, "seed": 0}


class VLLMModel(ServedModel):
    """vLLM in this process (see the module docstring); build it with :meth:`load`."""

    kind = "vllm"

    def __init__(self, settings: ServedSettings, llm: Any, engine_args: dict[str, Any]) -> None:
        tokenizer = llm.get_tokenizer()
        super().__init__(settings, (tokenizer, None))
        self.llm = llm
        self.engine_args = engine_args
        self.formulations = ALL_FORMULATIONS
        self.continuations = "prompt_logprobs"
        self.batch_size = 256
        max_len = getattr(getattr(llm.llm_engine, "model_config", None), "max_model_len", None)
        if settings.context_length is None and isinstance(max_len, int):
            self._context_length = max_len

    @classmethod
    def load(cls, settings: ServedSettings) -> VLLMModel:
        """Load the weights with vLLM (``pip install 'safescale[vllm]'``).

        Raises:
            ServedModelError: vLLM is not installed or the engine does not start.
        """
        try:
            import vllm
        except ImportError as exc:
            raise ServedModelError(
                f"model {settings.name!r}: kind: vllm needs vLLM in this environment "
                f"(pip install 'safescale[vllm]'): {exc}"
            ) from None
        spec = _resolve_spec(settings.model)
        engine_args = {**DETERMINISTIC_ENGINE_ARGS, **settings.engine_args}
        try:
            llm = vllm.LLM(model=spec, dtype=settings.dtype, **engine_args)
        except Exception as exc:  # the engine's own errors are many and unstable
            raise ServedModelError(
                f"model {settings.name!r}: vLLM could not load {spec!r}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            ) from None
        model = cls(settings, llm, engine_args)
        model.identity = {
            "model": settings.model,
            "weights": _weights_digest(spec),
            "vllm": _version("vllm"),
            "dtype": settings.dtype,
        }
        model.probe_record = {
            "endpoint": "in-process vLLM",
            "prompt_logprobs": "engine prompt_logprobs on token ids (no echo, no offsets)",
            "engine_args": {k: _jsonable(v) for k, v in engine_args.items()},
            "deterministic": not engine_args.get("enable_prefix_caching", False),
            "formulations": sorted(model.formulations),
            "continuations": model.continuations,
            "verdict": "every formulation (continuations from prompt_logprobs)",
        }
        return model

    # ---------------------------------------------------------------- engine calls
    def _generate(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        inputs = [{"prompt_token_ids": ids} for ids in prompts]
        return list(self.llm.generate(inputs, params, use_tqdm=False))

    def _check_room(self, length: int) -> None:
        if length > self.context_length:
            raise PromptError(
                f"prompt + continuation is {length} tokens; the context limit of "
                f"{self.name!r} is {self.context_length}"
            )

    def score_options(self, messages: Sequence[str], letters: Sequence[str]) -> np.ndarray:
        from vllm import SamplingParams

        letters = list(letters)
        out = np.zeros((len(messages), len(letters)), dtype=np.float32)
        if not messages:
            return out
        ids = self.letter_token_ids(letters)
        prompts = [self.prompt_ids(m, answer_cue=True) for m in messages]
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.settings.top_logprobs)
        for row, result in enumerate(self._generate(prompts, [params] * len(prompts))):
            top = result.outputs[0].logprobs[0]  # token id -> Logprob
            out[row] = self.censored_row({t: lp.logprob for t, lp in top.items()}, ids)
        self.count("letter_prompts", len(messages))
        return out

    def score_continuations(
        self,
        messages: Sequence[str],
        continuations: Sequence[Sequence[str]] | Sequence[str],
        *,
        answer_cue: bool = True,
    ) -> ContinuationScores:
        from vllm import SamplingParams

        per_message, logprob, n_tokens, n_chars = continuation_arrays(messages, continuations)
        jobs, prompts = [], []
        for row, (message, texts) in enumerate(zip(messages, per_message, strict=True)):
            prompt = self.prompt_ids(message, answer_cue=answer_cue)
            for col, text in enumerate(texts):
                cont = self.continuation_ids(text)
                self._check_room(len(prompt) + len(cont))
                jobs.append((row, col, len(prompt), cont, text))
                prompts.append(prompt + cont)
        if not jobs:
            return ContinuationScores(logprob=logprob, n_tokens=n_tokens, n_chars=n_chars)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        results = self._generate(prompts, [params] * len(prompts))
        for (row, col, start, cont, text), result in zip(jobs, results, strict=True):
            rows = result.prompt_logprobs
            total = 0.0
            for offset, tid in enumerate(cont):
                entry = rows[start + offset]
                if entry is None or tid not in entry:
                    raise ServedModelError(
                        f"model {self.name!r}: vLLM returned no prompt log-prob for token "
                        f"{tid} at position {start + offset}"
                    )
                total += float(entry[tid].logprob)
            logprob[row, col] = total
            n_tokens[row, col] = len(cont)
            n_chars[row, col] = len(text.strip())
        self.count("continuations", len(jobs))
        return ContinuationScores(logprob=logprob, n_tokens=n_tokens, n_chars=n_chars)

    def score_text(self, prefix: str, text: str) -> tuple[float, int]:
        """``(sum log p(text tokens | prefix), tokens)`` for raw strings (P(True))."""
        tok = self.fmt.tokenizer
        head = list(tok(prefix, add_special_tokens=False)["input_ids"])
        body = list(tok(text, add_special_tokens=False)["input_ids"])
        scores = self._token_rows(head, body, top=0)
        return float(sum(scores[0])), len(body)

    def token_scores(self, prefix: str, text: str, *, top: int | None = None):
        """Per-token log-probs and alternatives of ``text`` after ``prefix``."""
        from safescale.models.served.openai import TokenScores

        tok = self.fmt.tokenizer
        head = list(tok(prefix, add_special_tokens=False)["input_ids"])
        body = list(tok(text, add_special_tokens=False)["input_ids"])
        k = self.settings.top_logprobs if top is None else top
        values, alternatives = self._token_rows(head, body, top=k)
        pieces = [self.fmt.piece(body, t) for t in range(len(body))]
        return TokenScores(pieces, values, alternatives)

    def _token_rows(
        self, head: list[int], body: list[int], *, top: int
    ) -> tuple[list[float], list[dict[str, float]]]:
        from vllm import SamplingParams

        if not body:
            raise PromptError("the text has no tokens")
        self._check_room(len(head) + len(body))
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top)
        (result,) = self._generate([head + body], [params])
        values, alternatives = [], []
        for offset, tid in enumerate(body):
            entry = result.prompt_logprobs[len(head) + offset]
            values.append(float(entry[tid].logprob))
            alternatives.append({str(lp.decoded_token): float(lp.logprob) for lp in entry.values()})
        return values, alternatives

    def generate(
        self,
        messages: Sequence[str],
        *,
        max_new_tokens: int = 64,
        n: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
        answer_cue: bool = False,
    ) -> list[list[Generation]]:
        from vllm import SamplingParams

        check_decoding(max_new_tokens, n, temperature)
        jobs, prompts, params = [], [], []
        for row, message in enumerate(messages):
            prompt = self.prompt_ids(message, answer_cue=answer_cue)
            text = self.prompt_text(message, answer_cue=answer_cue)
            for index in range(n):
                jobs.append(row)
                prompts.append(prompt)
                params.append(
                    SamplingParams(
                        max_tokens=max_new_tokens,
                        temperature=float(temperature),
                        top_p=1.0,
                        top_k=-1 if temperature > 0 else 1,
                        seed=sample_seed(seed, index, text) if temperature > 0 else None,
                        logprobs=0,
                    )
                )
        out: list[list[Generation]] = [[] for _ in messages]
        for row, result in zip(jobs, self._generate(prompts, params), strict=True):
            sample = result.outputs[0]
            ids = tuple(int(t) for t in sample.token_ids)
            lps = tuple(
                float(step[tid].logprob) for step, tid in zip(sample.logprobs, ids, strict=True)
            )
            out[row].append(Generation(text=sample.text, token_ids=ids, token_logprobs=lps))
        self.count("generations", len(jobs))
        return out

    def served_info(self) -> dict[str, Any]:
        info = super().served_info()
        info["engine_args"] = {k: _jsonable(v) for k, v in self.engine_args.items()}
        return info


class VLLMBatcher(MicroBatcher):
    """The micro-batcher of a :class:`VLLMModel`: the merged scoring calls of the items
    in flight go to the model's own calls, each one ``generate`` over every prompt."""

    def _run(self, batch: list) -> None:
        messages = [m for r in batch for m in r.messages]
        try:
            if batch[0].kind == "continuations":
                (answer_cue,) = batch[0].group
                per_message = [c for r in batch for c in r.payload]
                scores = self.lm.score_continuations(messages, per_message, answer_cue=answer_cue)
                start = 0
                for r in batch:
                    stop = start + len(r.messages)
                    width = max((len(c) for c in r.payload), default=0)
                    r.result = ContinuationScores(
                        logprob=scores.logprob[start:stop, :width].copy(),
                        n_tokens=scores.n_tokens[start:stop, :width].copy(),
                        n_chars=scores.n_chars[start:stop, :width].copy(),
                    )
                    start = stop
            else:
                logits = self.lm.score_options(messages, batch[0].payload)
                start = 0
                for r in batch:
                    r.result = np.array(logits[start : start + len(r.messages)])
                    start += len(r.messages)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            for r in batch:
                r.result = None
                self._run([r])


def _resolve_spec(spec: str) -> str:
    """A registered model name resolves to its converted safetensors directory."""
    from safescale.models.registry import get_registered

    entry = get_registered(spec)
    if entry is None:
        return spec
    from safescale.models.loading import resolve_model_dir

    return str(resolve_model_dir(entry)[0])


def _weights_digest(spec: str) -> str:
    path = Path(spec)
    if path.is_dir():
        from safescale.models.loading import directory_hash

        return directory_hash(path)
    return hashlib.sha256(f"hub:{spec}".encode()).hexdigest()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
