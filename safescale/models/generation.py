"""Generation of the in-process backend: greedy (verifying prompt-lookup drafts) or pure
sampling, seeded per prompt, from a fresh prefill or from an open prompt pass's cache."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from safescale.models.passes import PromptPass
from safescale.models.prefix_cache import sliding_window

__all__ = ["Generation", "GenerationMixin"]


@dataclass(frozen=True)
class Generation:
    """One generated continuation.

    Attributes:
        text: decoded continuation (special tokens removed, stops at EOS).
        token_ids: the generated token ids (EOS excluded).
        token_logprobs: log p of each generated token under the *raw* logits (before
            temperature or any other processing).
    """

    text: str
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]

    @property
    def logprob(self) -> float:
        """Sum of the token log-probabilities."""
        return float(sum(self.token_logprobs))


class GenerationMixin:
    """:meth:`generate` and :meth:`generate_from` (needs the
    :class:`~safescale.models.backend.LanguageModel` core and the prompting methods)."""

    #: Version of how :meth:`generate` lays out the passes of a cued prompt (the prompt
    #: prefilled without its last token, then prompt end + cue fed with the samples).
    #: Part of :class:`~safescale.agents.lmcache.CachedLM`'s keys for cued generations.
    CUED_SAMPLING_LAYOUT = 2

    @torch.inference_mode()
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
        """Generate ``n`` continuations per message.

        ``temperature == 0`` is greedy (then ``n`` must be 1; decoded with prompt-lookup
        drafts, :meth:`_greedy`); otherwise pure sampling at that temperature (no
        top-k/top-p). Each message is generated on its own with
        a seed derived from ``seed`` and the prompt, so results do not depend on how
        messages are batched or ordered and are reproducible for a seed.

        With ``answer_cue`` (when the cue extends the plain prompt token-for-token) the
        plain prompt but its last token is prefilled once, exactly as
        :meth:`open_prompt` does, and its last token + the cue are fed with the first
        decoding step of the ``n`` samples; :meth:`generate_from` decodes from an open
        prompt's cache the same way, so both give the same tokens for a seed.

        Returns:
            One list of ``n`` :class:`Generation` per message.
        """
        config, stop_ids = self._generation_config(max_new_tokens, n, temperature)
        results: list[list[Generation]] = []
        for message in messages:
            prompt = self.prompt_ids(message, answer_cue=answer_cue)
            plain = self.prompt_ids(message) if answer_cue else prompt
            cache = None
            if answer_cue and len(plain) > 1 and prompt[: len(plain)] == plain:
                cache = self.prefill(plain[:-1], logits=False)[1]
            elif (n > 1 or self.prefix_cache_active()) and len(prompt) > 1:
                # Prefill the prompt once and share its KV cache across the n samples
                # (num_return_sequences would prefill it n times); with a prefix
                # cache, over its longest cached prefix.
                cache = self.prefill(prompt[:-1], logits=False)[1]
            results.append(self._sample(prompt, cache, n, seed, config, stop_ids))
        return results

    @torch.inference_mode()
    def generate_from(
        self,
        state: PromptPass,
        *,
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """``generate([state.message], answer_cue=True, ...)[0]`` decoded from ``state``'s
        prompt cache: no prompt prefill, the same tokens (and log-probs) for a seed.

        Only the prefilled prompt part of the cache is used (a view of it; ``state`` is
        not changed), whatever ``state`` has been fed since; when the cache cannot be
        cut back to it (e.g. sliding-window layers) this is :meth:`generate`.
        """
        config, stop_ids = self._generation_config(max_new_tokens, n, temperature)
        prompt = self.prompt_ids(state.message, answer_cue=True)
        plain = state.prompt
        cache = None
        if len(plain) > 1 and prompt[: len(plain)] == plain:
            cache = state.prompt_cache()
        if cache is None:
            return self.generate(
                [state.message],
                max_new_tokens=max_new_tokens,
                n=n,
                temperature=temperature,
                seed=seed,
                answer_cue=True,
            )[0]
        return self._sample(prompt, cache, n, seed, config, stop_ids)

    def _generation_config(self, max_new_tokens: int, n: int, temperature: float):
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if temperature == 0 and n != 1:
            raise ValueError("greedy decoding (temperature=0) gives one answer; use n=1")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        from transformers import GenerationConfig

        eos = self.tokenizer.eos_token_id
        stop_ids = {eos} if eos is not None else set()
        for extra in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(extra)
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                stop_ids.add(tid)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=None,
            top_p=None,
            num_return_sequences=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=sorted(stop_ids) or None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        return config, stop_ids

    def _sample(
        self, prompt: list[int], cache, n: int, seed: int, config, stop_ids: set[int]
    ) -> list[Generation]:
        """``n`` continuations of ``prompt`` over ``cache`` (a prefix of the prompt's
        KV cache for one row, or None; consumed), seeded from ``seed`` and the prompt."""
        if n == 1 and not config.do_sample:
            return [self._greedy(prompt, cache, config.max_new_tokens, stop_ids)]
        if cache is not None and n > 1:
            cache.batch_repeat_interleave(n)
        input_ids = torch.tensor([prompt], device=self.device).repeat(n, 1)
        with _seeded(_derive_seed(seed, prompt)):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                cache=cache,
                generation_config=config,
            )
        new_tokens = out.sequences[:, len(prompt) :]
        raw = torch.stack(out.logits, dim=1).float()  # [n, T, V] unprocessed
        logprobs = torch.log_softmax(raw, dim=-1).gather(-1, new_tokens.unsqueeze(-1))
        gens = []
        for row in range(new_tokens.shape[0]):
            ids, lps = [], []
            for tok, lp in zip(new_tokens[row].tolist(), logprobs[row, :, 0].tolist(), strict=True):
                if tok in stop_ids:
                    break
                ids.append(tok)
                lps.append(lp)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            gens.append(Generation(text=text, token_ids=tuple(ids), token_logprobs=tuple(lps)))
        return gens

    #: Draft tokens per verification pass of greedy decoding (prompt lookup); 0 decodes
    #: one token per pass.
    PROMPT_LOOKUP_TOKENS = 4
    #: Longest n-gram of the text so far that is looked up to find a draft.
    PROMPT_LOOKUP_NGRAM = 3

    def _greedy(
        self, prompt: list[int], cache, max_new_tokens: int, stop_ids: set[int]
    ) -> Generation:
        """Greedy decoding of ``prompt`` over ``cache`` (a one-row cache of a prefix of
        the prompt, or None; consumed), with prompt-lookup drafts.

        Decoding one token per forward reads every weight of the model for one token;
        on a CPU that read, not the arithmetic, is the cost of a step. So each step
        feeds, after the last token, up to :attr:`PROMPT_LOOKUP_TOKENS` draft tokens:
        the tokens that followed the most recent earlier occurrence of the text's last
        n-gram (prompt lookup decoding, Saxena 2023: summaries and citations copy the
        evidence). The forward's argmax at every fed position says which drafts the
        model would have produced itself; those are kept (with the next token it
        predicts), the rest are cut from the cache. The tokens are the greedy tokens
        of one-token steps up to float rounding (several positions in one pass),
        checked in ``tests/integration/test_models_generation_tiny.py``; log-probs are
        of the raw logits, as for sampling. Models whose cache cannot be cut back
        (sliding-window layers) decode one token per step.
        """
        dev = self.device
        done = cache.get_seq_length() if cache is not None else 0
        feed = list(prompt[done:])
        seq = list(prompt)
        draft_len = self.PROMPT_LOOKUP_TOKENS if sliding_window(self) is None else 0
        ids: list[int] = []
        lps: list[float] = []
        while len(ids) < max_new_tokens:
            room = max_new_tokens - len(ids) - 1
            draft = _lookup_draft(seq, min(draft_len, room), self.PROMPT_LOOKUP_NGRAM)
            out = self.model(
                input_ids=torch.tensor([feed + draft], device=dev),
                cache=cache,
                use_cache=True,
                logits_to_keep=len(draft) + 1,
            )
            cache = out.cache
            logits = out.logits[0].float()
            preds = logits.argmax(-1).tolist()
            kept = 0
            while kept < len(draft) and draft[kept] == preds[kept]:
                kept += 1
            if kept < len(draft):
                cache.crop(kept - len(draft))  # a negative count: drop the rejected drafts
            new = preds[: kept + 1]
            logp = torch.log_softmax(logits[: kept + 1], dim=-1)
            new_lps = logp.gather(-1, torch.tensor(new, device=logp.device)[:, None])[:, 0]
            for tok, lp in zip(new, new_lps.tolist(), strict=True):
                if tok in stop_ids:
                    return self._generation(ids, lps)
                ids.append(tok)
                lps.append(lp)
                seq.append(tok)
            feed = [new[-1]]
        return self._generation(ids, lps)

    def _generation(self, ids: list[int], lps: list[float]) -> Generation:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Generation(text=text, token_ids=tuple(ids), token_logprobs=tuple(lps))


def _lookup_draft(seq: list[int], n_tokens: int, max_ngram: int) -> list[int]:
    """Up to ``n_tokens`` tokens that followed the most recent earlier occurrence of the
    longest (``max_ngram`` down to 1) trailing n-gram of ``seq``; [] when none."""
    if n_tokens <= 0:
        return []
    for size in range(min(max_ngram, len(seq) - 1), 0, -1):
        tail = seq[-size:]
        for start in range(len(seq) - size - 1, -1, -1):
            if seq[start : start + size] == tail:
                return seq[start + size : start + size + n_tokens]
    return []


def _derive_seed(seed: int, prompt: Sequence[int]) -> int:
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prompt))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


@contextmanager
def _seeded(seed: int):
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
