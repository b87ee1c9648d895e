"""The `ColdStore` seam (L3) and `LocalColdStore`, its in-process implementation.

L3 holds every original ever `put` (and every derived item), so compression and
pruning can only cost tokens, never data. Every read path takes a mandatory `tenant`
(the session scope); nothing can be read across tenants through this interface.

`LocalColdStore` keeps items, a BM25 index and a unit-vector matrix per tenant in
memory. Given a `path`, it also keeps ``archive.jsonl``, a journal of one JSON line per
item, and replays it on open. The journal's rules:

- **Acknowledged means on disk.** `add` returns once its lines are written and fsynced.
  Concurrent writers share both: the lines queued while one write and fsync run go to
  disk together in the next (group commit; see `_Journal`).
- **A failed write leaves nothing behind.** On a write or fsync error (a full disk) the
  file is cut back to where it ended, the in-memory index is not touched and `add`
  raises `StoreError`: the record never shows up later, on reopen or otherwise.
- **Every line carries a checksum** (crc32 of the line's JSON body). On open, a torn
  tail (a crash mid-write: never acknowledged) is cut, including a batch (one `add`)
  whose last line never made it. A damaged line with valid records after it is *not*
  cut: it is skipped, copied to ``archive.jsonl.damaged`` and reported (a warning and
  `LocalColdStore.damaged`), and every record after it is kept; so is a whole line
  this release cannot read. Lines written by earlier releases (no checksum) still load.
- **One owner.** The journal is locked (``flock``) while a store has it open; a second
  store on the same path, in this process or another, is refused with `StoreError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tiered_context.core._blas import one_blas_thread
from tiered_context.core._items import ContextItem
from tiered_context.core._journal import _Journal
from tiered_context.core._records import DamagedRecord, _encode_line, _scan, _set_aside
from tiered_context.core._lexical import BM25Index
from tiered_context.errors import DuplicateItemError, StoreError

__all__ = ["ColdStore", "Hit", "LocalColdStore", "SearchResult", "SharedTwins", "SignalStats", "ThreadedTwins", "search_text"]

log = logging.getLogger("tiered_context")


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result with its raw relevance parts (fused later by the `Scorer`)."""

    item: ContextItem
    bm25: float
    dense: float


@dataclass(frozen=True, slots=True)
class SignalStats:
    """Mean and standard deviation of each raw signal over the tenant's whole collection
    for one query: what turns raw BM25 and cosine scores into comparable z-scores."""

    bm25_mean: float = 0.0
    bm25_std: float = 1.0
    dense_mean: float = 0.0
    dense_std: float = 1.0


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Candidates for one query, and the statistics to normalise their scores."""

    hits: list[Hit]
    stats: SignalStats


@runtime_checkable
class ColdStore(Protocol):
    """L3: archive of originals and derived items, searched by text and vector."""

    def add(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None: ...

    def get(self, tenant: str, ids: Iterable[str]) -> list[ContextItem]: ...

    def get_by_seq(self, tenant: str, seqs: Iterable[int]) -> list[ContextItem]: ...

    def search(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult: ...

    def score(self, tenant: str, query: str, vector: np.ndarray, ids: Iterable[str]) -> dict[str, tuple[float, float]]: ...

    def items(self, tenant: str) -> list[ContextItem]: ...

    def count(self, tenant: str) -> int: ...


class ThreadedTwins:
    """The async twins of a blocking `ColdStore` (a mixin): each runs its sync method in a
    worker thread, so the event loop keeps running while the database or the disk works."""

    async def aadd(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        await asyncio.to_thread(self.add, tenant, items, vectors)  # type: ignore[attr-defined]

    async def aget(self, tenant: str, ids: Iterable[str]) -> list[ContextItem]:
        return await asyncio.to_thread(self.get, tenant, list(ids))  # type: ignore[attr-defined]

    async def aget_by_seq(self, tenant: str, seqs: Iterable[int]) -> list[ContextItem]:
        return await asyncio.to_thread(self.get_by_seq, tenant, list(seqs))  # type: ignore[attr-defined]

    async def aitems(self, tenant: str) -> list[ContextItem]:
        return await asyncio.to_thread(self.items, tenant)  # type: ignore[attr-defined]

    async def acount(self, tenant: str, *, originals_only: bool = True) -> int:
        return await asyncio.to_thread(self.count, tenant, originals_only=originals_only)  # type: ignore[attr-defined]

    async def asearch(self, tenant: str, query: str, vector: np.ndarray, *, limit: int, **filters: Any) -> SearchResult:
        return await asyncio.to_thread(lambda: self.search(tenant, query, vector, limit=limit, **filters))  # type: ignore[attr-defined]

    async def ascore(self, tenant: str, query: str, vector: np.ndarray, ids: Iterable[str]) -> dict[str, tuple[float, float]]:
        return await asyncio.to_thread(self.score, tenant, query, vector, list(ids))  # type: ignore[attr-defined]


class SharedTwins(ThreadedTwins):
    """`ThreadedTwins` plus those of a store many workers share (`core.catchup.SharedColdStore`)."""

    async def anext_seqs(self, tenant: str, n: int) -> range:
        return await asyncio.to_thread(self.next_seqs, tenant, n)  # type: ignore[attr-defined]

    async def awatermark(self, tenant: str) -> int:
        return await asyncio.to_thread(self.watermark, tenant)  # type: ignore[attr-defined]

    async def asince(self, tenant: str, watermark: int, *, limit: int | None = None) -> list[ContextItem]:
        return await asyncio.to_thread(self.since, tenant, watermark, limit=limit)  # type: ignore[attr-defined]


class _Partition:
    """One tenant's items, BM25 index and vectors."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.items: list[ContextItem] = []
        self.index: dict[str, int] = {}
        self.by_seq: dict[int, int] = {}
        self.bm25 = BM25Index()
        self._chunks: list[np.ndarray] = []
        self._matrix = np.zeros((0, dim), dtype=np.float32)

    @property
    def matrix(self) -> np.ndarray:
        if self._chunks:
            self._matrix = np.concatenate([self._matrix, *self._chunks])
            self._chunks.clear()
        return self._matrix

    def add(self, item: ContextItem, vector: np.ndarray) -> None:
        self.index[item.id] = len(self.items)
        if not item.is_derived and item.seq >= 0:
            self.by_seq[item.seq] = len(self.items)
        self.items.append(item)
        self.bm25.add(search_text(item))
        self._chunks.append(vector[None, :])


