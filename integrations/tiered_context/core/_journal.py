"""The journal of a `LocalColdStore` on disk: ``archive.jsonl`` opened for appending, one
owner, concurrent durable appends with a group commit. What a line holds, and how the
journal is read back, is `core._records`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tiered_context.core._durable import fsync_dir
from tiered_context.errors import StoreError

__all__: list[str] = []


class _Journal:
    """``archive.jsonl`` opened for appending: one owner, concurrent durable appends.

    How an append becomes durable, and why it is fast with many writers:

    - Each `commit` writes its bytes with one ``os.write`` on a raw descriptor (no Python
      buffer, so a failed write cannot leave bytes behind for a later flush), under a
      lock, so that lines never interleave and each append knows where it begins.
    - One fsync runs at a time, outside the lock, and covers every byte written before it
      started. Appends written while it runs wait for it, then one of them syncs them all:
      that is the group commit. (Each writer fsyncing on its own lets the filesystem share
      only the fsyncs that happen to overlap; with the GIL between them they rarely did, and
      8 writers were held to one fsync's rate, ~1,100 appends/s here.)
    - An fsync goes through a descriptor opened before the oldest append it covers was
      written (a duplicate of that append's own): Linux reports a failed write-back once per
      open file, and only to descriptors open when it happened, so a descriptor opened
      later, or shared with other writers, could let an append believe its bytes were safe.
    - Appends are acknowledged in file order. A failed one cuts the file back to where
      it began, so it fails every append written after it too, and nothing acknowledged
      is ever cut.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            self._fd = os.open(file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the archive {file}: {exc.strerror or exc}; pass a writable path=") from exc
        try:  # flock, not lockf: closing the other descriptors of the file must not release it
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            raise StoreError(
                f"the archive {file} is already open in another LocalColdStore (this process or another); "
                "close that one first, share one store object between sessions, or give each process its own path="
            ) from exc
        self._closer = weakref.finalize(self, os.close, self._fd)  # a store dropped unclosed releases the lock
        fsync_dir(file.parent)  # the file itself survives a power cut
        self._end = os.fstat(self._fd).st_size  # where the last append ends
        self._synced = self._end  # every byte below this is on disk
        self._syncing = False  # an fsync is running (one at a time)
        self._cuts = 0  # failed appends cut back so far (an fsync across a cut proves nothing)
        self._cv = threading.Condition()
        self._flight: list[_Ticket] = []  # written, not yet acknowledged or failed, in file order
        self._closed = False
        self._broken: str | None = None

    def cut(self, size: int) -> None:
        """Truncate the file to `size` bytes (a torn tail found on open)."""
        if size < self._end:
            try:
                os.ftruncate(self._fd, size)
                os.fsync(self._fd)
            except OSError as exc:
                raise StoreError(f"cannot cut the torn tail of {self.file}: {exc.strerror or exc}; "
                                 "check the disk and its permissions") from exc
            self._end = self._synced = size

    def commit(self, data: bytes, finish: Callable[[bool], None]) -> None:
        """Append `data` durably; then `finish(True)`, called in file order. On failure:
        `finish(False)`, nothing of `data` left in the file, and `StoreError`."""
        ticket = _Ticket(finish)
        sync_fd, interrupted = -1, None
        try:
            sync_fd = os.open(self.file, os.O_WRONLY)
            with self._cv:
                if self._broken or self._closed:
                    ticket.error = StoreError(self._broken or f"the archive {self.file} is closed; open a new store")
                else:
                    ticket.start, ticket.fd = self._end, sync_fd
                    self._write(data)
                    self._end += len(data)
                    ticket.end = self._end
                    self._flight.append(ticket)
            if ticket.error is None:
                self._sync(ticket)
        except BaseException as exc:  # noqa: BLE001 - a full disk (OSError), or an interrupt: it fails either way
            with self._cv:
                self._fail(ticket, exc)
            if not isinstance(exc, OSError):
                interrupted = exc
        finally:
            if sync_fd >= 0:
                os.close(sync_fd)
        with self._cv:
            while ticket.error is None and self._flight[0] is not ticket:
                self._cv.wait()  # an earlier append is still syncing: it may yet fail and cut this one
            if ticket in self._flight:
                self._flight.remove(ticket)
            self._cv.notify_all()
            ticket.finish(ticket.error is None)
        if interrupted is not None:
            raise interrupted
        if ticket.error is not None:
            raise ticket.error

    def _sync(self, ticket: _Ticket) -> None:
        """Return once `ticket`'s bytes are on disk (or it failed): wait for the fsync that
        runs, or run the next one, for everything written so far."""
        while True:
            with self._cv:
                while ticket.error is None and self._synced < ticket.end and self._syncing:
                    self._cv.wait()
                if ticket.error is not None or self._synced >= ticket.end:
                    return
                head = next(t for t in self._flight if t.error is None and t.end > self._synced)
                fd = os.dup(head.fd)  # open while `head` is unsynced: its writer waits for us
                self._syncing, target, cuts = True, self._end, self._cuts
            try:
                os.fsync(fd)
            except BaseException as exc:
                with self._cv:
                    self._syncing = False
                    self._fail(head, exc)  # head and everything after it; wakes the waiters
                raise
            finally:
                os.close(fd)
            with self._cv:
                self._syncing = False
                if cuts == self._cuts:  # else the bytes it covered may be gone: the next fsync decides
                    self._synced = max(self._synced, target)
                self._cv.notify_all()

    def close(self) -> None:
        """Wait for the appends in flight, then close (which releases the lock)."""
        with self._cv:
            self._closed = True
            while self._flight:
                self._cv.wait()
        self._closer()

    def _write(self, data: bytes) -> None:
        """Append all of `data`; on an error cut back what part of it was written, and raise."""
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
        except BaseException:
            self._truncate(self._end)
            raise

    def _fail(self, ticket: _Ticket, exc: BaseException) -> None:
        """`ticket` failed: cut the file back to where it began (if it got that far);
        it and every append written after it fail. Called under the lock."""
        if ticket.error is not None:
            return  # already failed with an earlier append, which cut its bytes
        doomed = [ticket]
        if ticket in self._flight:
            doomed = self._flight[self._flight.index(ticket):]
            self._truncate(ticket.start)
        for t in doomed:
            reason = getattr(exc, "strerror", None) or repr(exc)
            t.error = StoreError(f"cannot append to the archive {self.file}: {reason}; free disk space "
                                 "(or fix the disk) and retry: nothing of this write was kept")
            t.error.__cause__ = exc
        self._cv.notify_all()

    def _truncate(self, size: int) -> None:
        self._cuts += 1
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            self._broken = (f"the archive {self.file} could not be cut back after a failed write ({exc}), "
                            "so this store takes no more writes; check the disk, then close the store and "
                            "open it again (records of the failed write may then reappear, with their own seqs)")
            return
        self._end = size
        try:
            os.fsync(self._fd)  # best effort: the next append's fsync makes the cut durable anyway
        except OSError:
            pass


@dataclass(eq=False, slots=True)
class _Ticket:
    """One `commit` on its way: where its bytes begin, and how it ended."""

    finish: Callable[[bool], None]
    start: int = 0
    end: int = 0
    fd: int = -1  # the descriptor its writer opened before writing it, for an fsync
    error: BaseException | None = None
