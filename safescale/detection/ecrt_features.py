"""ECRT internal-signal features from a paired CTX / NOCTX teacher-forced pass.

Both passes teacher-force the *same* response token ids ``y_0 .. y_{R-1}``; the CTX
prompt holds the evidence, the NOCTX prompt is the same user turn with only the
evidence removed. Notation (rows follow :class:`~safescale.models.internals.Internals`:
row ``t`` is the prediction position of ``y_t``):

* ``p_t = softmax(z^CTX_t)``, ``q_t = softmax(z^NOCTX_t)`` — final-layer next-token
  distributions from the raw logits;
* ``h^CTX_{l,t}``, ``h^NOCTX_{l,t}`` — residual stream at layer ``l`` (``l = 0`` is the
  embedding output, ``l = L`` the final layer after the final norm);
* ``K^pass_{l,t} = KL(lens_L || lens_l)`` — the logit-lens divergence of layer ``l``
  from the final layer, per token (``Internals.lens_kl_to_final``).

Three families (every feature is a float; the feature names are stable for a given
number of layers ``L``):

Discrepancy (prediction level, final layer)
    * ``disc_kl_mean`` = (1/R) Σ_t KL(p_t || q_t); ``disc_kl_max`` = max_t KL(p_t || q_t);
      ``disc_kl_first`` = KL(p_0 || q_0).
    * ``disc_js_mean`` / ``disc_js_max``: the same with the Jensen–Shannon divergence
      JS(p, q) = ½ KL(p || m) + ½ KL(q || m), m = (p + q) / 2 (nats, ≤ ln 2).
    * ``disc_logp_shift_mean`` = (1/R) Σ_t [log p_t(y_t) − log q_t(y_t)] (the CTX-vs-NOCTX
      PMI of the response); ``disc_logp_shift_absmean`` = (1/R) Σ_t |·|;
      ``disc_logp_shift_min`` = min_t (the token the evidence disfavours most).
    * ``disc_top1_agree`` = (1/R) Σ_t 1[argmax p_t = argmax q_t].
Deviation (latent level, every layer)
    * ``dev_cos_l{l}`` = (1/R) Σ_t [1 − cos(h^CTX_{l,t}, h^NOCTX_{l,t})] for l = 1..L
      (layer 0 is omitted: the embedding of a token does not depend on the prompt, so
      it is identically zero);
    * ``dev_cos_mean`` / ``dev_cos_max`` = mean / max over l of ``dev_cos_l{l}``;
    * ``dev_rel_l2_mean`` = (1/(L R)) Σ_{l≥1} Σ_t ‖h^CTX − h^NOCTX‖ / (½(‖h^CTX‖ + ‖h^NOCTX‖) + ε);
      ``dev_rel_l2_max`` = max over l of the per-layer token mean of that ratio.
Incoherence (structural level, per pass ``s`` ∈ {ctx, noctx})
    * ``inc_{s}_l{l}`` = (1/R) Σ_t K^s_{l,t} for l = 0..L−1 (row L is zero by definition);
    * ``inc_{s}_mean`` = (1/(L R)) Σ_{l<L} Σ_t K^s_{l,t};
    * ``inc_{s}_tokmax`` = max_t (1/L) Σ_{l<L} K^s_{l,t} (the least coherent token);
    * ``inc_delta_mean`` = ``inc_ctx_mean`` − ``inc_noctx_mean``.

Directions: these are *features* for a trained classifier, not risk scores; none is
assumed to be monotone in risk. Identical CTX and NOCTX passes give zero for every
discrepancy and deviation feature except ``disc_top1_agree`` (= 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from safescale.models.internals import Internals


__all__ = [
    "deviation_features",
    "discrepancy_features",
    "ecrt_features",
    "incoherence_features",
    "js_divergence",
    "kl_divergence",
]

_EPS = 1e-8


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(p || q) in nats from log-probabilities ``[..., V]``."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0.0)


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Row-wise Jensen–Shannon divergence in nats from log-probabilities ``[..., V]``."""
    import torch

    logm = torch.logaddexp(logp, logq) - torch.log(torch.tensor(2.0, dtype=logp.dtype))
    return (0.5 * kl_divergence(logp, logm) + 0.5 * kl_divergence(logq, logm)).clamp(min=0.0)


