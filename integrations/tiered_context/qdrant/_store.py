"""`QdrantColdStore`: the L3 archive in Qdrant, embedded by default, a server by URL."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tiered_context.core import ContextItem, SearchResult, ThreadedTwins, normalize, query_terms
from tiered_context.errors import ConfigError, DuplicateItemError, StoreError
from tiered_context.qdrant import _search
from tiered_context.qdrant._connect import connect
from tiered_context.qdrant._engine import CollectionSpec, Engine, FusionMode, PointData, Record
from tiered_context.qdrant._payload import doc_terms, from_payload, to_payload
from tiered_context.qdrant._state import WRITE_BATCH, scroll_all, shared_state
from tiered_context.qdrant._stats import TenantStats, doc_weights
from tiered_context.qdrant._tenancy import TENANT_FIELD, Scope, point_id, scope

__all__ = ["QdrantColdStore"]

log = logging.getLogger("tiered_context")


class QdrantColdStore(ThreadedTwins):
    """The L3 cold tier in Qdrant: hybrid (dense + BM25) search, tenant-isolated, durable.

    Setup::

        from tiered_context import TieredContext
        from tiered_context.qdrant import QdrantColdStore

        store = QdrantColdStore(path="./memdir")                  # embedded, no server
        store = QdrantColdStore(url="http://qdrant:6333", api_key="...")  # a server / cluster
        ctx = TieredContext(session_id="s1", store=store)

    Use: `TieredContext` calls it; directly, ``store.add(tenant, items, vectors)`` then
    ``store.search(tenant, "query", qvec, limit=64, roles=["user"], since=t0)``.

    Result: every `add` is on disk (write-ahead log fsynced) before it returns; every
    read is scoped to one tenant (a session, user or agent string) and cannot see
    another's items; each hit carries its raw BM25 and cosine parts, and the result the
    collection-wide statistics the core z-normalises them with.

    Engines: ``Engine.EDGE`` (default; qdrant-edge-py, HNSW in Rust, ~1 ms searches),
    ``Engine.LOCAL`` (qdrant-client local mode: exact, slow past a few thousand items),
    ``Engine.SERVER`` (implied by ``url=``). Stores on one path in one process share
    the engine; another process on the same path is refused (run a server instead).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> QdrantColdStore:
        if cls is QdrantColdStore and kwargs.get("url") is not None:  # a server: many workers share it
            from tiered_context.qdrant._shared import SharedQdrantColdStore

            cls = SharedQdrantColdStore
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        engine: Engine | str | None = None,
        collection: str = "tiered_context",
        dim: int | None = None,
        fusion: FusionMode | str = FusionMode.UNION,
        exact_stats_limit: int = 4096,
        cached_tenants: int = 128,
        cached_items: int = 100_000,
        timeout: float = 10.0,
        index_after: int | None = None,
    ) -> None:
        if not collection or not isinstance(collection, str) or "/" in collection:
            raise ConfigError(f"collection must be a plain non-empty name, got {collection!r}")
        if dim is not None and (not isinstance(dim, int) or dim <= 0):
            raise ConfigError(f"dim must be a positive int, got {dim!r}")
        if exact_stats_limit < 0 or cached_tenants < 1:
            raise ConfigError("exact_stats_limit must be >= 0 and cached_tenants >= 1")
        if index_after is not None and (not isinstance(index_after, int) or index_after < 1):
            raise ConfigError(f"index_after must be a positive int (unindexed points that start a background "
                              f"index build) or None for the default, got {index_after!r}")
        self._index_after = index_after
        self.fusion = FusionMode(fusion)
        self.collection_name = collection
        self.exact_stats_limit = exact_stats_limit
        self._cached_tenants = cached_tenants
        self._handle = connect(path=path, url=url, api_key=api_key, engine=engine, timeout=timeout)
        # Stores on one path in one process share the engine *and* this state, so their
        # statistics and caches stay coherent whichever of them writes.
        state = shared_state(self._handle.conn, collection, cached_items)
        self._state = state
        self._lock = state.lock
        self._stats = state.stats
        self._lengths = state.lengths
        self._cache = state.cache
        self.engine: Engine = self._handle.engine
        self.path, self.url = path, url
        self._closed = False
        self._dim = dim
        try:
            meta = self._handle.conn.stored_meta(collection)
            if meta is not None:
                from tiered_context.qdrant._engine import check_meta

                where = f"collection {collection!r} at {url or path or 'a temporary directory'}"
                self._dim = check_meta(where, meta, "archive", dim)
                self._open(self._dim)
            elif dim is not None:
                self._open(dim)
        except BaseException:
            self._handle.release()
            raise

    # -- writes ------------------------------------------------------------------------
    def add(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        """Archive `items` with their vectors under `tenant`; durable when it returns.

        Re-adding an identical item is a no-op; the same id with other content raises
        `DuplicateItemError`. The batch is one write: all of it or (on error) none.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(items) != len(vectors):
            raise StoreError(f"{len(items)} items need a 2-d array of {len(items)} vectors, got shape {vectors.shape}")
        scope(tenant)  # validates the tenant before anything else
        if not items:
            return
        release = None
        try:
            with self._lock:  # checks, the write applied, statistics: one writer at a time
                coll = self._ensure(vectors.shape[1])
                stats = self._stats_for_write(tenant)
                existing = self._known(tenant, [i.id for i in items])
                fresh = _fresh(items, vectors, existing)
                if fresh:
                    release = self._cache.hold(tenant, [i.id for i, _ in fresh])
                    ticket = self._apply(tenant, coll, [i for i, _ in fresh], np.stack([v for _, v in fresh]), stats)
            if release is not None:  # durable outside the lock: writers applied meanwhile share the flush
                coll.wait_durable(ticket)
        finally:
            if release is not None:
                release()
        self._cache.settle(tenant, existing)  # an identical item another add has applied: its flush too

    def _apply(self, tenant: str, coll: Any, items: list[ContextItem], vectors: np.ndarray,
               stats: TenantStats | None) -> int:
        """Under the lock: points for `items`, written (not yet durable: the ticket to wait
        on), and folded into the statistics."""
        unit = normalize(vectors)
        toks = [doc_terms(i) for i in items]
        batch_len = sum(len(t) for t in toks)
        if stats is not None:
            avgdl = stats.avgdl(batch_len, len(toks))
        else:  # a large tenant not in memory: the mean length of everything written here
            avgdl = (self._lengths[0] + batch_len) / (self._lengths[1] + len(toks))
        sparse = [doc_weights(t, avgdl) for t in toks]
        points = [PointData(point_id(tenant, item.id), u, sp, to_payload(tenant, item, len(t)))
                  for item, u, sp, t in zip(items, unit, sparse, toks)]
        self._state.before_write(tenant)
        ticket = self._write(tenant, coll, points)
        self._lengths[0] += batch_len
        self._lengths[1] += len(toks)
        if stats is not None:
            self._fold(tenant, stats, unit, [dict(zip(*sp)) for sp in sparse], [len(t) for t in toks])
        return ticket

    def _write(self, tenant: str, coll: Any, points: list[PointData]) -> int:
        """Write `points` (embedded: one atomic write; a server: requests of at most
        `WRITE_BATCH` points) and remember them as a read returns them; the ticket to pass
        to `coll.wait_durable` (embedded: the group commit that makes them durable)."""
        ticket = 0
        step = WRITE_BATCH if self.engine == Engine.SERVER else len(points)
        for start in range(0, len(points), step):
            ticket = coll.apply(points[start:start + step])
        self._cache.remember(tenant, [from_payload(p.payload) for p in points])
        return ticket

    def _fold(self, tenant: str, stats: TenantStats, unit: np.ndarray, sparse: list[dict[int, float]],
              lengths: list[int]) -> None:
        """Add this process's write to the tenant's statistics (and re-weight a young tenant)."""
        stats.add(unit, sparse, lengths)
        if stats.reweight_due():
            try:
                self._reweight(tenant, stats)
            except StoreError as exc:  # the batch is stored: `add` must not say otherwise
                self._stats.pop(tenant, None)  # maybe half reweighted: rebuilt from Qdrant on next use
                log.warning("BM25 reweighting of tenant %r postponed (%s)", tenant, exc)

    def delete(self, tenant: str, ids: Iterable[str]) -> None:
        """Remove `ids` of `tenant` from the archive (ids of other tenants are untouched)."""
        ids = list(ids)
        where = scope(tenant, ids=ids)
        if not ids or self._coll is None:
            return
        with self._lock:
            self._state.before_write(tenant)
            self._coll.delete(where)
            self._state.forget(tenant)
            self._stats.pop(tenant, None)  # rebuilt from Qdrant on next use

    async def adelete(self, tenant: str, ids: Iterable[str]) -> None:
        await asyncio.to_thread(self.delete, tenant, list(ids))

    def drop_tenant(self, tenant: str) -> None:
        """Remove every item of `tenant` (a session's right to be forgotten)."""
        where = scope(tenant)  # validates the tenant before anything else
        if self._coll is None:
            return
        with self._lock:
            self._state.before_write(tenant)
            self._coll.delete(where)
            self._state.forget(tenant)
            self._stats.pop(tenant, None)

    # -- reads -------------------------------------------------------------------------
    def get(self, tenant: str, ids: Iterable[str]) -> list[ContextItem]:
        """Items of `tenant` by id, in the order asked (unknown ids are skipped)."""
        ids = list(ids)
        scope(tenant)
        if not ids or self._coll is None:
            return []
        found = self._known(tenant, ids)
        self._cache.settle(tenant, found)  # applied by an add still flushing: wait for its flush
        return [found[i] for i in ids if i in found]

    def get_by_seq(self, tenant: str, seqs: Iterable[int]) -> list[ContextItem]:
        """Original items of `tenant` at history positions `seqs`, in the order asked."""
        seqs = [int(s) for s in seqs]
        scope(tenant)
        if not seqs or self._coll is None:
            return []
        found = self._cache.by_seq(tenant, seqs)
        missing = [q for q in dict.fromkeys(seqs) if q not in found]
        if missing:
            fetched = self._fetch(scope(tenant, seqs=missing, originals_only=True))
            self._cache.remember(tenant, fetched)
            found.update((i.seq, i) for i in fetched)
        self._cache.settle(tenant, [i.id for i in found.values()])
        return [found[q] for q in seqs if q in found]

    def items(self, tenant: str) -> list[ContextItem]:
        """Every item of `tenant` (originals and derived), in history order."""
        if self._coll is None:
            scope(tenant)
            return []
        out = self._fetch(scope(tenant), limit=None)
        return sorted(out, key=lambda i: (i.seq, i.is_derived, i.timestamp, i.id))

    def count(self, tenant: str, *, originals_only: bool = True) -> int:
        if self._coll is None:
            scope(tenant)
            return 0
        return self._coll.count(scope(tenant, originals_only=originals_only))

    def search(
        self,
        tenant: str,
        query: str,
        vector: np.ndarray,
        *,
        limit: int,
        tiers: Iterable[str] | None = None,
        roles: Iterable[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> SearchResult:
        """Hybrid candidates for `query` within `tenant` (optionally only some tiers,
        roles, or a time range), each with raw BM25 and cosine parts, and the statistics
        of both signals over the tenant's whole collection."""
        return _search.search(self, tenant, query, vector, limit=limit, tiers=tiers, roles=roles, since=since,
                              until=until)

    def score(self, tenant: str, query: str, vector: np.ndarray, ids: Iterable[str]) -> dict[str, tuple[float, float]]:
        """(bm25, cosine) of each of `ids` stored under `tenant` (others are absent)."""
        ids = list(ids)
        if not ids or self._coll is None:
            scope(tenant)
            return {}
        q = normalize(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        with self._lock:
            idf = self._tenant_stats(tenant).idf(query_terms(query))
        return _search.parts(self, tenant, q, (list(idf), list(idf.values())) if idf else None, ids)

    # -- housekeeping ------------------------------------------------------------------
    def flush(self) -> None:
        """Write segments to disk now. Not needed for durability (every `add` is in the
        fsynced write-ahead log when it returns); it shortens the next open's replay."""
        coll = self._coll
        if coll is not None and hasattr(coll, "flush"):
            with self._lock:
                coll.flush()

    async def aflush(self) -> None:
        await asyncio.to_thread(self.flush)

    def optimize(self, *, wait: bool = True) -> bool:
        """Build the HNSW index now. Embedded (edge), the build runs in a child process on a
        copy of the shard and is swapped in when done: puts and searches go on meanwhile
        (it also starts by itself past `index_after` unindexed points, 50,000 by default).
        `wait=False` returns at once. A server indexes by itself: False there."""
        coll = self._coll
        if coll is None or not hasattr(coll, "build_index"):
            return False
        return bool(coll.optimize(wait=wait))

    def close(self) -> None:
        """Release the engine (flushes segments when the last user closes it)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._handle.release()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> QdrantColdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.url or self.path or "temporary directory"
        return f"QdrantColdStore({self.engine.value}, {where!s}, collection={self.collection_name!r})"

    # -- internals ---------------------------------------------------------------------
    @property
    def _connection(self) -> Any:
        return self._handle.conn

    def _spec(self, dim: int) -> CollectionSpec:
        return CollectionSpec(name=self.collection_name, kind="archive", dim=dim, sparse=True,
                              keyword_fields=("tier", "role", "form"), integer_fields=("seq",),
                              float_fields=("timestamp",))

    @property
    def _coll(self) -> Any:
        """The collection, or None while nothing was ever written (another store on the
        same engine may have created it since: look again)."""
        if self._closed:
            raise StoreError("this QdrantColdStore is closed; open a new one")
        if self._state.coll is None:
            with self._lock:
                if self._state.coll is None:
                    meta = self._connection.stored_meta(self.collection_name)
                    if meta is not None:
                        from tiered_context.qdrant._engine import check_meta

                        self._open(check_meta(f"collection {self.collection_name!r}", meta, "archive", self._dim))
        return self._state.coll

    def _open(self, dim: int) -> Any:
        self._state.coll = self._connection.collection(self._spec(dim))
        if self._index_after is not None and hasattr(self._state.coll, "index_after"):
            self._state.coll.index_after = self._index_after
        self._dim = dim
        return self._state.coll

    def _ensure(self, dim: int) -> Any:
        if self._coll is None:
            return self._open(dim)
        if dim != self._coll.dim:
            raise StoreError(f"vectors have dim {dim} but this store holds dim {self._coll.dim}; use the same embedder")
        return self._coll

    def _records(self, where: Scope, *, with_vectors: bool | list[str] = False, limit: int | None = None,
                 payload: bool | list[str] = True) -> list[Record]:
        return scroll_all(self._coll, where, with_vectors=with_vectors, limit=limit, payload=payload)

    def _stats_for_write(self, tenant: str) -> TenantStats | None:
        return self._state.stats_for_write(self._coll, tenant, self._cached_tenants)

    def _tenant_stats(self, tenant: str) -> TenantStats:
        return self._state.tenant_stats(self._coll, tenant, self._cached_tenants)

    def _reweight(self, tenant: str, stats: TenantStats) -> None:
        self._state.reweight(self._coll, tenant, stats)

    def _known(self, tenant: str, ids: Sequence[str]) -> dict[str, ContextItem]:
        """The stored items among `ids`, by id (`ItemCache.known`; the engine read is by
        point id, and keeps only `tenant`'s points)."""
        return self._cache.known(tenant, ids, lambda unknown: [
            from_payload(r.payload) for r in self._coll.retrieve([point_id(tenant, i) for i in unknown])
            if r.payload.get(TENANT_FIELD) == tenant])

    def _fetch(self, where: Scope, limit: int | None = -1) -> list[ContextItem]:
        if self._coll is None:
            return []
        if limit == -1:
            limit = len(where.point_ids) if where.point_ids is not None else None
        if limit == 0:
            return []
        return [from_payload(r.payload) for r in self._records(where, limit=limit)]


def _fresh(items: Sequence[ContextItem], vectors: np.ndarray,
           existing: dict[str, ContextItem]) -> list[tuple[ContextItem, np.ndarray]]:
    """What `add` writes: each new id once; an identical re-add is skipped, the same id with
    other content refused."""
    fresh: list[tuple[ContextItem, np.ndarray]] = []
    seen: set[str] = set()
    for item, vec in zip(items, vectors):
        old = existing.get(item.id)
        if old is not None or item.id in seen:
            if old is not None and old.text == item.text and old.role == item.role:
                continue
            raise DuplicateItemError(
                f"item id {item.id!r} is already stored with different content; "
                "give the new item its own id (or omit id= to derive one from content)"
            )
        seen.add(item.id)
        fresh.append((item, vec))
    return fresh
