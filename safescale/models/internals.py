"""The one way to read a model's internals: a teacher-forced pass record.

Conventions (``R`` = number of response tokens, ``L`` = number of transformer layers,
``V`` = vocabulary size, ``H`` = attention heads, ``P`` = prompt length in tokens,
``S = P + R`` = full sequence length):

Row ``t`` of every per-token array is the *prediction position* of response token
``t``: the sequence position ``P - 1 + t``, whose output distribution predicts
``response_ids[t]``. So ``logits[t]`` is the model's distribution over response token
``t`` given the prompt and response tokens ``< t``, and ``hidden_states[l][t]`` is the
layer-``l`` residual stream at that same position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Internals"]


@dataclass(frozen=True)
class Internals:
    """Outputs of one teacher-forced forward pass over prompt + response token ids.

    Attributes:
        input_ids: ``[S]`` the full sequence (prompt ids followed by response ids).
        prompt_length: ``P``.
        response_ids: ``[R]`` the response token ids.
        logits: ``[R, V]`` final-layer logits at the prediction positions (raw,
            unprocessed; float32).
        hidden_states: ``[L + 1, R, D]`` residual stream at the prediction positions:
            index 0 is the embedding output, index ``L`` the last layer *after* the
            final norm (as transformers returns it).
        logit_lens: ``[L + 1, R, V]`` log-probabilities of the logit lens per layer
            (``log_softmax(lm_head(norm(h_l)))`` for ``l < L``; the last layer uses
            ``lm_head(h_L)`` so ``logit_lens[L]`` equals ``log_softmax(logits)``), or
            ``None`` when the pass was asked for reduced statistics only.
        lens_topk_logprobs / lens_topk_ids: ``[L + 1, R, k]`` the top-k of each logit
            lens distribution when ``lens="topk"``; otherwise ``None``.
        lens_kl_to_final: ``[L + 1, R]`` ``KL(lens_L || lens_l)`` per layer and token,
            computed unless the pass used ``lens="off"`` (then ``None``); the
            incoherence signal; row ``L`` is zero.
        lens_entropy: ``[L + 1, R]`` entropy (nats) of each layer's lens distribution
            (``None`` with ``lens="off"`` or ``lens="kl"``).
        attentions: ``[L, H, R, S]`` attention weights of the prediction positions
            (queries) over the whole sequence (keys) when requested, else ``None``.
        ffn_js: ``[L, R]`` Jensen-Shannon divergence (nats) between the logit lens of
            layer ``l``'s residual stream before and after its feed-forward block, per
            prediction row, when the pass was asked for feed-forward statistics
            (``ffn=True``), else ``None``.
        context_hidden: ``[P, D]`` final-layer (post-norm) states of the prompt
            positions with ``ffn=True`` (row ``P - 1`` is the last prompt token, the
            first prediction position), else ``None``.
    """

    input_ids: torch.Tensor
    prompt_length: int
    response_ids: torch.Tensor
    logits: torch.Tensor
    hidden_states: torch.Tensor
    logit_lens: torch.Tensor | None
    lens_topk_logprobs: torch.Tensor | None
    lens_topk_ids: torch.Tensor | None
    lens_kl_to_final: torch.Tensor | None
    lens_entropy: torch.Tensor | None
    attentions: torch.Tensor | None = None
    ffn_js: torch.Tensor | None = None
    context_hidden: torch.Tensor | None = None

    @property
    def n_layers(self) -> int:
        """``L``: transformer layers (hidden_states has ``L + 1`` entries)."""
        return int(self.hidden_states.shape[0]) - 1

    @property
    def response_logprobs(self) -> torch.Tensor:
        """``[R]`` log p(response_ids[t] | prefix) from the raw final logits."""
        logp = torch.log_softmax(self.logits.float(), dim=-1)
        return logp.gather(-1, self.response_ids.view(-1, 1)).squeeze(-1)
