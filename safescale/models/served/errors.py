"""Errors of served models: each is one line naming the endpoint and the model."""

from __future__ import annotations

__all__ = ["ProbeFailed", "ServedModelError", "ServerUnavailable"]


class ServedModelError(RuntimeError):
    """A served model that cannot do what the study asks (one line: endpoint, model,
    what is wrong). A user error: the CLI prints it as ``error: ...`` (exit 2)."""


class ServerUnavailable(ServedModelError):
    """The server did not answer (connection refused, timeouts, 429 / 5xx) after every
    retry. Items committed before stay committed: the same command resumes."""


class ProbeFailed(ServedModelError):
    """The capability probe found that what the server returns does not mean what it
    should (e.g. no log-probs at all), so no answer can be read from it."""
