"""The embedded shard's HNSW index, built in another process while this one keeps working.

qdrant-edge-py builds its index only in `EdgeShard.optimize()`, which holds the GIL for
its whole run (minutes at a few hundred thousand points): in a thread it would stop every
put and search of the process. So the build runs on a copy, in a child process:

1. under the collection's lock (puts and searches wait for it: a flush and a file copy,
   ~0.1 s per 20k points): flush, copy ``shard/`` to ``build/``, and start recording every
   update the live shard takes from then on;
2. a child process (``nice``, dies with its parent) loads ``build/``, optimizes, flushes;
   the live shard serves every put and search meanwhile, unindexed;
3. under the lock again: close the live shard, swap the directories, load the built one,
   replay the recorded updates into it (writes are idempotent upserts and deletes), flush.

Crash safety: ``swap.json`` is written (fsynced) before the first rename and removed after
the replay is flushed; that removal is the commit. An opener that finds ``swap.json``
puts ``shard.old`` back (the live shard, holding every acknowledged write); one that finds
none removes leftovers. A build that fails (disk, a killed child) is dropped and retried
after as many new points again.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from tiered_context.core import disk_usage, fsync_dir, write_atomic

log = logging.getLogger("tiered_context")

__all__ = ["IndexBuild", "recover"]

#: A test hook: called with the name of each step of a build (``copied``, ``built``,
#: ``swap-marked``, ``renamed``, ``replayed``) so a test can kill the process there.
on_step: Callable[[str], None] | None = None

#: Recorded updates past which a running build is dropped (its replay would hold the lock too long).
MAX_REPLAY = 200_000

_CHILD = ("import sys, qdrant_edge as qe\n"
          "s = qe.EdgeShard.load(sys.argv[1])\n"
          "s.optimize()\n"
          "s.flush()\n"
          "s.close()\n")


def recover(folder: Path) -> None:
    """Finish or undo a swap a killed process left behind in collection `folder`."""
    marker, live, old, build = folder / "swap.json", folder / "shard", folder / "shard.old", folder / "build"
    if marker.exists():  # the swap never committed: the old live shard holds every acknowledged write
        if old.exists():
            if live.exists():
                shutil.rmtree(live)
            os.replace(old, live)
        marker.unlink()
        fsync_dir(folder)
    for leftover in (old, build):
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)


class IndexBuild(threading.Thread):
    """One background build of collection `coll` (an `EdgeCollection`); see the module doc."""

    def __init__(self, coll: Any) -> None:
        super().__init__(name=f"tiered-context-index-{coll.spec.name}", daemon=True)
        self.coll = coll
        self.folder: Path = coll.folder
        self.child: subprocess.Popen[bytes] | None = None
        self.cancelled = threading.Event()
        self.swapped = False
        self.error: str | None = None

    def run(self) -> None:
        build = self.folder / "build"
        try:
            with self.coll._lock:
                if not self._copy(build):
                    return
            _step("copied")
            if self.cancelled.is_set():
                return
            self.child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(build)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True, preexec_fn=_child_setup)
            _, err = self.child.communicate()
            if self.child.returncode != 0:
                raise RuntimeError(f"the index builder exited with {self.child.returncode}: "
                                   f"{err.decode(errors='replace').strip()[-300:]}")
            _step("built")
            with self.coll._lock:
                if self.cancelled.is_set() or self.coll._replay is None or self.coll._shard is None:
                    return
                self.swapped = self._swap(build)
        except Exception as exc:  # noqa: BLE001 - a failed build is dropped, never the user's write
            self.error = f"{type(exc).__name__}: {exc}"
            if not self.cancelled.is_set():
                log.warning("background HNSW build of %s dropped (%s); retried after as many new points",
                            self.folder, self.error)
        finally:
            with self.coll._lock:
                self.coll._replay = None
            shutil.rmtree(build, ignore_errors=True)

    def _copy(self, build: Path) -> bool:
        """Step 1 (under the lock): flush, copy the live shard to `build`, start recording."""
        coll = self.coll
        if coll._shard is None:
            return False
        shard_dir = self.folder / "shard"
        coll._check_space(2 * disk_usage(shard_dir))  # the copy, then the built segments
        coll._shard.flush()
        shutil.rmtree(build, ignore_errors=True)
        shutil.copytree(shard_dir, build)
        coll._replay = []
        coll._unindexed = 0  # the copy gets indexed; a failed build is retried after as many new points
        return True

    def _swap(self, build: Path) -> bool:
        """Step 3 (under the lock): the built shard replaces the live one, with the updates
        taken meanwhile replayed; on any failure the old live shard comes back."""
        coll, folder = self.coll, self.folder
        shard_dir = folder / "shard"
        replay, coll._replay = coll._replay or [], None
        write_marker(folder)
        _step("swap-marked")
        live, coll._shard = coll._shard, None
        live.flush()
        live.close()
        try:
            os.replace(shard_dir, folder / "shard.old")
            os.replace(build, shard_dir)
            fsync_dir(folder)
            _step("renamed")
            coll._shard = qe.EdgeShard.load(str(shard_dir))
            for op in replay:
                coll._shard.update(op)
            coll._shard.flush()
            _step("replayed")
            commit(folder)
        except BaseException:
            if coll._shard is not None:
                coll._shard.close()
            recover(folder)  # the marker is there: the old live shard comes back
            coll._shard = qe.EdgeShard.load(str(shard_dir))
            raise
        finally:
            coll._log.replaced()  # other log files now
        return True

    def cancel(self) -> None:
        """Stop the build (the child is killed); the live shard is untouched."""
        self.cancelled.set()
        if self.child is not None and self.child.poll() is None:
            self.child.kill()


def write_marker(folder: Path) -> None:
    """``swap.json``, durable: from here until its removal an opener restores ``shard.old``."""
    write_atomic(folder / "swap.json", b'{"swap": "an opener puts shard.old back while this file exists"}')


def commit(folder: Path) -> None:
    """Remove ``swap.json`` (the commit of a swap) and the old shard."""
    (folder / "swap.json").unlink()
    fsync_dir(folder)
    shutil.rmtree(folder / "shard.old", ignore_errors=True)


def _step(name: str) -> None:
    if on_step is not None:
        on_step(name)


def _child_setup() -> None:  # pragma: no cover - runs in the child
    os.nice(10)
    try:  # die with the parent (Linux): an orphan must not write into a directory it no longer owns
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
