"""The `ColdStore` seam (L3) and `LocalColdStore`, its in-process implementation.

L3 holds every original ever `put` (and every derived item), so compression and
pruning can only cost tokens, never data. Every read path takes a mandatory `tenant`
(the session scope); nothing can be read across tenants through this interface.

`LocalColdStore` keeps items, a BM25 index and a unit-vector matrix per tenant in
memory. Given a `path`, it also appends every batch to a JSONL journal (flushed and
fsynced before `add` returns) and replays it on open; a torn last line from a crash is
ignored, so acknowledged items survive and nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tiered_context.core.items import ContextItem, Tier
from tiered_context.core.lexical import BM25Index
from tiered_context.errors import DuplicateItemError, StoreError

__all__ = ["ColdStore", "Hit", "LocalColdStore", "SearchResult", "SignalStats", "decode_record", "encode_record"]


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
        self.bm25.add(_search_text(item))
        self._chunks.append(vector[None, :])


def _search_text(item: ContextItem) -> str:
    speaker = item.metadata.get("speaker") or item.metadata.get("name") or ""
    return f"{speaker} {item.text}" if speaker else item.text


class LocalColdStore:
    """In-process L3 store: exact hybrid search, optional JSONL journal for durability.

    >>> store = LocalColdStore()                 # memory only
    >>> store = LocalColdStore(path="./memdir")  # journaled, replayed on open
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, dim: int | None = None) -> None:
        self._parts: dict[str, _Partition] = {}
        self._dim = dim
        self._lock = threading.RLock()
        self._journal = None
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                file = self.path / "archive.jsonl"
                if file.exists():
                    self._replay(file)
                self._journal = open(file, "a", encoding="utf-8")  # after _replay cut any torn tail
            except OSError as exc:
                raise StoreError(f"cannot open the archive at {self.path}: {exc}; pass a writable path=") from exc

    # -- writes ------------------------------------------------------------------
    def add(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        """Archive `items` (with their unit vectors) for `tenant`, durably if journaled.

        Re-adding an identical item is a no-op; the same id with other content raises
        `DuplicateItemError`.
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
                batch[item.id] = item
                fresh.append((item, vec))
            if self._journal is not None and fresh:
                lines = [json.dumps({"tenant": tenant, **encode_record(i, v)}, default=str) + "\n" for i, v in fresh]
                self._journal.write("".join(lines))
                self._journal.flush()
                os.fsync(self._journal.fileno())
            for item, vec in fresh:
                part.add(item, vec)

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
        with self._lock:
            bm25 = part.bm25.scores(query)
            dense = part.matrix @ np.asarray(vector, dtype=np.float32).reshape(-1)
        n = len(part.items)
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
        with self._lock:
            bm25 = part.bm25.scores(query)
            idx = np.asarray([r for _, r in rows])
            dense = part.matrix[idx] @ np.asarray(vector, dtype=np.float32).reshape(-1)
        return {i: (float(bm25[r]), float(d)) for (i, r), d in zip(rows, dense)}

    async def asearch(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult:
        return self.search(tenant, query, vector, limit=limit)  # in-memory: no I/O to await

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

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

    def _replay(self, file: Path) -> None:
        """Load every complete record; cut a torn tail (a crash mid-write, never
        acknowledged) so that the next append starts on a fresh line."""
        good = 0
        with open(file, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn tail
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                good += len(raw)
                item, vec = decode_record(rec)
                part = self._partition(rec["tenant"], len(vec))
                if item.id not in part.index:
                    part.add(item, vec)
        if good < file.stat().st_size:
            with open(file, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())


def encode_record(item: ContextItem, vector: np.ndarray) -> dict[str, Any]:
    """One archive record as JSON-ready data: ``{"item": {...}, "vec": "<base64 float32>"}``.

    The format of the local journal and of any store that keeps records as documents
    (e.g. `tiered_context.langchain.GraphStoreColdStore`); `decode_record` reverses it.
    """
    return {
        "item": {
            "id": item.id, "text": item.text, "role": item.role, "timestamp": item.timestamp,
            "tokens": item.tokens, "tier": item.tier.value, "importance": item.importance,
            "pinned": item.pinned, "metadata": dict(item.metadata), "source_ids": list(item.source_ids),
            "seq": item.seq,
        },
        "vec": base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode("ascii"),
    }


def decode_record(record: Mapping[str, Any]) -> tuple[ContextItem, np.ndarray]:
    """The item and vector of a record written by `encode_record`."""
    data = record["item"]
    item = ContextItem(**{**data, "tier": Tier(data["tier"]), "source_ids": tuple(data["source_ids"])})
    return item, np.frombuffer(base64.b64decode(record["vec"]), dtype=np.float32)
