"""State shared by every store object on one engine and collection in this process.

Derived, in-memory, and rebuilt from Qdrant whenever it is missing: per-tenant signal
statistics (`_stats.TenantStats`; an embedded store saves them at a clean close and loads
them back, `_snapshots`), a read cache of items (`ItemCache`), and the last query's
scored parts (the assembler scores its candidates twice).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from tiered_context.core import ContextItem
from tiered_context.qdrant._engine import SPARSE, Record
from tiered_context.qdrant._payload import PAYLOAD_TERMS, from_payload, payload_terms
from tiered_context.qdrant._snapshots import Snapshots
from tiered_context.qdrant._stats import TenantStats, doc_weights
from tiered_context.qdrant._tenancy import Scope, scope

__all__ = ["LOAD_ON_WRITE", "PAGE", "WRITE_BATCH", "ItemCache", "State", "scroll_all", "shared_state"]

PAGE = 1024  # points per scroll request
WRITE_BATCH = 512  # points per write request to a server (request size limits)
LOAD_ON_WRITE = 2048  # a write loads a tenant's statistics only up to this size
log = logging.getLogger("tiered_context")


class State:
    def __init__(self, cached_items: int, snapshots: Snapshots | None = None, *, server: bool = True) -> None:
        self.lock = threading.RLock()
        self.snapshots = snapshots  # an embedded collection's saved statistics (None: a server)
        self.coll: Any = None
        self.stats: OrderedDict[str, TenantStats] = OrderedDict()
        self.lengths = [0, 0]  # total terms and documents written through this engine
        self.memo: tuple[Any, dict[str, tuple[float, float]]] = (None, {})
        self.cache = ItemCache(cached_items, absent=snapshots is not None or not server)

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
            self.cache.forget(tenant)
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
        updates, idx, old, new = [], [], [], []
        for r in scroll_all(coll, scope(tenant), with_vectors=[SPARSE], payload=PAYLOAD_TERMS):
            i, v = doc_weights(payload_terms(r.payload), avgdl)
            updates.append((r.id, (i, v)))
            was = dict(r.sparse or {})
            idx += i
            new += v
            old += [was.pop(k, 0.0) for k in i]
            idx += was  # terms no longer indexed (a store written under other term rules)
            old += was.values()
            new += [0.0] * len(was)
        for start in range(0, len(updates), WRITE_BATCH):
            coll.set_sparse(updates[start:start + WRITE_BATCH])
        stats.reweighted(np.asarray(idx, dtype=np.int64), np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64))
        stats.weighted_at, stats.weighted_avgdl = stats.n, avgdl

    # -- the last query's parts ------------------------------------------------------
    def memo_for(self, key: tuple) -> dict[str, tuple[float, float]]:
        with self.lock:
            if self.memo[0] != key:
                self.memo = (key, {})
            return self.memo[1]


class ItemCache:
    """Items of this collection as reads and writes saw them, and the ids known absent.

    Items are immutable (an id never changes content), so a cached item is never stale;
    deletes evict the tenant. Both maps are LRU-bounded by `size` and guarded by their
    own short lock, never held across an engine call, so a read does not wait for a write.

    Absent ids (`absent=True`: an embedded collection, whose process is its only writer)
    spare a put its existence checks: a put looks its ids up before and after taking its
    lock, and the store once more before writing, each an engine round trip for an id
    that is new. An id a read found missing is recorded unless a write of it ran during
    the read (`reading`); a write drops its ids from the record. Ids in the record stay
    absent until then: deletes only remove.

    Durability: an embedded write is visible as soon as it is applied and becomes
    durable at its group commit a little later. `hold` marks its ids meanwhile, and
    `settle` makes a reader of them (`get`, `get_by_seq`, `search`, an identical `add`)
    wait for that commit: no read returns what a crash could still take back, and a put
    that finds its item already stored (the same turn put twice at once) never returns
    before it is on disk.
    """

    def __init__(self, size: int, *, absent: bool) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], ContextItem] = OrderedDict()  # (tenant, id) -> item
        self._by_seq: dict[tuple[str, int], str] = {}  # (tenant, seq) -> id, originals only
        self._absent: OrderedDict[tuple[str, str], None] | None = OrderedDict() if absent and size else None
        self._reads: dict[int, set[tuple[str, str]]] = {}  # reads in flight: the ids written meanwhile
        self._holds: dict[tuple[str, str], threading.Event] = {}  # applied, not yet durable

    def known(self, tenant: str, ids: Iterable[str],
              read: Callable[[list[str]], list[ContextItem]]) -> dict[str, ContextItem]:
        """The stored items among `ids`, by id: cached, else `read(unknown ids)` from the
        engine (remembered; the ids it does not return are recorded absent)."""
        found, unknown = self.lookup(tenant, ids)
        if unknown:
            with self.reading(tenant) as missing:
                fetched = read(unknown)
                self.remember(tenant, fetched)
                found.update((i.id, i) for i in fetched)
                missing(i for i in unknown if i not in found)
        return found

    def lookup(self, tenant: str, ids: Iterable[str]) -> tuple[dict[str, ContextItem], list[str]]:
        """(cached items by id, the ids neither cached nor known absent)."""
        found: dict[str, ContextItem] = {}
        unknown: list[str] = []
        with self._lock:
            for i in dict.fromkeys(ids):
                item = self._items.get((tenant, i))
                if item is not None:
                    found[i] = item
                elif self._absent is None or (tenant, i) not in self._absent:
                    unknown.append(i)
        return found, unknown

    def by_seq(self, tenant: str, seqs: Iterable[int]) -> dict[int, ContextItem]:
        with self._lock:
            keys = {q: (tenant, self._by_seq.get((tenant, q), "")) for q in seqs}
            return {q: self._items[k] for q, k in keys.items() if k in self._items}

    @contextlib.contextmanager
    def reading(self, tenant: str) -> Iterator[Callable[[Iterable[str]], None]]:
        """Around an engine read of `tenant`'s ids; yields `missing(ids)` to record the ids
        it did not find (kept absent unless a write of one ran meanwhile)."""
        written: set[tuple[str, str]] = set()
        found_missing: list[str] = []
        with self._lock:
            self._reads[id(written)] = written
        try:
            yield found_missing.extend
        finally:
            with self._lock:
                del self._reads[id(written)]
                if self._absent is not None:
                    for i in found_missing:
                        if (tenant, i) not in written:
                            self._absent[(tenant, i)] = None
                            self._absent.move_to_end((tenant, i))
                    while len(self._absent) > self.size:
                        self._absent.popitem(last=False)

    def remember(self, tenant: str, items: Sequence[ContextItem]) -> None:
        """Items a read returned or a write applied (a write calls it right after applying)."""
        with self._lock:
            for item in items:
                key = (tenant, item.id)
                for written in self._reads.values():
                    written.add(key)
                if self._absent is not None:
                    self._absent.pop(key, None)
                if not self.size:
                    continue
                self._items[key] = item
                self._items.move_to_end(key)
                if not item.is_derived and item.seq >= 0:
                    self._by_seq[(tenant, item.seq)] = item.id
            while len(self._items) > self.size:
                self._items.popitem(last=False)  # a stale by_seq entry then just misses
            if len(self._by_seq) > 2 * self.size:
                for k in [k for k, v in self._by_seq.items() if (k[0], v) not in self._items]:
                    del self._by_seq[k]

    def forget(self, tenant: str) -> None:
        """Evict `tenant`'s items (its deletes); absent ids stay absent."""
        with self._lock:
            for key in [k for k in self._items if k[0] == tenant]:
                del self._items[key]
            for k in [k for k in self._by_seq if k[0] == tenant]:
                del self._by_seq[k]

    # -- applied, not yet durable --------------------------------------------------------
    def hold(self, tenant: str, ids: Sequence[str]) -> Callable[[], None]:
        """Mark `ids` as being written (before the write is applied); returns what to call
        once it is durable (or failed), which lets their readers go on."""
        done = threading.Event()
        with self._lock:
            for i in ids:
                self._holds[(tenant, i)] = done

        def release() -> None:
            with self._lock:
                for i in ids:
                    if self._holds.get((tenant, i)) is done:
                        del self._holds[(tenant, i)]
            done.set()
        return release

    def settle(self, tenant: str, ids: Iterable[str]) -> None:
        """Return once every write of `ids` a reader may have seen applied is durable."""
        with self._lock:
            waits = {id(e): e for i in ids if (e := self._holds.get((tenant, i))) is not None}
        for done in waits.values():
            done.wait()


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
            # a server may take writes from other processes: what is absent here may not stay so
            states[collection] = State(cached_items, snapshots, server=getattr(conn, "engine", "server") == "server")
            if on_close is not None:
                on_close.append(states[collection].save)
        return states[collection]
