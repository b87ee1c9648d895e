"""Puts in flight on one memory: numbered in order, written concurrently, admitted in order.

`TieredContext.put_many` takes its lock only to number a batch (`reserve`) and to settle it
(`settle`); the durable write (a journal append and its fsync) runs outside the lock, so
the writes of many threads share their flushes (the journal's group commit). The rules:

- **Acknowledged means durable.** A put returns once its own write is durable and every
  write numbered before it has settled (`wait`), so that it is in the working set too:
  a thread that puts and then assembles sees its item.
- **The working set only shows stored items, in sequence order.** A settled write enters
  the ladder (`admit`) only when every write numbered before it has settled; a failed
  write never enters, and the writes after it go in without it.
- **Sequence numbers are unique and increasing.** A failed write leaves a gap only while
  later writes are in flight; once nothing is in flight, numbering resumes after the last
  stored item (`rewind`), so a failed put alone costs no number (as when puts were serial).
- **An item being written by another put** (the same id and content) is not written twice:
  the second put waits for the first write and is acknowledged with it; if that write
  fails, the second put writes the item itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered_context.core._embed import normalize
from tiered_context.core._importance import self_information
from tiered_context.core._items import ContextItem, Role, Tier
from tiered_context.errors import InputError

if TYPE_CHECKING:
    from tiered_context.core._compaction import Ladder

__all__ = ["PutPath", "Write", "WriteQueue"]


class Write:
    """One batch of originals on its way to the archive (`ok`: None in flight, then
    True stored or False failed; `done` once settled and, if stored, admitted)."""

    __slots__ = ("items", "admit", "ok", "done")

    def __init__(self, items: Sequence[ContextItem], admit: Callable[[Sequence[ContextItem]], None]) -> None:
        self.items = list(items)
        self.admit = admit
        self.ok: bool | None = None
        self.done = threading.Event()  # only this write's waiters wake when it is set


class WriteQueue:
    """The writes of one memory in sequence order. Every method but `wait` is called with
    `lock` held (the facade's lock); `drain` releases it while it waits, `wait` is called
    without it."""

    def __init__(self, lock: threading.RLock, rewind: Callable[[], None]) -> None:
        self._cond = threading.Condition(lock)
        self._queue: deque[Write] = deque()
        self._flight: dict[str, Write] = {}  # item id -> the write carrying it
        self._rewind = rewind

    def in_flight(self, item_id: str) -> tuple[ContextItem, Write] | None:
        """The item with `item_id` some write is carrying, and that write (None if none)."""
        write = self._flight.get(item_id)
        if write is None:
            return None
        return next(i for i in write.items if i.id == item_id), write

    def reserve(self, items: Sequence[ContextItem], admit: Callable[[Sequence[ContextItem]], None]) -> Write:
        """Queue `items` (numbered by the caller, after every queued write); `admit` takes
        them into the working set once they are stored and their turn has come."""
        write = Write(items, admit)
        self._queue.append(write)
        for item in write.items:
            self._flight[item.id] = write
        return write

    def settle(self, write: Write, ok: bool) -> None:
        """`write` is stored (`ok`) or failed: admit every settled write at the head, in order."""
        write.ok = ok
        error: BaseException | None = None
        try:
            while self._queue and self._queue[0].ok is not None:
                head = self._queue.popleft()
                for item in head.items:
                    if self._flight.get(item.id) is head:
                        del self._flight[item.id]
                try:
                    if head.ok:
                        head.admit(head.items)
                except BaseException as exc:  # the settled writes behind it still go in (and wake)
                    error = error or exc
                finally:
                    head.done.set()
            if error is not None:
                raise error
        finally:
            if not self._queue:
                self._rewind()  # nothing in flight: numbering resumes after the last stored item
                self._cond.notify_all()  # wakes `drain` only (puts wait on their own writes)

    @staticmethod
    def wait(writes: Iterable[Write]) -> bool:
        """Block (without the lock) until each of `writes` is settled and admitted; False
        if one failed."""
        writes = list(writes)
        for w in writes:
            w.done.wait()
        return all(w.ok for w in writes)

    def drain(self) -> None:
        """Block until no write is in flight."""
        while self._queue:
            self._cond.wait()

    def __len__(self) -> int:
        return len(self._queue)


class PutPath:
    """The facade's side of a put (a mixin of `TieredContext`, whose `put` and `put_many`
    call `_put_batch`): input coerced at the door, the per-item work, the durable write
    settled in the `WriteQueue`, and what admits a stored write into the ladder."""

    def _put_batch(self, batch: list[ContextItem]) -> list[ContextItem]:
        if not batch:
            return []
        key = self._namespace.key
        self._catch_up()
        while True:
            done = self._put(key, batch)
            if done is not None:
                return done
            # an identical item another put was writing failed to store: write it ourselves

    def _put(self, key: str, batch: list[ContextItem]) -> list[ContextItem] | None:
        """One attempt of `put_many` (None: an item this batch waited for was not stored)."""
        shared = self._shared  # many workers: the whole put under the lock (catch-up sees only admitted writes)
        with self._lock if shared else contextlib.nullcontext():
            ids = list(dict.fromkeys(i.id for i in batch))
            # the per-item work (tokens, importance, vectors) runs before the lock, for the
            # items the archive does not hold as they are (one read; re-checked under the lock)
            stored = {i.id: i for i in self.store.get(key, ids)}
            todo: dict[str, ContextItem] = {}
            for i in batch:
                if i.id not in todo and ((old := stored.get(i.id)) is None or old.text != i.text or old.role != i.role):
                    todo[i.id] = i
            work = self._work(list(todo.values()))
            with self._lock:
                known = stored if shared or not todo else {i.id: i for i in self.store.get(key, ids)}
                waits, new = [], []
                for item in batch:
                    old = known.get(item.id)
                    if old is None and (flying := self._writes.in_flight(item.id)) is not None:
                        old, other = flying
                        if old.text == item.text and old.role == item.role:
                            waits.append(other)  # the same item on its way: acknowledged with that write
                            known[item.id] = old
                    if old is None or old.text != item.text or old.role != item.role:
                        if item.id not in work:  # stored differently since the read above: the store refuses it
                            work.update(self._work([item]))
                        known[item.id] = item  # a repeat later in the batch is idempotent; a conflict, the store's to refuse
                        new.append(item)
                write = None
                if new:
                    seqs = (self.store.next_seqs(key, len(new)) if shared  # numbers no other worker can issue
                            else range(self._next_seq, self._next_seq + len(new)))
                    fresh = [item.evolve(seq=seq, tokens=work[item.id][0], tier=Tier.L1, importance=work[item.id][1])
                             for item, seq in zip(new, seqs)]
                    self._next_seq = max(self._next_seq, fresh[-1].seq + 1)
                    known.update((i.id, i) for i in fresh)
                    write = self._writes.reserve(fresh, self._admitter(self._ladder))
                    vectors = np.stack([work[i.id][2] for i in new])
                    if shared:  # under the lock: catch-up never sees a write of ours before it is admitted
                        self._archive(key, write, vectors)
            if write is not None and not shared:
                self._archive(key, write, vectors)  # outside the lock: concurrent writers share flushes
            if not self._writes.wait(([write] if write is not None else []) + waits):
                return None
            return [known[i.id] for i in batch]

    def _work(self, items: list[ContextItem]) -> dict[str, tuple[int, float, np.ndarray]]:
        """Id -> (tokens, importance, unit vector) of `items` (one embedding call)."""
        if not items:
            return {}
        vectors = normalize(self.embedder.embed([i.text for i in items]))
        return {i.id: (self.counter.count(i.text), i.importance or (1.0 if i.pinned else self_information(i.text)), v)
                for i, v in zip(items, vectors)}

    def _archive(self, key: str, write: Write, vectors: np.ndarray) -> None:
        """Write `write` durably (the store's `add`) and settle it: stored, or failed and raised."""
        try:
            self.store.add(key, write.items, vectors)  # raises on a conflicting id, a full disk
        except BaseException:
            with self._lock:
                self._writes.settle(write, False)
            raise
        with self._lock:
            self._writes.settle(write, True)

    def _admitter(self, ladder: Ladder) -> Callable[[list[ContextItem]], None]:
        """What admits a stored write: into `ladder` (the one current when it was numbered)."""
        def admit(items: list[ContextItem]) -> None:
            self._visible_seq = max(self._visible_seq, items[-1].seq + 1)
            if self._shared:
                self._known.update(i.id for i in items)
            ladder.admit(items)
        return admit

    def _rewind(self) -> None:
        """Nothing in flight: numbering resumes after the last stored item (a failed put
        costs no number). A shared store issues its own numbers."""
        if not self._shared:
            self._next_seq = self._visible_seq

    def _coerce(self, value: ContextItem | Mapping[str, Any] | str) -> ContextItem:
        if isinstance(value, ContextItem):
            item = value.checked()  # built directly: the same checks as `create`
        elif isinstance(value, Mapping):
            if "content" not in value and "text" not in value:
                raise InputError("a mapping item needs 'content' (or 'text'); e.g. {'role': 'user', 'content': 'hi'}")
            item = ContextItem.create(value.get("content", value.get("text")), role=value.get("role", Role.USER),
                                      timestamp=value.get("timestamp"), metadata=value.get("metadata"), id=value.get("id"), pinned=bool(value.get("pinned", False)))
        else:
            item = ContextItem.create(value)
        return self._admissible(item)

    @staticmethod
    def _admissible(item: ContextItem) -> ContextItem:
        """`item` (made by `ContextItem.create`) if `put` may store it, else `InputError`."""
        if not item.text.strip():
            raise InputError("empty text cannot be stored; skip empty messages (tool calls belong in the text or metadata)")
        if item.is_derived:
            raise InputError("put() takes originals; derived items (with source_ids) are made by the memory itself")
        return item
