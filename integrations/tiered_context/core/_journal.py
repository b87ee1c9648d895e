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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tiered_context.core._durable import fsync_dir
from tiered_context.errors import StoreError

__all__: list[str] = []


class _Journal:
    """``archive.jsonl`` opened for appending: one owner, concurrent durable appends.

    How an append becomes durable, and why it is fast with many writers:

    - Each `commit` queues its bytes (under a lock, which gives it its place in the file)
      and waits. One *pass* runs at a time: its leader (the writer that found none
      running) writes every queued append with one ``os.write`` on a raw descriptor (no
      Python buffer, so a failed write cannot leave bytes behind for a later flush), then
      fsyncs them, outside the lock. Appends queued meanwhile wait for it, then the oldest
      of them leads the next pass, for all of them: writers share a write and its flush
      (the group commit). Every system call of a pass costs its writer a hand-off of the
      GIL, and so its wait; a writer that does not lead makes none.
    - A pass acknowledges what it made durable itself, in file order (each append's
      `finish`), and wakes each of those writers once, through its own event: a waiter is
      woken only when it is done or must lead (no herd of waiters re-checking one
      condition; with the GIL, each wake-up is a hand-off that can cost milliseconds).
    - An fsync goes through a descriptor opened before every byte it must vouch for was
      written: Linux reports a failed write-back once per open file, and only to
      descriptors open when it happened, so a descriptor opened later could let an append
      believe its bytes were safe. Each pass opens the descriptor the next one may use
      (labelled with the end of the file when it was opened), instead of each append
      opening its own: two system calls per pass, not four per append.
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
        self._sync_fds: list[list[int]] = []  # [label, fd]: fd opened when the file ended at label, oldest first
        self._closer = weakref.finalize(self, _close_all, self._fd, self._sync_fds)  # a store dropped unclosed releases the lock
        fsync_dir(file.parent)  # the file itself survives a power cut
        self._end = os.fstat(self._fd).st_size  # where the last queued append ends
        self._written = self._end  # the file's size: every byte below this is written
        self._synced = self._end  # every byte below this is on disk
        self._sync_fds.append([self._end, os.dup(self._fd)])  # opened before any append of this store
        self._syncing = False  # a pass runs, or `_leader` is to run the next one
        self._passing = False  # the pass runs (its fsync)
        self._leader: _Ticket | None = None
        self._cuts = 0  # failed appends cut back so far (an fsync across a cut proves nothing)
        self._cv = threading.Condition()  # the lock; `close` waits on it for the flight to empty
        self._flight: deque[_Ticket] = deque()  # written, not yet acknowledged or failed, in file order
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
            self._end = self._written = self._synced = size
            for entry in self._sync_fds:
                entry[0] = min(entry[0], size)

    def commit(self, data: bytes, finish: Callable[[bool], None]) -> None:
        """Append `data` durably; then `finish(True)`, called in file order. On failure:
        `finish(False)`, nothing of `data` left in the file, and `StoreError`."""
        ticket = _Ticket(finish)
        interrupted = None
        try:
            with self._cv:
                if self._broken or self._closed:
                    ticket.error = StoreError(self._broken or f"the archive {self.file} is closed; open a new store")
                else:
                    ticket.start, ticket.data = self._end, data
                    self._end += len(data)
                    ticket.end = self._end
                    self._flight.append(ticket)
            if ticket.error is None:
                self._wait(ticket)
        except BaseException as exc:  # noqa: BLE001 - a full disk (OSError), or an interrupt: it fails either way
            with self._cv:
                self._fail(ticket, exc)
            if not isinstance(exc, OSError):
                interrupted = exc
        if not ticket.acked:
            with self._cv:  # failed: out of the flight, and the appends before it go on
                if ticket in self._flight:
                    self._flight.remove(ticket)
                try:
                    ticket.finish(False)
                finally:
                    self._advance()
        if interrupted is not None:
            raise interrupted
        if ticket.error is not None:
            raise ticket.error
        if ticket.finish_error is not None:
            raise ticket.finish_error

    def _wait(self, ticket: _Ticket) -> None:
        """Return once `ticket` is acknowledged or failed: lead the next pass when none
        runs (or when woken to), else sleep until woken."""
        while True:
            with self._cv:
                if ticket.acked or ticket.error is not None:
                    return
                lead = self._leader is ticket or not self._syncing
                if lead:
                    self._syncing, self._leader = True, ticket
                else:
                    ticket.wake.clear()  # under the lock: a wake-up after this check is not lost
            if lead:
                self._pass()
            else:
                ticket.wake.wait()

    def _pass(self) -> None:
        """Write every queued append, fsync everything written, then acknowledge what it
        covered. A failed write fails its appends and every one queued after them."""
        fresh = os.open(self.file, os.O_WRONLY)  # for a later pass: opened before every byte queued after it
        with self._cv:
            self._sync_fds.append([self._end, fresh])  # labelled after the open: conservative
            batch = [t for t in self._flight if t.error is None and not t.written]
            if batch:
                try:
                    self._write(b"".join(t.data for t in batch))
                except BaseException as exc:
                    self._syncing, self._leader = False, None
                    self._fail(batch[0], exc)
                    raise
                for t in batch:
                    t.written, t.data = True, b""
                self._written = batch[-1].end
            fd = next(f for label, f in reversed(self._sync_fds) if label <= self._synced)
            target, cuts = self._written, self._cuts
            self._passing = True
        try:
            os.fsync(fd)
        except BaseException as exc:
            with self._cv:
                self._syncing, self._leader, self._passing = False, None, False
                head = next((t for t in self._flight if t.error is None and t.end > self._synced), None)
                if head is not None:
                    self._fail(head, exc)  # head and everything after it; wakes them
            raise
        with self._cv:
            self._syncing, self._leader, self._passing = False, None, False
            if cuts == self._cuts:  # else the bytes it covered may be gone: the next pass decides
                self._synced = max(self._synced, target)
                self._retire_fds()
            self._advance()

    def _advance(self) -> None:
        """Under the lock: acknowledge the durable appends at the head of the flight, in
        file order, waking each; then, if appends still wait and no pass runs, wake the
        oldest to lead the next."""
        while self._flight and self._flight[0].error is None and self._flight[0].end <= self._synced:
            done = self._flight.popleft()
            done.acked = True
            try:
                done.finish(True)
            except BaseException as exc:  # noqa: BLE001 - its bytes are durable; its own writer reports it
                done.finish_error = exc
            done.wake.set()
        if not self._flight:
            self._cv.notify_all()  # `close` waits for an empty flight
        elif not self._syncing and self._flight[0].error is None:
            self._syncing, self._leader = True, self._flight[0]
            self._leader.wake.set()

    def _retire_fds(self) -> None:
        """Close the descriptors no pass needs again: those older than the newest opened
        before every byte not yet durable."""
        keep = max(k for k, (label, _) in enumerate(self._sync_fds) if label <= self._synced)
        for _, fd in self._sync_fds[:keep]:
            os.close(fd)
        del self._sync_fds[:keep]

    def close(self) -> None:
        """Wait for the appends in flight, then close (which releases the lock)."""
        with self._cv:
            self._closed = True
            while self._flight:
                self._cv.wait()
        self._closer()

    def _write(self, data: bytes) -> None:
        """Append all of `data` (at `_written`); on an error cut back what part of it was
        written, and raise."""
        start = self._written
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self._written += written
                view = view[written:]
        except BaseException:
            self._truncate(start)
            raise

    def _fail(self, ticket: _Ticket, exc: BaseException) -> None:
        """`ticket` failed: cut the queue back to where it began (and the file, if its
        bytes were written); it and every append queued after it fail, and wake. Called
        under the lock."""
        if ticket.error is not None:
            return  # already failed with an earlier append, which cut its bytes
        doomed = [ticket]
        if ticket in self._flight:
            doomed = list(self._flight)[self._flight.index(ticket):]
            self._truncate(ticket.start)
        if self._leader in doomed and not self._passing:
            self._syncing, self._leader = False, None  # it will not lead now: `_advance` picks another
        for t in doomed:
            reason = getattr(exc, "strerror", None) or repr(exc)
            t.error = StoreError(f"cannot append to the archive {self.file}: {reason}; free disk space "
                                 "(or fix the disk) and retry: nothing of this write was kept")
            t.error.__cause__ = exc
            t.wake.set()

    def _truncate(self, size: int) -> None:
        """Cut the queue back to `size` (the appends from there on failed), and the file
        too where it reaches that far."""
        self._cuts += 1
        if size < self._written:
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self._broken = (f"the archive {self.file} could not be cut back after a failed write ({exc}), "
                                "so this store takes no more writes; check the disk, then close the store and "
                                "open it again (records of the failed write may then reappear, with their own seqs)")
                return
            self._written = size
            try:
                os.fsync(self._fd)  # best effort: the next pass's fsync makes the cut durable anyway
            except OSError:
                pass
        self._end = size
        for entry in self._sync_fds:  # opened before every byte queued after the cut
            entry[0] = min(entry[0], size)


@dataclass(eq=False, slots=True)
class _Ticket:
    """One `commit` on its way: where its bytes begin, and how it ended."""

    finish: Callable[[bool], None]
    start: int = 0
    end: int = 0
    data: bytes = b""  # queued, until a pass writes it
    written: bool = False
    acked: bool = False  # durable, and `finish(True)` called
    error: BaseException | None = None
    finish_error: BaseException | None = None  # raised by `finish(True)` in the pass that acknowledged it
    wake: threading.Event = field(default_factory=threading.Event)  # set when acknowledged, failed, or to lead


def _close_all(fd: int, sync_fds: list[list[int]]) -> None:
    for _, other in sync_fds:
        os.close(other)
    sync_fds.clear()
    os.close(fd)
