"""``load_served``: build a served model from its settings, identify and probe it."""

from __future__ import annotations

from typing import Any

from safescale.models.served.base import ServedModel
from safescale.models.served.client import ServerClient
from safescale.models.served.errors import ServedModelError
from safescale.models.served.prompting import load_tokenizer
from safescale.models.served.settings import ServedSettings

__all__ = ["load_served", "server_identity"]

#: ``/v1/models`` fields that describe the model (timestamps and permissions dropped).
_IDENTITY_FIELDS = ("id", "owned_by", "root", "parent", "max_model_len")


def load_served(settings: ServedSettings) -> ServedModel:
    """The served model of ``settings``, ready for a study: its identity read from the
    server and its capabilities probed (:mod:`.probe`) before any item.

    Raises:
        ServedModelError: the server cannot be reached, does not serve the model, or
            fails the probe (one line naming the endpoint, the model and why).
        UnknownModelError: the ``tokenizer`` spec does not load.
    """
    if settings.kind == "vllm":
        from safescale.models.served.vllm import VLLMModel

        return VLLMModel.load(settings)
    if not settings.base_url:
        raise ServedModelError(f"model {settings.name!r}: kind: {settings.kind} needs base_url")
    tokenizer = load_tokenizer(settings.tokenizer) if settings.tokenizer else (None, None)
    client = ServerClient(
        settings.base_url,
        model=settings.model,
        api_key_env=settings.api_key_env,
        max_concurrency=settings.max_concurrency,
        timeout_s=settings.timeout_s,
        retries=settings.retries,
        backoff_s=settings.backoff_s,
    )
    try:
        model: ServedModel
        if settings.kind == "openai":
            from safescale.models.served.openai import OpenAICompletionsModel
            from safescale.models.served.probe import probe_completions

            model = OpenAICompletionsModel(settings, tokenizer, client)
            model.identity = server_identity(client, settings)
            _context_from_server(model)
            model.probe_record = probe_completions(model)  # type: ignore[arg-type]
        elif settings.kind == "openai-chat":
            from safescale.models.served.chat import OpenAIChatModel
            from safescale.models.served.probe import probe_chat

            model = OpenAIChatModel(settings, tokenizer, client)
            model.identity = server_identity(client, settings)
            _context_from_server(model)
            model.probe_record = probe_chat(model)  # type: ignore[arg-type]
        else:
            raise ServedModelError(f"model {settings.name!r}: unknown kind {settings.kind!r}")
    except BaseException:
        client.close()
        raise
    return model


def server_identity(client: ServerClient, settings: ServedSettings) -> dict[str, Any]:
    """What the server reports about the model (``GET /models``), without timestamps:
    the part of the model's identity that does not depend on where it is served.

    Raises:
        ServedModelError: the server lists models and ``settings.model`` is not one.
    """
    try:
        listing = client.get("/models")
    except ServedModelError as exc:
        if "HTTP 404" in str(exc) or "HTTP 405" in str(exc):
            return {"model": settings.model, "listing": "no /models endpoint"}
        raise
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return {"model": settings.model, "listing": "unreadable /models answer"}
    ids = [str(d.get("id")) for d in data if isinstance(d, dict)]
    for entry in data:
        if isinstance(entry, dict) and str(entry.get("id")) == settings.model:
            return {
                "model": settings.model,
                **{k: entry[k] for k in _IDENTITY_FIELDS if k in entry and k != "id"},
            }
    raise ServedModelError(
        f"{client.url('/models')}: model {settings.model!r} is not served here "
        f"(served: {', '.join(ids) or 'none'}); set model: to one of them"
    )


def _context_from_server(model: ServedModel) -> None:
    reported = model.identity.get("max_model_len")
    if model.settings.context_length is None and isinstance(reported, int) and reported > 0:
        model._context_length = reported
