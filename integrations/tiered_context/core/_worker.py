"""The ladder's background worker: one daemon thread that runs compaction jobs in order,
and how long a `close()` waits for it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["DEFAULT_SETTLE_TIMEOUT", "Worker", "settle_timeout"]

#: How long `close()` waits for background work when the summarizer names no timeout of
#: its own (seconds): long enough for an LLM summary, short enough not to hang a shutdown.
DEFAULT_SETTLE_TIMEOUT = 120.0


class Worker:
    """One daemon thread that runs jobs in order. Daemon: a hung job (a summarizer that
    never returns) cannot hold the interpreter's exit; `close()` waits only its timeout."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tiered-compaction", daemon=True)
            self._thread.start()
        return future

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)

    def shutdown(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)


def settle_timeout(summarizer: object) -> float:
    """How long to wait for background work: the summarizer's own bound (its `timeout`
    per call, times its attempts) with room for the compressor, else the default."""
    per_call = getattr(summarizer, "timeout", None)
    if not isinstance(per_call, (int, float)) or per_call <= 0:
        return DEFAULT_SETTLE_TIMEOUT
    attempts = 1 + int(getattr(summarizer, "retries", 0) or 0)
    backoff = float(getattr(summarizer, "backoff", 0.0) or 0.0)
    return float(per_call) * attempts + backoff * (2 ** attempts) + 30.0
