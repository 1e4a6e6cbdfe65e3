"""Items of a shard in flight against a served model.

The runner answers ``items_in_flight`` items of a shard at once, each in its own thread
(:func:`safescale.experiments.runner._in_flight`). With local weights those threads take
turns and their scoring calls are merged (:class:`~safescale.models.MicroBatcher`); with
a served model they run freely: their requests go to the server concurrently (at most
``max_concurrency`` in flight, :class:`~safescale.models.served.ServerClient`) and the
server batches them. What must not run on several threads at once — the evidence
store's query embedding, which runs torch — is handed to the runner's own thread, which
serves those calls while it waits for the items (the same contract as the
micro-batcher's :meth:`~safescale.models.MicroBatcher.serve`).

Results are yielded in shard order, each once it and every earlier item are done, so
a run stopped by a server that went away has committed a prefix of the shard and
nothing twice.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

__all__ = ["ConcurrentItems"]


class ConcurrentItems:
    """The item threads' coordinator for a served model (micro-batcher interface:
    :meth:`worker`, :meth:`serve`, :meth:`wake`, :meth:`on_lm_thread`,
    :meth:`registered`)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._server = threading.get_ident()
        self._local = threading.local()

    def on_lm_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` on the serving thread and wait for its result."""
        if threading.get_ident() == self._server:
            return fn(*args, **kwargs)
        future: Future = Future()
        self._calls.put((fn, args, kwargs, future))
        return future.result()

    def wake(self) -> None:
        """Make :meth:`serve` check its condition again."""
        self._calls.put(None)

    def serve(self, done: Callable[[], bool], *, timeout: float | None = None) -> None:
        """Run the calls handed to this (the serving) thread until ``done()`` holds."""
        if threading.get_ident() != self._server:
            raise RuntimeError("only the thread that made the coordinator serves its calls")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            try:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                call = self._calls.get(timeout=wait)
            except queue.Empty:
                raise TimeoutError("the item threads did not finish in time") from None
            if call is None:
                continue
            fn, args, kwargs, future = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # goes to the calling item thread
                    future.set_exception(exc)

    def registered(self) -> bool:
        """Whether the calling thread is an item thread."""
        return bool(getattr(self._local, "registered", False))

    @contextmanager
    def worker(self) -> Iterator[None]:
        """Mark the calling thread as an item thread for the ``with`` body."""
        self._local.registered = True
        try:
            yield
        finally:
            self._local.registered = False
