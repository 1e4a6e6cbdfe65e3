"""The language-model backend: the one way the rest of safescale talks to an LM.

Prompt format
-------------
Every call takes *messages*: the text of one user turn (question, lettered options and
any evidence). The backend wraps it in the model's prompt format:

* models with a chat template (and registered as chat models): the template applied to
  ``[{"role": "system", ...}?, {"role": "user", "content": message}]`` with the
  generation prompt, i.e. the text up to the start of the assistant turn;
* base models (no chat template, e.g. Gemma-3-270M): the **plain template**
  ``"{message}\\n"`` tokenized with the tokenizer's special tokens and always starting
  with BOS, the assistant's text following directly.

When an *answer cue* is requested, ``"Answer:"`` is appended to the assistant turn: the
option letter is the next token, which is where :meth:`LanguageModel.score_options`
reads the letter logits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from safescale.models.internals import Internals

__all__ = [
    "ANSWER_CUE",
    "NEUTRAL_MESSAGE",
    "ContinuationScores",
    "Generation",
    "LanguageModel",
    "PromptError",
]

ANSWER_CUE = "Answer:"
#: The user turn of the unconditional (PMI) prompt: no question, no evidence, the same
#: prompt format and answer cue, so ``log p(text | neutral)`` is the model's prior for an
#: answer text in this position.
NEUTRAL_MESSAGE = "Question:"
LensMode = Literal["full", "topk", "none", "off"]


class PromptError(ValueError):
    """An empty or unusable prompt or response."""


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


@dataclass(frozen=True)
class ContinuationScores:
    """Log-probabilities of continuations, one row per prompt.

    Attributes:
        logprob: ``float64 [n_prompts, n_continuations]``: ``sum_t log p(c_t | prompt,
            c_<t)`` under the raw logits.
        n_tokens: ``int [n_prompts, n_continuations]``: tokens of each continuation.
        n_chars: ``int [n_prompts, n_continuations]``: characters of each continuation.
    """

    logprob: np.ndarray
    n_tokens: np.ndarray
    n_chars: np.ndarray


def continuation_arrays(
    messages: Sequence[str], continuations: Sequence[Sequence[str]] | Sequence[str]
) -> tuple[list[list[str]], np.ndarray, np.ndarray, np.ndarray]:
    """The continuations per message (one list per message, or one list shared by all)
    and empty ``logprob`` / ``n_tokens`` / ``n_chars`` arrays to fill."""
    if continuations and isinstance(continuations[0], str):
        per_message = [list(continuations)] * len(messages)  # type: ignore[list-item]
    else:
        per_message = [list(c) for c in continuations]  # type: ignore[arg-type]
    if len(per_message) != len(messages):
        raise ValueError("give one list of continuations per message (or one shared list)")
    width = max((len(c) for c in per_message), default=0)
    return (
        per_message,
        np.full((len(messages), width), np.nan),
        np.zeros((len(messages), width), dtype=np.int64),
        np.zeros((len(messages), width), dtype=np.int64),
    )


class LanguageModel:
    """A causal LM with its tokenizer and prompt format.

    Build it with :func:`safescale.models.load_model` (or
    :func:`safescale.models.tiny.build_tiny_model` in tests).

    Args:
        model: a transformers causal-LM module (eval mode is set here).
        tokenizer: its fast tokenizer.
        name: display / registry name.
        model_hash: content hash of the weights (cache keys depend on it).
        use_chat_template: wrap prompts in the chat template (needs one on the
            tokenizer); False selects the plain template.
        system_prompt: optional system turn for chat templates (None keeps the
            template's own default).
        batch_size: maximum prompts per forward pass in :meth:`score_options`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        name: str,
        model_hash: str,
        use_chat_template: bool | None = None,
        system_prompt: str | None = None,
        batch_size: int = 8,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.model_hash = model_hash
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if self.use_chat_template and not has_template:
            raise ValueError(f"model {name!r}: chat template requested but the tokenizer has none")
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        if self.pad_token_id is None:
            self.pad_token_id = 0
        self._letter_cache: dict[tuple[str, ...], list[int]] = {}

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        """Number of transformer layers ``L``."""
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def context_length(self) -> int:
        """Maximum sequence length the model was trained for (tokens)."""
        cfg = self.model.config.get_text_config()
        return int(getattr(cfg, "max_position_embeddings", 2048))

    @property
    def prompt_format_id(self) -> str:
        """A short hash of the prompt format (template + system prompt + cue)."""
        payload = "\x1f".join(
            [
                "chat" if self.use_chat_template else "plain",
                str(getattr(self.tokenizer, "chat_template", "")) if self.use_chat_template else "",
                self.system_prompt or "",
                ANSWER_CUE,
            ]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, message: str, *, answer_cue: bool = False) -> str:
        """The full prompt string for one user turn (see the module docstring)."""
        if not isinstance(message, str) or not message.strip():
            raise PromptError("the prompt message is empty")
        if self.use_chat_template:
            turns = []
            if self.system_prompt is not None:
                turns.append({"role": "system", "content": self.system_prompt})
            turns.append({"role": "user", "content": message})
            text = self.tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=True
            )
        else:
            text = f"{message}\n"
        return text + ANSWER_CUE if answer_cue else text

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        """Token ids of :meth:`prompt_text` (special tokens as the format requires)."""
        text = self.prompt_text(message, answer_cue=answer_cue)
        ids = list(self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if not self.use_chat_template and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)  # base models expect BOS; some tokenizers do not add it
        return ids

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def letter_token_ids(self, letters: Sequence[str]) -> list[int]:
        """The token id of each option letter as it follows the answer cue.

        After ``"Answer:"`` a tokenizer normally emits the letter with a leading space
        (``" A"``). The id is found by tokenizing ``cue + " " + letter`` and taking the
        token that follows the cue's own tokens; if that is not a single token the
        bare letter is used. Letters must map to distinct single tokens.
        """
        key = tuple(letters)
        if key in self._letter_cache:
            return self._letter_cache[key]
        cue_ids = self.tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
        ids: list[int] = []
        for letter in letters:
            chosen = None
            for variant in (f" {letter}", letter):
                full = self.tokenizer(ANSWER_CUE + variant, add_special_tokens=False)["input_ids"]
                if full[: len(cue_ids)] == cue_ids and len(full) == len(cue_ids) + 1:
                    chosen = full[-1]
                    break
            if chosen is None:
                raise PromptError(
                    f"option letter {letter!r} is not a single token for model {self.name!r}"
                )
            ids.append(int(chosen))
        if len(set(ids)) != len(ids):
            raise PromptError(f"option letters {list(letters)} share a token id: {ids}")
        self._letter_cache[key] = ids
        return ids

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def score_options(self, messages: Sequence[str], letters: Sequence[str]) -> np.ndarray:
        """Raw logits of the option letters at the answer position.

        One forward pass per message (batched with left padding, ``batch_size`` at a
        time, sorted by length to limit padding).

        Returns:
            ``float32`` array ``[len(messages), len(letters)]``.
        """
        if not messages:
            return np.zeros((0, len(letters)), dtype=np.float32)
        letter_ids = torch.tensor(self.letter_token_ids(letters))
        encoded = [self.prompt_ids(m, answer_cue=True) for m in messages]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = np.zeros((len(messages), len(letters)), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch_idx = order[start : start + self.batch_size]
            input_ids, attention_mask, position_ids = self._left_pad(
                [encoded[i] for i in batch_idx]
            )
            logits = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=1,
            ).logits[:, -1, :]
            out[batch_idx] = logits[:, letter_ids.to(logits.device)].float().cpu().numpy()
        return out

    def continuation_ids(self, text: str) -> list[int]:
        """Token ids of a continuation as it follows the answer cue: ``" " + text``
        tokenized on its own (no special tokens), as lm-evaluation-harness does with its
        target delimiter; ids are concatenated to the prompt's, never re-tokenized
        together."""
        if not isinstance(text, str) or not text.strip():
            raise PromptError("a continuation is empty")
        return list(self.tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def score_continuations(
        self,
        messages: Sequence[str],
        continuations: Sequence[Sequence[str]] | Sequence[str],
        *,
        answer_cue: bool = True,
    ) -> ContinuationScores:
        """Log-probability of each continuation after each prompt (the cloze formulation).

        Each prompt is prefilled once; its continuations then run together as one
        right-padded batch over a copy of that KV cache (the continuation of a prompt
        never recomputes the prompt). A one-token continuation costs no extra pass: its
        log-prob is read from the prefill's last position.

        Args:
            messages: user turns (see :meth:`prompt_text`).
            continuations: one list of texts per message, or one list shared by all.
            answer_cue: append the answer cue to the prompt (the continuation follows
                ``"Answer:"``).
        """
        per_message, logprob, n_tokens, n_chars = continuation_arrays(messages, continuations)
        for row, (message, texts) in enumerate(zip(messages, per_message, strict=True)):
            prompt = self.prompt_ids(message, answer_cue=answer_cue)
            conts = [self.continuation_ids(t) for t in texts]
            scores = self._continuation_logprobs(prompt, conts)
            logprob[row, : len(texts)] = scores
            n_tokens[row, : len(texts)] = [len(c) for c in conts]
            n_chars[row, : len(texts)] = [len(t.strip()) for t in texts]
        return ContinuationScores(logprob=logprob, n_tokens=n_tokens, n_chars=n_chars)

    def _continuation_logprobs(self, prompt: list[int], conts: list[list[int]]) -> list[float]:
        if len(prompt) + max(len(c) for c in conts) > self.context_length:
            raise PromptError(
                f"prompt + continuation exceeds the context limit of {self.name!r} "
                f"({self.context_length} tokens)"
            )
        dev = self.device
        out = self.model(
            input_ids=torch.tensor([prompt], device=dev), use_cache=True, logits_to_keep=1
        )
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        totals = [float(first[c[0]]) for c in conts]
        longer = [i for i, c in enumerate(conts) if len(c) > 1]
        if not longer:
            return totals
        cache = out.cache
        if len(longer) > 1:
            cache.batch_repeat_interleave(len(longer))
        # Right padding: real tokens never attend to the pads that follow them.
        feed = [conts[i][:-1] for i in longer]
        width = max(len(f) for f in feed)
        ids = torch.full((len(longer), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(longer), len(prompt) + width), dtype=torch.long)
        mask[:, : len(prompt)] = 1
        for r, f in enumerate(feed):
            ids[r, : len(f)] = torch.tensor(f)
            mask[r, len(prompt) : len(prompt) + len(f)] = 1
        logits = self.model(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), cache=cache, use_cache=True
        ).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for r, i in enumerate(longer):
            targets = torch.tensor(conts[i][1:], device=logp.device)
            totals[i] += float(logp[r, : len(targets)].gather(-1, targets[:, None]).sum())
        return totals

    def _left_pad(
        self, sequences: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        return ids.to(dev), mask.to(dev), positions.to(dev)

    # ------------------------------------------------------------------ generation
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

        ``temperature == 0`` is greedy (then ``n`` must be 1); otherwise pure sampling
        at that temperature (no top-k/top-p). Each message is generated on its own with
        a seed derived from ``seed`` and the prompt, so results do not depend on how
        messages are batched or ordered and are reproducible for a seed.

        Returns:
            One list of ``n`` :class:`Generation` per message.
        """
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
        results: list[list[Generation]] = []
        for message in messages:
            prompt = self.prompt_ids(message, answer_cue=answer_cue)
            input_ids = torch.tensor([prompt], device=self.device)
            prompt_seed = _derive_seed(seed, prompt)
            cache = None
            if n > 1 and len(prompt) > 1:
                # Prefill the prompt once and share its KV cache across the n samples
                # (num_return_sequences would prefill it n times).
                cache = self.model(input_ids=input_ids[:, :-1], use_cache=True).cache
                cache.batch_repeat_interleave(n)
            input_ids = input_ids.repeat(n, 1)
            with _seeded(prompt_seed):
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
                for tok, lp in zip(
                    new_tokens[row].tolist(), logprobs[row, :, 0].tolist(), strict=True
                ):
                    if tok in stop_ids:
                        break
                    ids.append(tok)
                    lps.append(lp)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                gens.append(Generation(text=text, token_ids=tuple(ids), token_logprobs=tuple(lps)))
            results.append(gens)
        return results

    # ------------------------------------------------------------------ internals
    @torch.inference_mode()
    def internals(
        self,
        message: str,
        response: str | Sequence[int],
        *,
        attentions: bool = False,
        lens: LensMode = "full",
        topk: int = 20,
    ) -> Internals:
        """One teacher-forced pass over ``prompt_ids(message) + response ids``.

        The response ids are concatenated to the prompt ids (a string response is
        tokenized on its own, without special tokens; the concatenated text is never
        re-tokenized). See :class:`~safescale.models.internals.Internals` for shapes.

        Args:
            message: the user turn (prompt without answer cue).
            response: the assistant's text, or its token ids.
            attentions: also return attention weights (runs the pass with eager
                attention).
            lens: ``"full"`` keeps every layer's logit-lens log-probabilities
                ``[L+1, R, V]``; ``"topk"`` keeps only the top ``topk`` per layer and
                token; ``"none"`` keeps neither (KL-to-final and entropy per layer are
                still computed in these three modes); ``"off"`` skips the logit lens
                entirely (a plain forward with hidden states).
        """
        prompt = self.prompt_ids(message)
        if isinstance(response, str):
            if not response.strip():
                raise PromptError("the response is empty")
            response_ids = list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        else:
            response_ids = [int(t) for t in response]
        if not response_ids:
            raise PromptError("the response has no tokens")
        total = len(prompt) + len(response_ids)
        if total > self.context_length:
            raise PromptError(
                f"prompt + response is {total} tokens; the context limit of "
                f"{self.name!r} is {self.context_length}"
            )
        ids = torch.tensor([prompt + response_ids], device=self.device)
        P, R = len(prompt), len(response_ids)
        positions = torch.arange(P - 1, P + R - 1, device=self.device)
        with self._attention_mode("eager" if attentions else None):
            out = self.model(
                input_ids=ids,
                use_cache=False,
                output_hidden_states=True,
                output_attentions=attentions,
                logits_to_keep=R + 1,  # only the prediction positions need the LM head
            )
        logits = out.logits[0, :R].float()
        hidden = torch.stack([h[0, positions] for h in out.hidden_states]).float()
        lens_logp = kl = entropy = topk_lp = topk_ids = None
        if lens != "off":
            # One layer at a time: the [R, V] temporaries stay cache-sized; the full
            # [L+1, R, V] stack is only built when asked for.
            final = torch.log_softmax(logits, dim=-1)
            p_final = final.exp()
            kls, entropies, kept, tops = [], [], [], []
            for layer_logp in self._logit_lens_layers(hidden, final):
                kls.append((p_final * (final - layer_logp)).sum(-1).clamp(min=0.0))
                entropies.append(-(layer_logp.exp() * layer_logp).sum(-1))
                if lens == "full":
                    kept.append(layer_logp)
                elif lens == "topk":
                    tops.append(layer_logp.topk(min(topk, layer_logp.shape[-1]), dim=-1))
            kl, entropy = torch.stack(kls), torch.stack(entropies)
            if lens == "full":
                lens_logp = torch.stack(kept)
            elif lens == "topk":
                topk_lp = torch.stack([t.values for t in tops])
                topk_ids = torch.stack([t.indices for t in tops])
        att = None
        if attentions:
            if not out.attentions or out.attentions[0] is None:
                raise RuntimeError(f"model {self.name!r} returned no attention weights")
            att = torch.stack([a[0][:, positions, :] for a in out.attentions]).float()
        return Internals(
            input_ids=ids[0].cpu(),
            prompt_length=P,
            response_ids=torch.tensor(response_ids),
            logits=logits.cpu(),
            hidden_states=hidden.cpu(),
            logit_lens=lens_logp.cpu() if lens == "full" else None,
            lens_topk_logprobs=None if topk_lp is None else topk_lp.cpu(),
            lens_topk_ids=None if topk_ids is None else topk_ids.cpu(),
            lens_kl_to_final=None if kl is None else kl.cpu(),
            lens_entropy=None if entropy is None else entropy.cpu(),
            attentions=None if att is None else att.cpu(),
        )

    def _logit_lens_layers(self, hidden: torch.Tensor, final_logp: torch.Tensor):
        """Yield ``log_softmax(lm_head(norm(h_l)))`` for each layer ``l < L``, then the
        final layer's log-probabilities (``final_logp``, from the model's own logits)."""
        norm = self._final_norm()
        head = self.model.get_output_embeddings()
        cfg = self.model.config.get_text_config()
        softcap = getattr(cfg, "final_logit_softcapping", None)
        for h in hidden[:-1]:
            z = head(norm(h.to(head.weight.dtype))).float()
            if softcap:
                z = torch.tanh(z / softcap) * softcap
            yield torch.log_softmax(z, dim=-1)
        yield final_logp

    def _final_norm(self) -> torch.nn.Module:
        base = getattr(self.model, "model", None)
        for owner in (base, getattr(base, "language_model", None), self.model):
            norm = getattr(owner, "norm", None) if owner is not None else None
            if isinstance(norm, torch.nn.Module):
                return norm
        raise RuntimeError(f"cannot find the final norm of model {self.name!r} for the logit lens")

    @contextmanager
    def _attention_mode(self, implementation: str | None):
        if implementation is None:
            yield
            return
        previous = self.model.config._attn_implementation
        if previous == implementation:
            yield
            return
        self.model.set_attn_implementation(implementation)
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)


def _derive_seed(seed: int, prompt: Sequence[int]) -> int:
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prompt))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


@contextmanager
def _seeded(seed: int):
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