def _check_pair(ctx: Internals, noctx: Internals) -> None:
    import torch

    if not torch.equal(ctx.response_ids, noctx.response_ids):
        raise ValueError("CTX and NOCTX passes must teacher-force the same response token ids")
    if ctx.hidden_states.shape[0] != noctx.hidden_states.shape[0]:
        raise ValueError("CTX and NOCTX passes come from models with different depths")


def discrepancy_features(ctx: Internals, noctx: Internals) -> dict[str, float]:
    """Final-layer shift between the CTX and NOCTX passes (see the module docstring).

    Requires: ``logits`` and ``response_ids`` of both passes.
    """
    import torch

    _check_pair(ctx, noctx)
    logp = torch.log_softmax(ctx.logits.double(), dim=-1)
    logq = torch.log_softmax(noctx.logits.double(), dim=-1)
    kl = kl_divergence(logp, logq)
    js = js_divergence(logp, logq)
    idx = ctx.response_ids.view(-1, 1)
    shift = (logp.gather(-1, idx) - logq.gather(-1, idx)).squeeze(-1)
    agree = (logp.argmax(-1) == logq.argmax(-1)).double()
    return {
        "disc_kl_mean": float(kl.mean()),
        "disc_kl_max": float(kl.max()),
        "disc_kl_first": float(kl[0]),
        "disc_js_mean": float(js.mean()),
        "disc_js_max": float(js.max()),
        "disc_logp_shift_mean": float(shift.mean()),
        "disc_logp_shift_absmean": float(shift.abs().mean()),
        "disc_logp_shift_min": float(shift.min()),
        "disc_top1_agree": float(agree.mean()),
    }


def deviation_features(ctx: Internals, noctx: Internals) -> dict[str, float]:
    """Per-layer distance between CTX and NOCTX hidden states of the response rows.

    Requires: ``hidden_states`` ``[L+1, R, D]`` of both passes.
    """
    import torch

    _check_pair(ctx, noctx)
    hc = ctx.hidden_states[1:].double()
    hn = noctx.hidden_states[1:].double()
    cos = torch.nn.functional.cosine_similarity(hc, hn, dim=-1, eps=_EPS)  # [L, R]
    cos_dist = (1.0 - cos).clamp(min=0.0).mean(-1)  # [L]
    diff = (hc - hn).norm(dim=-1)
    scale = 0.5 * (hc.norm(dim=-1) + hn.norm(dim=-1)) + _EPS
    rel = (diff / scale).mean(-1)  # [L]
    out = {f"dev_cos_l{layer + 1}": float(v) for layer, v in enumerate(cos_dist)}
    out.update(
        {
            "dev_cos_mean": float(cos_dist.mean()),
            "dev_cos_max": float(cos_dist.max()),
            "dev_rel_l2_mean": float(rel.mean()),
            "dev_rel_l2_max": float(rel.max()),
        }
    )
    return out


def _incoherence_one(internals: Internals, tag: str) -> dict[str, float]:
    kl = internals.lens_kl_to_final[:-1].double()  # [L, R]; the last row is zero
    per_layer = kl.mean(-1)
    out = {f"inc_{tag}_l{layer}": float(v) for layer, v in enumerate(per_layer)}
    out[f"inc_{tag}_mean"] = float(kl.mean())
    out[f"inc_{tag}_tokmax"] = float(kl.mean(0).max())
    return out


def incoherence_features(ctx: Internals, noctx: Internals) -> dict[str, float]:
    """Per-layer logit-lens KL to the final layer, aggregated per pass.

    Requires: ``lens_kl_to_final`` ``[L+1, R]`` of both passes.
    """
    _check_pair(ctx, noctx)
    out = _incoherence_one(ctx, "ctx")
    out.update(_incoherence_one(noctx, "noctx"))
    out["inc_delta_mean"] = out["inc_ctx_mean"] - out["inc_noctx_mean"]
    return out


def ecrt_features(ctx: Internals, noctx: Internals) -> dict[str, float]:
    """All ECRT features (discrepancy, deviation, incoherence) in a stable order."""
    out = discrepancy_features(ctx, noctx)
    out.update(deviation_features(ctx, noctx))
    out.update(incoherence_features(ctx, noctx))
    return out
