"""What a served model is built from (the experiments layer fills it from the config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SERVED_KINDS", "ServedKind", "ServedSettings"]

ServedKind = Literal["openai", "openai-chat", "vllm"]
SERVED_KINDS: tuple[str, ...] = ("openai", "openai-chat", "vllm")


@dataclass(frozen=True)
class ServedSettings:
    """Settings of one served model.

    Attributes:
        kind: ``openai`` (``/v1/completions``: letters, continuations via echo,
            generation), ``openai-chat`` (``/v1/chat/completions``: letters and
            generation only) or ``vllm`` (vLLM in this process).
        name: the name results are recorded under.
        model: the served model's name at the endpoint (``openai*``), or what vLLM
            loads (``vllm``: a Hugging Face id or directory).
        base_url: the API root (``openai*``), e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: environment variable holding the API key (never recorded).
        max_concurrency: requests in flight at once.
        timeout_s: seconds per request.
        retries: retries of a request that timed out, could not connect or got
            429 / 5xx.
        backoff_s: first retry delay (doubled each retry).
        tokenizer: a local tokenizer spec (registered name, directory, ``.gguf``,
            Hugging Face id): exact prompt format and token counts, and part of the
            model's identity. Required for ``openai`` (it formats the prompts);
            optional for ``openai-chat`` (token counts are estimated without it).
        use_chat_template: force the chat (True) or plain (False) prompt template.
        system_prompt: optional system turn.
        top_logprobs: alternatives per position asked for (letters are read from the
            first generated token's alternatives).
        context_length: the served context window in tokens (default: what the
            server reports, else 2048).
        extra_body: extra JSON fields sent with every request (server-specific
            sampling knobs).
        dtype: vLLM weights dtype.
        engine_args: extra ``vllm.LLM`` arguments (``vllm`` only).
    """

    kind: ServedKind
    name: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5
    tokenizer: str | None = None
    use_chat_template: bool | None = None
    system_prompt: str | None = None
    top_logprobs: int = 20
    context_length: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    engine_args: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The settings as recorded in a run's manifest (the API key's variable name
        is recorded, never its value)."""
        out = {
            "kind": self.kind,
            "model": self.model,
            "base_url": self.base_url,
            "max_concurrency": self.max_concurrency,
            "timeout_s": self.timeout_s,
            "retries": self.retries,
            "tokenizer": self.tokenizer,
            "top_logprobs": self.top_logprobs,
        }
        if self.kind == "vllm":
            out.update({"dtype": self.dtype, "engine_args": dict(self.engine_args)})
        return out
