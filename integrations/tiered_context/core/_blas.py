"""Matrix products on one BLAS thread (`one_blas_thread`), process-wide and shared by
every thread of the memory."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["THREADED_ROWS", "one_blas_thread"]

# Products over at least this many rows keep BLAS's threads (measured on 2 cores, 256-d
# float32: 10,000 rows 0.08 vs 0.17 ms, 100,000 rows 4.7 vs 9.5 ms on two threads vs one).
THREADED_ROWS = 10_000

_lock = threading.Lock()
_users = 0  # callers inside a block
_limiter: Any = None  # our limit while one holds (None: none set, or another thread's held)


@contextmanager
def one_blas_thread(rows: int = 0) -> Iterator[None]:
    """Run the block's matrix products on one BLAS thread (unless `rows` >= THREADED_ROWS).

    Most of the memory's products are small (a summary's sentences against each other,
    scores of a session's items against a query): a fraction of a millisecond on one
    thread, and a threaded call costs more than it saves: OpenBLAS's helper threads spin
    after each call, and beside the memory's own threads (the caller and the ladder's
    worker) that spin was ~20% of the CPU of ingesting a long history on 2 cores. A block
    whose product spans `rows` >= THREADED_ROWS stored vectors keeps the threads.

    The BLAS setting is process-wide, so it holds while any caller is inside such a block
    and is restored when the last one leaves, whichever thread that is. It covers the BLAS
    libraries loaded at the first call (numpy's, the one these products run on). A limit
    another thread holds (its own `threadpoolctl.threadpool_limits`) is left alone. Without
    `threadpoolctl` this does nothing.
    """
    global _users, _limiter
    if rows >= THREADED_ROWS:
        yield
        return
    with _lock:
        if _users == 0:
            _limiter = _limit()
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _limiter is not None:
                _restore(_limiter)
                _limiter = None


def _limit() -> Any:
    """Limit the BLAS libraries to one thread; the limiter, or None if it did not take."""
    controller = _controller()
    if controller is None:
        return None
    limiter = controller.limit(limits=1, user_api="blas")
    # threadpoolctl lets one thread at a time change OpenBLAS: the limit took only if no
    # other thread held it.
    took = all(lib.num_threads == 1 for lib in controller.lib_controllers if lib.user_api == "blas")
    return limiter if took else None


def _restore(limiter: Any) -> None:
    # The thread that set the limit may not be the last to leave. threadpoolctl hands OpenBLAS
    # to the first thread that changes it; the limit is ours, so hand it over, restore, release.
    from threadpoolctl import OpenBLASController

    release = getattr(OpenBLASController, "clear_controlling_thread", None)
    if release is not None:
        release(force=True)
    limiter.restore_original_limits()
    if release is not None:
        release()


@functools.lru_cache(maxsize=1)
def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; an older environment runs as before
        return None
    return ThreadpoolController()
