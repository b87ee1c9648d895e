"""The embedded shard's write-ahead log made durable, one fsync shared by many writers.

An embedded write is applied to the shard under the collection's lock (its bytes are in
the log's memory-mapped files, visible to reads) and acknowledged once the log's files
are fsynced. `LogSync.wait` is a group commit: one fsync pass runs at a time, outside
the collection's lock, and covers every write applied before it started; writers that
applied while it ran share the next one.

Why the pass keeps its descriptors open: with several threads busy, every blocking call
releases the GIL and waits to take it back (up to the interpreter's 5 ms switch
interval). Opening, fsyncing and closing each log file took ~13 such calls per pass, ~5 ms
with 8 writers; with the descriptors kept it is one listing and one fsync per file.
Names in the log are not reused (segments are numbered; a closed one is renamed, keeping
its inode), except when an index build swaps the whole shard in (`replaced`), which
drops the descriptors before the next pass.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from tiered_context.core import fsync_file

__all__ = ["LogSync"]


class LogSync:
    """fsync of one shard's log directory `wal` (see the module docstring). `flush` makes
    the whole shard durable instead when there is no log directory (another layout)."""

    def __init__(self, wal: Path, flush: Callable[[], None]) -> None:
        self.wal = wal
        self._flush = flush
        self.applied = 0  # writes applied, counted by the collection under its lock
        self._durable = 0  # every write up to this one is on disk
        self._syncing = False  # a pass runs (one at a time)
        self._closed = False
        self._cv = threading.Condition()
        self._fds: dict[str, int] = {}  # the passes' descriptors, by file name
        self._synced_closed: set[str] = set()  # closed segments fsynced once, never again
        self._epoch = self._seen = 0  # bumped by `replaced`; the passes catch up

    def applied_one(self) -> int:
        """Count a write just applied (under the collection's lock); its ticket."""
        self.applied += 1
        return self.applied

    def wait(self, ticket: int) -> None:
        """Return once the write `ticket` is on disk: wait for the pass that runs, or run
        the next one for every write applied so far. A failed pass raises in the writer
        that ran it; each other waiter then runs its own."""
        while True:
            with self._cv:
                while self._durable < ticket and self._syncing:
                    self._cv.wait()
                if self._durable >= ticket:
                    return
                self._syncing, target = True, self.applied
            synced = False
            try:
                self._pass(keep=not self._closed)
                synced = True
            finally:
                with self._cv:
                    self._syncing = False
                    if synced:
                        self._durable = max(self._durable, target)
                    self._cv.notify_all()

    def sync(self) -> None:
        """One pass now, by path (for writes made under the collection's lock)."""
        self._pass(keep=False)

    def replaced(self) -> None:
        """The log's files were replaced (an index build swapped the shard): drop what
        the passes know of them."""
        self._epoch += 1

    def close(self) -> None:
        """Close the descriptors (after the pass that runs, if one does)."""
        with self._cv:
            self._closed = True
            while self._syncing:
                self._cv.wait()
            self._drop()

    # -- internals ---------------------------------------------------------------------
    def _pass(self, *, keep: bool) -> None:
        """fsync every file of the log (a closed segment once). A file that vanishes
        meanwhile was closed (renamed), truncated away, or swapped out by an index build
        (which flushes the shard first): list again until one pass finds every file."""
        if keep and self._seen != self._epoch:
            self._seen = self._epoch
            self._drop()
        while True:
            try:
                names = os.listdir(self.wal)
            except (FileNotFoundError, NotADirectoryError):  # another layout, or mid-swap
                self._flush()
                return
            vanished = False
            for name in names:
                closed = name.startswith("closed-")
                if closed and name in self._synced_closed:
                    continue
                try:
                    if keep:
                        os.fsync(self._fd(name))
                    else:
                        fsync_file(self.wal / name)
                except FileNotFoundError:
                    vanished = True
                    continue
                if closed:
                    self._synced_closed.add(name)
            if keep:
                for name in [n for n in self._fds if n not in names or n in self._synced_closed]:
                    os.close(self._fds.pop(name))
            if not vanished:
                return

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(self.wal / name, os.O_RDONLY)
        return fd

    def _drop(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._synced_closed.clear()
