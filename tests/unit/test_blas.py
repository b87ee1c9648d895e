"""`core.one_blas_thread`: one process-wide BLAS limit shared by every caller."""

from __future__ import annotations

import pytest


def test_one_blas_thread_holds_while_any_caller_is_inside_and_restores_after_the_last():
    """The BLAS thread count is process-wide: one caller leaving must not restore it under
    another still inside, and the last one out restores what was there before."""
    import threading

    from threadpoolctl import threadpool_info

    from tiered_context.core import one_blas_thread

    def threads() -> list[int]:  # numpy's BLAS: the one the memory's products run on
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]

    before = threads()
    if not before:
        pytest.skip("numpy's BLAS is not one threadpoolctl can see")
    with one_blas_thread():  # this thread sets and restores once first
        assert threads() == [1] * len(before)
    assert threads() == before
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with one_blas_thread():
            inside.set()
            release.wait(30)

    worker = threading.Thread(target=other)
    worker.start()
    assert inside.wait(30)
    assert threads() == [1] * len(before)  # set by the other thread
    with one_blas_thread():
        release.set()
        worker.join(30)
        assert threads() == [1] * len(before)  # the setter left; this caller is still inside
    assert threads() == before  # restored by the last one out, not the thread that set it
    with one_blas_thread(rows=100_000):  # a product that large keeps BLAS's threads
        assert threads() == before
