"""Served models: an OpenAI-compatible server (``kind: openai``), a chat-only endpoint
(``kind: openai-chat``) or vLLM in this process (``kind: vllm``).

Each implements :class:`~safescale.models.interface.BlackBoxModel` (the calls conditions
and black-box detectors make on an LM) and has no white-box surface (``whitebox`` is
False, so :func:`is_whitebox` is False). :func:`load_served` builds one, reads its
identity from the server and probes what the server returns (:mod:`.probe`) before any
item. See ``docs/served-models.md``.
"""

from __future__ import annotations

from safescale.models.interface import is_whitebox
from safescale.models.served.base import ALL_FORMULATIONS, LETTER_FORMULATIONS, ServedModel
from safescale.models.served.client import ServerClient
from safescale.models.served.concurrency import ConcurrentItems
from safescale.models.served.errors import ProbeFailed, ServedModelError, ServerUnavailable
from safescale.models.served.loading import load_served, server_identity
from safescale.models.served.settings import SERVED_KINDS, ServedKind, ServedSettings

__all__ = [
    "ALL_FORMULATIONS",
    "LETTER_FORMULATIONS",
    "SERVED_KINDS",
    "ConcurrentItems",
    "ProbeFailed",
    "ServedKind",
    "ServedModel",
    "ServedModelError",
    "ServedSettings",
    "ServerClient",
    "ServerUnavailable",
    "is_whitebox",
    "load_served",
    "server_identity",
]