def search_text(item: ContextItem) -> str:
    """The text BM25 indexes for an item: its speaker (or name), then its text."""
    speaker = item.metadata.get("speaker") or item.metadata.get("name") or ""
    return f"{speaker} {item.text}" if speaker else item.text


class LocalColdStore:
    """In-process L3 store: exact hybrid search, optional JSONL journal for durability.

    >>> store = LocalColdStore()                 # memory only
    >>> store = LocalColdStore(path="./memdir")  # journaled, replayed on open

    ``store.damaged`` lists the journal lines found damaged on open (empty if none).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, dim: int | None = None) -> None:
        self._parts: dict[str, _Partition] = {}
        self._dim = dim
        self._lock = threading.RLock()
        self._journal: _Journal | None = None
        self._inflight: dict[tuple[str, str], tuple[ContextItem, int]] = {}  # written, not yet acknowledged
        self.damaged: list[DamagedRecord] = []
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the archive at {self.path}: {exc}; pass a writable path=") from exc
            self._journal = _Journal(self.path / "archive.jsonl")  # locked before it is read
            try:
                self._replay()
            except BaseException:
                self._journal.close()
                raise

    # -- writes ------------------------------------------------------------------
    def add(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        """Archive `items` (with their unit vectors) for `tenant`, durably if journaled.

        Re-adding an identical item is a no-op; the same id with other content raises
        `DuplicateItemError`. A failed write (a full disk) raises `StoreError` and keeps
        nothing: not in memory, not in the journal.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(items) != len(vectors):
            raise StoreError(f"{len(items)} items but {len(vectors)} vectors; pass one vector per item")
        with self._lock:
            part = self._partition(tenant, vectors.shape[1] if vectors.ndim == 2 else None)
            if vectors.ndim != 2 or vectors.shape[1] != part.dim:
                raise StoreError(
                    f"vectors of shape {vectors.shape} do not match this tenant's dim {part.dim}; "
                    "use the same embedder for every item of a store"
                )
            fresh: list[tuple[ContextItem, np.ndarray]] = []
            batch: dict[str, ContextItem] = {}
            for item, vec in zip(items, vectors):
                old = part.items[part.index[item.id]] if item.id in part.index else batch.get(item.id)
                if old is not None:
                    if old.text == item.text and old.role == item.role:
                        continue  # the same item again: idempotent
                    raise DuplicateItemError(
                        f"item id {item.id!r} is already stored with different content; "
                        "give the new item its own id (or omit id= to derive one from content)"
                    )
                pending = self._inflight.get((tenant, item.id))
                if pending is not None and (pending[0].text != item.text or pending[0].role != item.role):
                    raise DuplicateItemError(
                        f"item id {item.id!r} is being stored with different content by another writer; "
                        "give the new item its own id (or omit id= to derive one from content)"
                    )
                batch[item.id] = item
                fresh.append((item, vec))
            if not fresh:
                return
            if self._journal is None:
                for item, vec in fresh:
                    part.add(item, vec)
                return
            n = len(fresh)
            data = b"".join(_encode_line(tenant, i, v, (k, n) if n > 1 else None) for k, (i, v) in enumerate(fresh))
            for item, _ in fresh:  # an identical item in flight elsewhere is written again (replay keeps one)
                _, count = self._inflight.get((tenant, item.id), (item, 0))
                self._inflight[(tenant, item.id)] = (item, count + 1)

        def finish(ok: bool) -> None:  # once the lines are acknowledged (in journal order) or failed
            with self._lock:
                for item, vec in fresh:
                    kept, count = self._inflight.pop((tenant, item.id))
                    if count > 1:
                        self._inflight[(tenant, item.id)] = (kept, count - 1)
                    if ok and item.id not in part.index:
                        part.add(item, vec)

        self._journal.commit(data, finish)

    async def aadd(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        await asyncio.to_thread(self.add, tenant, items, vectors)

    # -- reads -------------------------------------------------------------------
    def get(self, tenant: str, ids: Iterable[str]) -> list[ContextItem]:
        part = self._parts.get(tenant)
        if part is None:
            return []
        return [part.items[part.index[i]] for i in ids if i in part.index]

    def get_by_seq(self, tenant: str, seqs: Iterable[int]) -> list[ContextItem]:
        part = self._parts.get(tenant)
        if part is None:
            return []
        return [part.items[part.by_seq[s]] for s in seqs if s in part.by_seq]

    def items(self, tenant: str) -> list[ContextItem]:
        part = self._parts.get(tenant)
        return list(part.items) if part else []

    def count(self, tenant: str, *, originals_only: bool = True) -> int:
        part = self._parts.get(tenant)
        if part is None:
            return 0
        return len(part.by_seq) if originals_only else len(part.items)

    def search(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult:
        """Union of the top `limit` by BM25 and the top `limit` by cosine, with both
        parts, and the collection-wide statistics of each signal for this query."""
        part = self._parts.get(tenant)
        if part is None or not part.items:
            return SearchResult([], SignalStats())
        with self._lock, one_blas_thread(rows=len(part.items)):
            bm25 = part.bm25.scores(query)
            dense = part.matrix @ np.asarray(vector, dtype=np.float32).reshape(-1)
        n = len(bm25)
        k = min(limit, n)
        top = set(np.argpartition(-dense, k - 1)[:k].tolist()) if k else set()
        positive = np.flatnonzero(bm25 > 0)
        if len(positive) > k:
            positive = positive[np.argpartition(-bm25[positive], k - 1)[:k]]
        top.update(positive.tolist())
        stats = SignalStats(float(bm25.mean()), float(bm25.std()) or 1.0, float(dense.mean()), float(dense.std()) or 1.0)
        return SearchResult([Hit(part.items[i], float(bm25[i]), float(dense[i])) for i in sorted(top)], stats)

    def score(self, tenant: str, query: str, vector: np.ndarray, ids: Iterable[str]) -> dict[str, tuple[float, float]]:
        """(bm25, cosine) for each of `ids` stored under `tenant`."""
        part = self._parts.get(tenant)
        if part is None:
            return {}
        rows = [(i, part.index[i]) for i in ids if i in part.index]
        if not rows:
            return {}
        with self._lock, one_blas_thread():
            bm25 = part.bm25.scores(query)
            idx = np.asarray([r for _, r in rows])
            dense = part.matrix[idx] @ np.asarray(vector, dtype=np.float32).reshape(-1)
        return {i: (float(bm25[r]), float(d)) for (i, r), d in zip(rows, dense)}

    async def asearch(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult:
        return self.search(tenant, query, vector, limit=limit)  # in-memory: no I/O to await

    def close(self) -> None:
        """Wait for writes in flight, then release the journal (and its lock)."""
        if self._journal is not None:
            self._journal.close()

    def __enter__(self) -> LocalColdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        sizes = {t: len(p.items) for t, p in self._parts.items()}
        return f"LocalColdStore({where}, items={sizes})"

    # -- internals ---------------------------------------------------------------
    def _partition(self, tenant: str, dim: int | None) -> _Partition:
        if not tenant:
            raise StoreError("tenant must be a non-empty string (the session / user scope)")
        part = self._parts.get(tenant)
        if part is None:
            if dim is None:
                raise StoreError("vectors must be a 2-d array (items x dim)")
            if self._dim is not None and dim != self._dim:
                raise StoreError(f"vectors have dim {dim} but this store holds dim {self._dim}; use the same embedder")
            self._dim = dim
            part = self._parts[tenant] = _Partition(dim)
        return part

    def _replay(self) -> None:
        """Load the journal: every valid record, damaged lines skipped and reported,
        the torn tail cut (see `_scan`)."""
        journal = self._journal
        assert journal is not None
        scan = _scan(journal.file)
        for tenant, item, vec in scan.records:
            part = self._partition(tenant, len(vec))
            if item.id not in part.index:
                part.add(item, vec)
        self.damaged = scan.damaged + scan.tail
        if self.damaged:
            _set_aside(journal.file, self.damaged, scan.raw)
        for bad in scan.damaged:
            log.warning(
                "%s line %d is damaged (%s): skipped, and every record after it is kept. A copy is in %s.damaged; "
                "the line stays in place and is skipped on each open (to repair it, edit or delete that line "
                "while no store has the archive open)", bad.file, bad.line, bad.reason, bad.file.name)
        for bad in scan.tail:
            log.warning("%s line %d at the tail is damaged (%s): cut, with a copy in %s.damaged",
                        bad.file, bad.line, bad.reason, bad.file.name)
        if scan.unfinished:
            log.warning("%s ended in a batch of %d record(s) cut short by a crash (never acknowledged): cut",
                        journal.file, scan.unfinished)
        journal.cut(scan.size)
