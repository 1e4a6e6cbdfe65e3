"""The HTTP client of served models: bounded concurrency, retries with backoff.

One :class:`ServerClient` per served model. Every request holds one of
``max_concurrency`` slots while it is in flight, whichever thread sends it (the items
of a shard in flight, and the prompts of one call, share the slots), so the server sees
at most that many requests at once and batches them itself. A request that times out,
cannot connect, or gets HTTP 429 or 5xx is retried up to ``retries`` times with
exponential backoff (``backoff_s * 2**attempt``, capped at 30 s, honouring a
``Retry-After`` header); then :class:`ServerUnavailable` stops the run with one line.
Any other HTTP error (a 4xx: a bad request, an unknown model, a prompt too long) is a
:class:`ServedModelError` at once: retrying would not change it.

The API key is read from the environment variable the config names, when the client
is made; it is sent as a bearer token and never stored anywhere else.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from safescale.models.served.errors import ServedModelError, ServerUnavailable

__all__ = ["ServerClient"]

T = TypeVar("T")
R = TypeVar("R")

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAX_BACKOFF_S = 30.0


class ServerClient:
    """Requests to one OpenAI-compatible endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model's name (used in messages).
        api_key_env: environment variable holding the API key (None: no key).
        max_concurrency: requests in flight at once, across threads.
        timeout_s: seconds per request (connect, read).
        retries: retries after the first attempt (timeouts, connection errors, 429,
            5xx).
        backoff_s: first backoff; doubled each retry.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_concurrency = max(1, int(max_concurrency))
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ServedModelError(
                    f"{self.base_url}: model {model!r}: api_key_env: environment variable "
                    f"{api_key_env} is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=self.max_concurrency,
                max_keepalive_connections=self.max_concurrency,
            ),
        )
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._pool = ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix="safescale-http"
        )
        self._lock = threading.Lock()
        self.requests = 0
        self.retried = 0
        self.max_in_flight = 0
        self._in_flight = 0

    # ---------------------------------------------------------------- requests
    def url(self, path: str) -> str:
        """The full URL of an API path (``/completions``) or of a server path given
        from the host root (``//tokenize``: ``/tokenize`` next to ``/v1``)."""
        if path.startswith("//"):
            root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
            return root + path[1:]
        return self.base_url + path

    def post(self, path: str, payload: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        """POST JSON, return the JSON answer (see the module docstring for errors)."""
        return self._request("POST", path, payload, retry=retry)

    def get(self, path: str, *, retry: bool = True) -> dict[str, Any]:
        """GET, return the JSON answer."""
        return self._request("GET", path, None, retry=retry)

    def _request(
        self, method: str, path: str, payload: dict[str, Any] | None, *, retry: bool
    ) -> dict[str, Any]:
        url = self.url(path)
        attempts = 1 + (self.retries if retry else 0)
        problem = ""
        for attempt in range(attempts):
            if attempt:
                with self._lock:
                    self.retried += 1
            wait = None
            with self._slots:
                with self._lock:
                    self.requests += 1
                    self._in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self._in_flight)
                try:
                    response = self._http.request(method, url, json=payload)
                except httpx.TimeoutException as exc:
                    problem = f"timed out ({type(exc).__name__})"
                    response = None
                except httpx.TransportError as exc:
                    problem = f"cannot connect ({_short(exc)})"
                    response = None
                finally:
                    with self._lock:
                        self._in_flight -= 1
            if response is not None:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        raise ServedModelError(
                            f"{url}: model {self.model!r}: the answer is not JSON"
                        ) from None
                detail = _error_text(response)
                if response.status_code not in _RETRY_STATUS:
                    raise ServedModelError(
                        f"{url}: model {self.model!r}: HTTP {response.status_code}: {detail}"
                    )
                problem = f"HTTP {response.status_code} ({detail})"
                wait = _retry_after(response)
            if attempt + 1 < attempts:
                delay = min(_MAX_BACKOFF_S, self.backoff_s * 2**attempt)
                time.sleep(max(delay, wait or 0.0))
        raise ServerUnavailable(
            f"{url}: model {self.model!r}: the server did not answer: {problem} "
            f"after {attempts} attempt(s); committed items are kept, start the server "
            "again and run the same command to resume"
        )

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]`` with up to ``max_concurrency`` calls at once (in
        order; the first error is raised once every call has ended)."""
        items = list(items)
        if len(items) <= 1 or self.max_concurrency == 1:
            return [fn(x) for x in items]
        if threading.current_thread().name.startswith("safescale-http"):
            return [fn(x) for x in items]  # never wait on the pool from inside it
        futures = [self._pool.submit(fn, x) for x in items]
        results: list[R] = []
        error: BaseException | None = None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # keep waiting for the others first
                error = error or exc
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Close the connections and the worker threads."""
        self._pool.shutdown(wait=True)
        self._http.close()


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:300] if response.text.strip() else "no body"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return " ".join(str(err).split())[:300]
    return " ".join(str(data).split())[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(_MAX_BACKOFF_S, float(value)) if value is not None else None
    except ValueError:
        return None


def _first(values: Sequence[Any] | None) -> Any:
    return values[0] if values else None
