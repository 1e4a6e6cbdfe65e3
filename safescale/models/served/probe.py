"""The capability probe: before any item, check that what the server returns means
what it should.

For ``kind: openai`` (``/v1/completions``), on a few fixed raw prefixes ``P``:

1. **generation log-probs**: ``P`` with ``max_tokens=1, temperature=0, logprobs=K``
   returns a token ``x`` with a log-prob ``g <= 0`` that is the largest of the
   alternatives (greedy). Without them no answer can be read: the run stops
   (:class:`ProbeFailed`).
2. **prompt log-probs present**: ``P + x`` with ``echo=true, logprobs=1`` returns one
   log-prob per echoed token (the first may be null), with offsets that rebuild the
   text.
3. **aligned**: the echoed log-prob ``e`` of ``x`` after ``P`` equals ``g`` (within
   :data:`ALIGN_TOLERANCE` nats): each echoed token is scored by the distribution
   *before* it. llama-cpp-python 0.3.x fails this (its echo scores each token by the
   distribution after it, issue #1983): summing its echoed log-probs scores noise.

When 2 or 3 fails but 1 holds, the model serves the **letter** formulations only
(letters come from generation log-probs) and short continuations (the critic's
judgements, P(True)) are read from generation log-probs one token at a time; the
verdict says so, the runner records it in the manifest and ``auto`` considers only the
letter formulations. A study never sums misaligned log-probs silently.

For ``kind: openai-chat`` (``/v1/chat/completions``) only 1 is checked
(``logprobs=true, top_logprobs=K`` on the first generated token); such an endpoint
never serves continuations.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from safescale.models.served.base import ALL_FORMULATIONS, LETTER_FORMULATIONS
from safescale.models.served.errors import ProbeFailed, ServedModelError

if TYPE_CHECKING:
    from safescale.models.served.chat import OpenAIChatModel
    from safescale.models.served.openai import OpenAICompletionsModel

__all__ = ["ALIGN_TOLERANCE", "PROBE_PREFIXES", "probe_chat", "probe_completions"]

#: Largest |echoed - generated| log-prob (nats) of the same token counted as aligned.
#: The same engine computes both; batching noise is far below this, a one-position
#: shift is nats away.
ALIGN_TOLERANCE = 0.05
#: Raw prefixes whose greedy next token is probed (no chat template: the probe checks
#: the endpoint's arithmetic, not the model's format).
PROBE_PREFIXES = (
    "The capital of France is",
    "One, two, three, four,",
    "The opposite of hot is",
)


def probe_completions(model: OpenAICompletionsModel) -> dict[str, Any]:
    """Run the probe on a completions endpoint; set ``model.formulations`` and
    ``model.continuations``; return the record for the manifest.

    Raises:
        ProbeFailed: no usable generation log-probs.
    """
    where = f"{model.client.url('/completions')}: model {model.settings.model!r}"
    checks: list[dict[str, Any]] = []
    problems: list[str] = []
    for prefix in PROBE_PREFIXES:
        check: dict[str, Any] = {"prefix": prefix}
        checks.append(check)
        try:
            choice = model.complete(prefix, max_tokens=1, logprobs=model.settings.top_logprobs)
        except ServedModelError as exc:
            raise ProbeFailed(f"{where}: capability probe: {exc}") from None
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        tokens = (lp or {}).get("tokens") or []
        values = (lp or {}).get("token_logprobs") or []
        tops = (lp or {}).get("top_logprobs") or []
        if not tokens or not values or values[0] is None:
            raise ProbeFailed(
                f"{where}: capability probe: the server returns no log-probs for generated "
                "tokens, so no answer can be read from it (llama-cpp-python needs "
                "--logits_all true)"
            )
        token, g = str(tokens[0]), float(values[0])
        top = {str(k): float(v) for k, v in (tops[0] or {}).items()} if tops else {}
        check.update({"token": token, "generated_logprob": round(g, 4)})
        if g > 1e-6 or (top and g < max(top.values()) - 1e-4):
            raise ProbeFailed(
                f"{where}: capability probe: the greedy token {token!r} after {prefix!r} has "
                f"log-prob {g:.4f}, not the largest of its alternatives (or above 0): "
                "generation log-probs cannot be trusted"
            )
        echoed = _echo_check(model, prefix, token, check)
        if echoed is not None:
            problems.append(echoed)
    if not problems:
        model.formulations = ALL_FORMULATIONS
        model.continuations = "echo"
        verdict = (
            "generation and prompt log-probs present and aligned: every formulation "
            "(letters from generation log-probs, cloze from echoed prompt log-probs)"
        )
    else:
        model.formulations = LETTER_FORMULATIONS
        model.continuations = "generation"
        verdict = (
            f"{problems[0]}; the study reads letters from generation log-probs "
            "(letter formulations only) and short continuations token by token from "
            "generation log-probs"
        )
    return {
        "endpoint": "/completions",
        "generation_logprobs": "ok",
        "prompt_logprobs": "aligned" if not problems else "unusable",
        "tolerance": ALIGN_TOLERANCE,
        "checks": checks,
        "formulations": sorted(model.formulations),
        "continuations": model.continuations,
        "verdict": verdict,
    }


def _echo_check(
    model: OpenAICompletionsModel, prefix: str, token: str, check: dict[str, Any]
) -> str | None:
    """Step 2 and 3 of the probe on one prefix: None when aligned, else what is wrong."""
    full = prefix + token
    try:
        choice = model.complete(full, max_tokens=1, echo=True, logprobs=1)
    except ServedModelError as exc:
        check["echo"] = f"refused: {exc}"
        return f"echo with log-probs is refused ({exc})"
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    tokens = list((lp or {}).get("tokens") or [])
    values = list((lp or {}).get("token_logprobs") or [])
    offsets = list((lp or {}).get("text_offset") or [])
    echoed_text = "".join(tokens)
    if not tokens or full not in echoed_text or not (len(tokens) == len(values) == len(offsets)):
        check["echo"] = "absent"
        return "prompt log-probs absent (the server ignores echo)"
    # the echoed position of ``token``: the token starting at len(prefix)
    at = [i for i, off in enumerate(offsets) if off == len(prefix)]
    present = [v for v in values[1:] if v is not None]
    prompt_tokens = [i for i, off in enumerate(offsets) if off < len(full)]
    if len(present) < len(prompt_tokens) - 1:
        check["echo"] = "missing log-probs"
        return "prompt log-probs missing for some echoed tokens"
    if not at or values[at[0]] is None:
        check["echo"] = "token not found"
        return f"the echoed prompt does not contain {token!r} at its offset"
    e = float(values[at[0]])
    check["echoed_logprob"] = round(e, 4)
    g = float(check["generated_logprob"])
    if not math.isfinite(e) or abs(e - g) > ALIGN_TOLERANCE:
        check["echo"] = "misaligned"
        return (
            f"echoed prompt log-probs are misaligned ({token!r} after {check['prefix']!r}: "
            f"echoed {e:.3f}, generated {g:.3f})"
        )
    check["echo"] = "aligned"
    return None


def probe_chat(model: OpenAIChatModel) -> dict[str, Any]:
    """Run the probe on a chat endpoint (generation log-probs of the first token).

    Raises:
        ProbeFailed: the endpoint returns no log-probs for generated tokens.
    """
    where = f"{model.client.url('/chat/completions')}: model {model.settings.model!r}"
    try:
        top = model.first_token_alternatives("Reply with the single letter B.")
    except ServedModelError as exc:
        raise ProbeFailed(
            f"{where}: capability probe: no log-probs for generated tokens ({exc}); letters "
            "cannot be read from this endpoint"
        ) from None
    if not top:
        raise ProbeFailed(f"{where}: capability probe: no top_logprobs for generated tokens")
    best = max(top, key=top.get)
    model.formulations = LETTER_FORMULATIONS
    model.continuations = None
    return {
        "endpoint": "/chat/completions",
        "generation_logprobs": "ok",
        "prompt_logprobs": "not offered by chat endpoints",
        "checks": [
            {
                "prompt": "Reply with the single letter B.",
                "token": best,
                "generated_logprob": round(top[best], 4),
            }
        ],
        "formulations": sorted(model.formulations),
        "continuations": None,
        "verdict": "chat endpoint: letters from the first generated token's log-probs; "
        "cloze and PMI formulations and continuation judgements are not available",
    }
