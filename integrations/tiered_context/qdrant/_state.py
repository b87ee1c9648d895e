"""State shared by every store object on one engine and collection in this process.

Derived, in-memory, and rebuilt from Qdrant whenever it is missing: per-tenant signal
statistics (`_stats.TenantStats`; an embedded store saves them at a clean close and loads
them back, `_snapshots`), a read cache of items (items are immutable: an id
never changes content, so a cached item is never stale; deletes evict the tenant), and
the last query's scored parts (the assembler scores its candidates twice).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiered_context.core import ContextItem
from tiered_context.qdrant._engine import SPARSE, Record
from tiered_context.qdrant._payload import doc_terms, from_payload
from tiered_context.qdrant._snapshots import Snapshots
from tiered_context.qdrant._stats import TenantStats, doc_weights
from tiered_context.qdrant._tenancy import Scope, scope

__all__ = ["LOAD_ON_WRITE", "PAGE", "WRITE_BATCH", "State", "scroll_all", "shared_state"]

PAGE = 1024  # points per scroll request
WRITE_BATCH = 512  # points per write request to a server (request size limits)
LOAD_ON_WRITE = 2048  # a write loads a tenant's statistics only up to this size
log = logging.getLogger("tiered_context")


class State:
    def __init__(self, cached_items: int, snapshots: Snapshots | None = None) -> None:
        self.lock = threading.RLock()
        self.snapshots = snapshots  # an embedded collection's saved statistics (None: a server)
        self.coll: Any = None
        self.stats: OrderedDict[str, TenantStats] = OrderedDict()
        self.lengths = [0, 0]  # total terms and documents written through this engine
        self.memo: tuple[Any, dict[str, tuple[float, float]]] = (None, {})
        self.cached_items = cached_items
        self.items: OrderedDict[tuple[str, str], ContextItem] = OrderedDict()  # (tenant, id) -> item
        self.by_seq: dict[tuple[str, int], str] = {}  # (tenant, seq) -> id, originals only

    def remember(self, tenant: str, items: Sequence[ContextItem]) -> None:
        if not self.cached_items:
            return
        with self.lock:
            for item in items:
                key = (tenant, item.id)
                self.items[key] = item
                self.items.move_to_end(key)
                if not item.is_derived and item.seq >= 0:
                    self.by_seq[(tenant, item.seq)] = item.id
            while len(self.items) > self.cached_items:
                self.items.popitem(last=False)  # a stale by_seq entry then just misses
            if len(self.by_seq) > 2 * self.cached_items:
                for k in [k for k, v in self.by_seq.items() if (k[0], v) not in self.items]:
                    del self.by_seq[k]

    def before_write(self, tenant: str) -> None:
        """Called under the lock before any write to `tenant` reaches the collection."""
        if self.snapshots is not None:
            self.snapshots.before_write(tenant)

    def save(self) -> None:
        """At a clean close of the engine: save the statistics in memory (embedded only)."""
        if self.snapshots is None:
            return
        with self.lock:
            try:
                self.snapshots.save(self.stats)
            except OSError as exc:  # a full disk costs the next open a scan, nothing else
                log.warning("statistics snapshots not saved (%s); the next open rebuilds them", exc)

    def forget(self, tenant: str) -> None:
        with self.lock:
            for key in [k for k in self.items if k[0] == tenant]:
                del self.items[key]
            for k in [k for k in self.by_seq if k[0] == tenant]:
                del self.by_seq[k]
            self.memo = (None, {})

    # -- per-tenant signal statistics ------------------------------------------------
    def stats_for_write(self, coll: Any, tenant: str, cached_tenants: int) -> TenantStats | None:
        """The tenant's statistics if in memory or cheap to load (small tenants); None
        for a large tenant not in memory (its statistics are rebuilt on its next search,
        so writes never trigger a full scan)."""
        if tenant in self.stats or coll.count(scope(tenant, originals_only=False)) <= LOAD_ON_WRITE:
            return self.tenant_stats(coll, tenant, cached_tenants)
        return None

    def tenant_stats(self, coll: Any, tenant: str, cached_tenants: int) -> TenantStats:
        """This tenant's statistics (rebuilt from Qdrant on first use; LRU-cached)."""
        with self.lock:
            stats = self.stats.get(tenant)
            if stats is not None:
                self.stats.move_to_end(tenant)
                return stats
            saved = None
            if self.snapshots is not None and self.snapshots.trusted:
                saved = self.snapshots.load(tenant, coll.dim, coll.count(scope(tenant)))
            stats = saved or TenantStats(coll.dim)
            records = [] if saved is not None else scroll_all(coll, scope(tenant), with_vectors=True, payload=["len"])
            if records:
                dense = np.stack([r.dense for r in records])
                stats.add(dense, [r.sparse or {} for r in records], [int(r.payload.get("len", 0)) for r in records])
                stats.weighted_at, stats.weighted_avgdl = stats.n, stats.avgdl()
            self.stats[tenant] = stats
            while len(self.stats) > cached_tenants:
                self.stats.popitem(last=False)
            return stats

    def reweight(self, coll: Any, tenant: str, stats: TenantStats) -> None:
        """Rewrite the tenant's BM25 weights with today's avgdl (young tenants only)."""
        avgdl = stats.avgdl()
        updates, old, new = [], [], []
        for r in scroll_all(coll, scope(tenant), with_vectors=[SPARSE]):
            idx, val = doc_weights(doc_terms(from_payload(r.payload)), avgdl)
            updates.append((r.id, (idx, val)))
            old.append(r.sparse or {})
            new.append(dict(zip(idx, val)))
        for start in range(0, len(updates), WRITE_BATCH):
            coll.set_sparse(updates[start:start + WRITE_BATCH])
        stats.replace_sparse(old, new)
        stats.weighted_at, stats.weighted_avgdl = stats.n, avgdl

    # -- the last query's parts ------------------------------------------------------
    def memo_for(self, key: tuple) -> dict[str, tuple[float, float]]:
        with self.lock:
            if self.memo[0] != key:
                self.memo = (key, {})
            return self.memo[1]


def scroll_all(coll: Any, where: Scope, *, with_vectors: bool | list[str] = False, limit: int | None = None,
               payload: bool | list[str] = True) -> list[Record]:
    """Every record in `where` (or the first `limit`), page by page."""
    out: list[Record] = []
    offset = None
    while True:
        page = PAGE if limit is None else min(PAGE, max(limit - len(out), 1))
        records, offset = coll.scroll(where, limit=page, offset=offset, with_vectors=with_vectors, with_payload=payload)
        out.extend(records)
        if offset is None or (limit is not None and len(out) >= limit):
            return out


_LOCK = threading.Lock()


def shared_state(conn: Any, collection: str, cached_items: int) -> State:
    """The one `State` of `collection` on connection `conn` (created on first use; on an
    embedded connection with statistics snapshots, saved when the connection closes)."""
    with _LOCK:
        states = conn.__dict__.setdefault("_tiered_state", {})
        if collection not in states:
            on_close = getattr(conn, "on_close", None)
            if getattr(conn, "temporary", True):
                on_close = None
            snapshots = Snapshots(conn.path / ".stats" / collection) if on_close is not None else None
            states[collection] = State(cached_items, snapshots)
            if on_close is not None:
                on_close.append(states[collection].save)
        return states[collection]
