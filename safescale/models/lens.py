"""Teacher-forced internals of the in-process backend: hidden states, logit-lens
statistics and the feed-forward divergence, as one :class:`Internals` record."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from safescale.models.interface import LensMode
from safescale.models.internals import Internals
from safescale.models.prompting import PromptError

__all__ = ["LensMixin", "LensMode"]


class LensMixin:
    """:meth:`internals` and the logit-lens statistics every teacher-forced record
    carries (needs the :class:`~safescale.models.backend.LanguageModel` core, the
    prompt passes and the layer access)."""

    @torch.inference_mode()
    def internals(
        self,
        message: str,
        response: str | Sequence[int],
        *,
        attentions: bool = False,
        lens: LensMode = "full",
        topk: int = 20,
        ffn: bool = False,
    ) -> Internals:
        """One teacher-forced pass over ``prompt_ids(message) + response ids``.

        The response ids are concatenated to the prompt ids (a string response is
        tokenized on its own, without special tokens; the concatenated text is never
        re-tokenized). See :class:`~safescale.models.internals.Internals` for shapes.
        :meth:`internals_from` gives the same record (to float tolerance) from a
        prompt already held in a KV cache.

        Args:
            message: the user turn (prompt without answer cue).
            response: the assistant's text, or its token ids.
            attentions: also return the prediction rows' attention weights (the
                prompt but its last token is prefilled with the model's attention, the
                rest runs eager: :meth:`open_prompt` + :meth:`internals_from`).
            lens: ``"full"`` keeps every layer's logit-lens log-probabilities
                ``[L+1, R, V]``; ``"topk"`` keeps only the top ``topk`` per layer and
                token; ``"none"`` keeps neither (KL-to-final and entropy per layer are
                still computed in these three modes); ``"kl"`` computes only the
                KL-to-final per layer (what ECRT's incoherence features read; the
                cheapest lens); ``"off"`` skips the logit lens entirely (a plain
                forward with hidden states).
            ffn: also return the feed-forward statistics ``ffn_js`` and the prompt's
                final-layer states ``context_hidden`` (see :meth:`open_prompt`).
        """
        response_ids = self.response_token_ids(response)
        if attentions or ffn:
            # Only the prediction rows' weights are kept: the prompt is prefilled with
            # the model's own attention and just those rows run eager (a whole eager
            # pass would compute and return [L, H, T, T] weights).
            state = self.open_prompt(message, attentions=attentions, ffn=ffn)
            return self.internals_from(state, response_ids, lens=lens, topk=topk)
        if self.prefix_cache_active():
            # the prompt over its longest cached prefix, then the response rows
            state = self.open_prompt(message)
            return self.internals_from(state, response_ids, lens=lens, topk=topk)
        prompt = self.prompt_ids(message)
        self.check_room(len(prompt) + len(response_ids))
        ids = torch.tensor([prompt + response_ids], device=self.device)
        P, R = len(prompt), len(response_ids)
        positions = torch.arange(P - 1, P + R - 1, device=self.device)
        out = self.model(
            input_ids=ids,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=positions,  # only the prediction positions need the LM head
        )
        logits = out.logits[0].float()
        hidden = torch.stack([h[0, positions] for h in out.hidden_states]).float()
        return self.build_internals(prompt, response_ids, logits, hidden, None, lens, topk)

    def response_token_ids(self, response: str | Sequence[int]) -> list[int]:
        """The response's token ids (a string tokenized on its own, no special
        tokens)."""
        if isinstance(response, str):
            if not response.strip():
                raise PromptError("the response is empty")
            response_ids = list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        else:
            response_ids = [int(t) for t in response]
        if not response_ids:
            raise PromptError("the response has no tokens")
        return response_ids

    def build_internals(
        self,
        prompt: list[int],
        response_ids: list[int],
        logits: torch.Tensor,
        hidden: torch.Tensor,
        att: torch.Tensor | None,
        lens: LensMode,
        topk: int,
        mid: torch.Tensor | None = None,
        context_hidden: torch.Tensor | None = None,
    ) -> Internals:
        """An :class:`Internals` from the prediction rows of a pass (logit lens here)."""
        stats = None if lens == "off" else self._lens_statistics(hidden, logits, lens, topk)
        ffn_js = None if mid is None else self._ffn_js(mid, hidden, logits)
        return Internals(
            input_ids=torch.tensor(prompt + response_ids),
            prompt_length=len(prompt),
            response_ids=torch.tensor(response_ids),
            logits=logits.cpu(),
            hidden_states=hidden.cpu(),
            logit_lens=None if stats is None else stats.get("full"),
            lens_topk_logprobs=None if stats is None else stats.get("topk_values"),
            lens_topk_ids=None if stats is None else stats.get("topk_ids"),
            lens_kl_to_final=None if stats is None else stats["kl"],
            lens_entropy=None if stats is None else stats.get("entropy"),
            attentions=None if att is None else att.cpu(),
            ffn_js=ffn_js,
            context_hidden=None if context_hidden is None else context_hidden.cpu(),
        )

    @torch.inference_mode()
    def _ffn_js(
        self, mid: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """``[L, R]`` Jensen-Shannon divergence (nats) between the logit lens of each
        layer's residual stream before its feed-forward block (``mid[l]``) and after
        it (``hidden[l + 1]``; the last layer's "after" is the model's own logits): how
        much the feed-forward block moved the next-token distribution (the parametric
        knowledge score of ReDeEP, Sun et al. 2024)."""
        norm = self.final_norm()
        head = self.model.get_output_embeddings()
        cfg = self.model.config.get_text_config()
        softcap = getattr(cfg, "final_logit_softcapping", None)
        n_layers, R = mid.shape[0], mid.shape[1]
        V = logits.shape[-1]

        def lens_logp(h: torch.Tensor) -> torch.Tensor:
            z = head(norm(h.to(head.weight.dtype))).float()
            if softcap:
                z = torch.tanh(z / softcap) * softcap
            return torch.log_softmax(z, dim=-1)

        per_chunk = max(1, self.LENS_CHUNK_ELEMENTS // max(1, 2 * R * V))
        out = []
        for start in range(0, n_layers, per_chunk):
            stop = min(n_layers, start + per_chunk)
            before = lens_logp(mid[start:stop])
            after_rows = [
                torch.log_softmax(logits.float(), dim=-1)[None]
                if layer == n_layers - 1
                else lens_logp(hidden[layer + 1][None])
                for layer in range(start, stop)
            ]
            after = torch.cat(after_rows)
            m = torch.logsumexp(torch.stack([before, after]), dim=0) - np.log(2.0)
            js = 0.5 * ((before.exp() * (before - m)).sum(-1) + (after.exp() * (after - m)).sum(-1))
            out.append(js.clamp(min=0.0))
        return torch.cat(out).cpu()

    #: Elements of the ``[layers x tokens, V]`` lens logits computed at once (bounds
    #: the temporaries to a few hundred MB whatever the vocabulary and response length).
    LENS_CHUNK_ELEMENTS = 32 * 1024 * 1024

    def _lens_statistics(
        self, hidden: torch.Tensor, logits: torch.Tensor, lens: LensMode, topk: int
    ) -> dict[str, torch.Tensor]:
        """Per-layer logit-lens statistics of the prediction rows.

        The final norm and LM head are applied to the rows of every layer ``l < L`` as
        one batched matmul (in chunks of layers); KL to the final layer and entropy are
        read from the lens logits ``z`` without materializing more than two
        ``[rows, V]`` tensors: with ``lse = logsumexp(z)``,
        ``KL(final || lens_l) = sum_v p_final log p_final - (sum_v p_final z - lse)``
        and ``H(lens_l) = lse - sum_v softmax(z) z``.

        Returns:
            ``kl`` and (unless ``lens="kl"``) ``entropy`` ``[L+1, R]`` (row ``L`` = the
            final layer: KL 0),
            plus ``full`` ``[L+1, R, V]`` or ``topk_values`` / ``topk_ids``
            ``[L+1, R, k]`` as ``lens`` asks.
        """
        norm = self.final_norm()
        head = self.model.get_output_embeddings()
        cfg = self.model.config.get_text_config()
        softcap = getattr(cfg, "final_logit_softcapping", None)
        final = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
        p_final = final.exp()
        neg_h_final = (p_final * final).sum(-1)  # sum p log p  [R]
        n_layers, R = hidden.shape[0] - 1, hidden.shape[1]
        V = final.shape[-1]
        per_chunk = max(1, self.LENS_CHUNK_ELEMENTS // max(1, R * V))
        kls, entropies, kept, top_v, top_i = [], [], [], [], []
        for start in range(0, n_layers, per_chunk):
            h = hidden[start : min(n_layers, start + per_chunk)]  # [c, R, D]
            z = head(norm(h.to(head.weight.dtype))).float()  # [c, R, V]
            if softcap:
                z = torch.tanh(z / softcap) * softcap
            lse = torch.logsumexp(z, dim=-1)  # [c, R]
            cross = torch.einsum("crv,rv->cr", z, p_final)
            kls.append((neg_h_final - (cross - lse)).clamp(min=0.0))
            if lens == "kl":
                continue
            if lens == "full":
                logp = z - lse[..., None]
                kept.append(logp)
                entropies.append(-(logp.exp() * logp).sum(-1))
                continue
            p = torch.softmax(z, dim=-1)
            entropies.append(lse - torch.einsum("crv,crv->cr", p, z))
            del p
            if lens == "topk":
                t = z.topk(min(topk, V), dim=-1)
                top_v.append(t.values - lse[..., None])
                top_i.append(t.indices)
        kls.append(torch.zeros(1, R, device=final.device))
        entropies.append(-neg_h_final[None])
        out = {"kl": torch.cat(kls).cpu()}
        if lens != "kl":
            out["entropy"] = torch.cat(entropies).cpu()
        if lens == "full":
            out["full"] = torch.cat([*kept, final[None]]).cpu()
        elif lens == "topk":
            t = final.topk(min(topk, V), dim=-1)
            out["topk_values"] = torch.cat([*top_v, t.values[None]]).cpu()
            out["topk_ids"] = torch.cat([*top_i, t.indices[None]]).cpu()
        return out
