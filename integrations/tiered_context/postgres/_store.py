"""`PostgresColdStore`: the L3 archive in PostgreSQL with pgvector, shared by any number of workers.

Every read is served by the database, so a record one worker has acknowledged is seen by
every other worker's next read; nothing of a tenant is loaded into a worker's memory except
its dense statistics (``d x d`` floats, see `_moments`).

- **Lexical**: the core's BM25 (same terms, k1=1.2, b=0.75), computed by the database over
  an inverted index table (tenant, term, pos); document frequencies, the tenant's size and
  mean length are read in the same snapshot, so BM25 scores and their mean / std over the
  whole tenant are exact.
- **Dense**: inner product of unit vectors (pgvector ``<#>``). Tenants below `exact_below`
  records are scanned exactly (the same hits as `LocalColdStore`); larger ones use a
  partial HNSW index per dimension (pgvector >= 0.8: iterative scans; older: a wider
  ``ef_search``, and an exact scan when the filtered index returns too few).
- **Coherence**: each tenant has a commit log. `add` locks the tenant's row for its
  transaction, so records get log positions in commit order, without gaps; `watermark`
  reads the log length (one indexed row), `since` returns the records after a position.
  `next_seqs` allocates sequence numbers from a counter row: no two workers ever get the
  same one (a crashed worker's allocation is a gap, never a duplicate); the store refuses
  a second original with a seq already stored in the tenant.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from tiered_context.core import ContextItem, SearchResult, SignalStats, SharedTwins, search_text, terms
from tiered_context.errors import ConfigError, DuplicateItemError, StoreError
from tiered_context.postgres import _search
from tiered_context.postgres._moments import MomentsCache
from tiered_context.postgres._records import ItemCache, item_id, tenant_key, to_item, to_record
from tiered_context.postgres._schema import HNSW_MAX_DIM, SCHEMA_VERSION, Vector, adapters_for, hnsw_index_sql, setup_sql

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row

__all__ = ["PostgresColdStore"]

def _is_pool(value: Any) -> bool:
    try:
        from psycopg_pool import ConnectionPool
    except ImportError:  # pragma: no cover - psycopg-pool comes with the extra
        return False
    return isinstance(value, ConnectionPool)


class PostgresColdStore(SharedTwins):
    """A `ColdStore` in PostgreSQL + pgvector that any number of worker processes share.

    Setup::

        from tiered_context import TieredContext
        from tiered_context.postgres import PostgresColdStore
        store = PostgresColdStore("postgresql://app@db/app")   # a pool of its own; creates its tables
        ctx = TieredContext(session_id="thread-42", store=store)

    (`tiered_context.langchain.GraphStoreColdStore` builds one on a LangGraph
    ``PostgresStore``'s own connection.) Use: as any `ColdStore`; a worker keeps up with
    the others with ``watermark(tenant)`` (one cheap read) and ``since(tenant, pos)``, and
    numbers new originals with ``next_seqs(tenant, n)``. Result: every acknowledged record
    is durable in Postgres and visible to every worker at once; tenants are exact byte
    keys under a `space` (default ``"tiered_context"``), so no tenant string, however
    hostile, reads another's records.
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        connection: Any = None,
        lock: Any = None,
        space: str = "tiered_context",
        min_size: int = 1,
        max_size: int = 4,
        exact_below: int = 20_000,
        hnsw: bool = True,
        stats_cache: int = 64,
        item_cache: int = 50_000,
        setup: bool = True,
    ) -> None:
        if (conninfo is None) == (connection is None):
            raise ConfigError("pass either conninfo= (a URI or key=value string) or connection= (a psycopg "
                              "Connection or ConnectionPool), not both and not neither")
        if not isinstance(space, str) or not space:
            raise ConfigError("space must be a non-empty string")
        if exact_below < 0 or stats_cache < 1 or item_cache < 0:
            raise ConfigError("exact_below and item_cache must be >= 0, stats_cache >= 1")
        self.space, self.exact_below, self.hnsw = space, exact_below, hnsw
        self._owned = conninfo is not None
        self._pool: Any = None
        self._conn: Any = None
        if conninfo is not None:
            from psycopg_pool import ConnectionPool

            self._pool = ConnectionPool(conninfo, min_size=min_size, max_size=max_size, open=True,
                                        kwargs={"autocommit": True}, name="tiered_context")
        elif _is_pool(connection):
            self._pool = connection
        elif isinstance(connection, psycopg.Connection):
            if not connection.autocommit:
                raise ConfigError("the connection must be in autocommit mode (psycopg.connect(..., autocommit=True)); "
                                  "the store opens its own transactions")
            self._conn = connection
        else:
            raise ConfigError(f"connection must be a psycopg Connection or ConnectionPool, got {type(connection).__name__}")
        self._lock = lock if lock is not None else threading.RLock()
        self._tenants: dict[bytes, int] = {}
        self._dims: set[int] = set()
        self._moments = MomentsCache(stats_cache)
        self._items = ItemCache(item_cache)
        self._sizes: dict[int, int] = {}  # tenant id -> log length last seen (chooses exact scan vs index)
        self._oid: int | None = None
        self._adapters: tuple[Any, Any] | None = None
        self._iterative: bool | None = None
        if setup:
            self.setup()

    # -- connection ----------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            if self._pool is not None:
                with self._pool.connection() as conn:
                    self._types(conn)
                    yield conn
            elif self._conn is not None:
                with self._lock:
                    self._types(self._conn)
                    yield self._conn
            else:
                raise StoreError("this PostgresColdStore is closed; open a new one (a TieredContext closes the store "
                                 "it was given when it closes: share a store between sessions with flush())")
        except (DuplicateItemError, StoreError, ConfigError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL failed: {exc}; check the server and the connection string "
                             "(no acknowledged record was lost)") from exc

    def _types(self, conn: Any) -> None:
        """Learn the ``vector`` type's oid and pgvector's version once (outside any transaction)."""
        if self._adapters is not None:
            return
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute("SELECT t.oid, e.extversion FROM pg_type t JOIN pg_extension e ON e.extname = 'vector' "
                        "WHERE t.typname = 'vector' AND t.typnamespace = e.extnamespace")
            row = cur.fetchone()
        if row is None:
            return  # before setup() created the extension
        self._iterative = tuple(int(p) for p in str(row[1]).split(".")[:2]) >= (0, 8)
        self._oid, self._adapters = int(row[0]), adapters_for(int(row[0]))

    def _cursor(self, conn: Any) -> Any:
        cur = conn.cursor(binary=True, row_factory=tuple_row)
        if self._adapters is None:
            raise StoreError("pgvector's vector type is not in this database; call store.setup() (or pass setup=True)")
        dumper, loader = self._adapters
        cur.adapters.register_dumper(Vector, dumper)
        cur.adapters.register_loader(self._oid, loader)
        return cur

    def setup(self) -> int:
        """Create the extension, tables and indexes if missing (idempotent, safe to run from
        many workers at once); returns the schema version."""
        with self._connection() as conn, conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            for sql, params in setup_sql():
                cur.execute(sql, params or None)
            version = int(cur.fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"the database holds tiered-context schema {version}, newer than this version's "
                             f"{SCHEMA_VERSION}; upgrade tiered-context")
        return version

    def _tenant(self, conn: Any, key: bytes, *, create: bool) -> int | None:
        tid = self._tenants.get(key)
        if tid is not None:
            return tid
        with conn.cursor(binary=True, row_factory=tuple_row) as cur:
            cur.execute("SELECT id FROM tiered_context_tenants WHERE space = %s AND key = %s", (self.space, key))
            row = cur.fetchone()
            if row is None and create:
                cur.execute("INSERT INTO tiered_context_tenants (space, key) VALUES (%s, %s) "
                            "ON CONFLICT (space, key) DO NOTHING", (self.space, key))
                cur.execute("SELECT id FROM tiered_context_tenants WHERE space = %s AND key = %s", (self.space, key))
                row = cur.fetchone()
        if row is None:
            return None
        self._tenants[key] = int(row[0])
        return self._tenants[key]

    def _ensure_index(self, conn: Any, dim: int) -> None:
        if dim in self._dims:
            return
        if self.hnsw and dim <= HNSW_MAX_DIM:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                for sql, params in hnsw_index_sql(dim):
                    cur.execute(sql, params or None)
        self._dims.add(dim)

    # -- coherence -----------------------------------------------------------------------
    def next_seqs(self, tenant: str, n: int) -> range:
        """Allocate `n` sequence numbers for `tenant`'s originals: never issued twice, by any
        worker (also above every seq already stored). A crash leaves a gap, not a duplicate."""
        if n < 0:
            raise ConfigError("n must be >= 0")
        key = tenant_key(tenant)
        with self._connection() as conn:
            tid = self._tenant(conn, key, create=True)
            with conn.cursor(binary=True, row_factory=tuple_row) as cur:
                cur.execute(
                    "WITH top AS (SELECT coalesce(max(seq) + 1, 0) AS floor FROM tiered_context_items "
                    "             WHERE tenant = %(t)s AND seq >= 0 AND NOT derived) "
                    "INSERT INTO tiered_context_seqs AS s (tenant, next) SELECT %(t)s, top.floor + %(n)s FROM top "
                    "ON CONFLICT (tenant) DO UPDATE SET next = greatest(s.next, (SELECT floor FROM top)) + %(n)s "
                    "RETURNING next", {"t": tid, "n": n})
                end = int(cur.fetchone()[0])
        return range(end - n, end)

    def watermark(self, tenant: str) -> int:
        """The length of `tenant`'s commit log: how many records (originals and derived) it has
        acknowledged. Equal to the value last seen means nothing changed since."""
        key = tenant_key(tenant)
        with self._connection() as conn:
            tid = self._tenant(conn, key, create=False)
            if tid is None:
                return 0
            with conn.cursor(binary=True, row_factory=tuple_row) as cur:
                cur.execute("SELECT log FROM tiered_context_tenants WHERE id = %s", (tid,))
                return int(cur.fetchone()[0])

    def since(self, tenant: str, watermark: int, *, limit: int | None = None) -> list[ContextItem]:
        """The records acknowledged after log position `watermark`, in commit order. The log
        has no gaps: after these, the caller's watermark is ``watermark + len(result)``."""
        key = tenant_key(tenant)
        with self._connection() as conn:
            tid = self._tenant(conn, key, create=False)
            if tid is None:
                return []
            with conn.cursor(binary=True, row_factory=tuple_row) as cur:
                cur.execute("SELECT pos, record FROM tiered_context_items WHERE tenant = %s AND pos > %s ORDER BY pos"
                            + (" LIMIT %s" if limit is not None else ""),
                            (tid, int(watermark)) + ((int(limit),) if limit is not None else ()))
                return [self._items.decode(tid, int(p), r) for p, r in cur.fetchall()]

    # -- writes --------------------------------------------------------------------------
    def add(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        """Archive `items` with their unit vectors in one transaction, acknowledged on return.

        Re-adding an identical item (same id, text and role) is a no-op, so a summary whose id
        is derived from its span is stored once however many workers make it; the same id
        with other content raises `DuplicateItemError`; an original whose seq the tenant
        already holds raises `StoreError` (allocate seqs with `next_seqs`)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(items) != len(vectors):
            raise StoreError(f"{len(items)} items but vectors of shape {vectors.shape}; pass one vector per item")
        if not len(items):
            return
        key, dim = tenant_key(tenant), int(vectors.shape[1])
        with self._connection() as conn:
            tid = self._tenant(conn, key, create=True)
            self._ensure_index(conn, dim)
            for _attempt in range(5):
                fresh = self._fresh(conn, tid, items, vectors)
                if not fresh:
                    return
                try:
                    with conn.pipeline(), conn.transaction():
                        self._write(self._cursor(conn), tid, fresh, dim)
                    return
                except pg_errors.UniqueViolation as exc:
                    if exc.diag.constraint_name == "tiered_context_items_id":
                        continue  # another worker stored one of these ids meanwhile: check them again
                    raise StoreError(f"a record of this batch has a seq that tenant {tenant!r:.80} already holds "
                                     f"({exc.diag.message_detail}); number originals with store.next_seqs(tenant, n) "
                                     "so that workers never share one") from exc
                except pg_errors.NotNullViolation:
                    continue  # another worker fixed the tenant's dimension meanwhile: _fresh reports it
            raise StoreError(f"tenant {tenant!r:.80} kept changing under this add; retry it")

    def _fresh(self, conn: Any, tid: int, items: Sequence[ContextItem], vectors: np.ndarray) -> list[tuple[Any, ...]]:
        """The items of this batch the tenant does not hold yet (checked without a lock; the
        write re-checks through the unique index), with their postings."""
        ids = [item_id(i.id) for i in items]
        with self._cursor(conn) as cur:
            cur.execute("SELECT t.dim, i.id, i.record FROM tiered_context_tenants t LEFT JOIN tiered_context_items i "
                        "ON i.tenant = t.id AND i.id = ANY(%s) WHERE t.id = %s", (list(set(ids)), tid))
            rows = cur.fetchall()
        dim = rows[0][0] if rows else None
        if dim is not None and vectors.shape[1] != dim:
            raise StoreError(f"vectors have dim {vectors.shape[1]} but this tenant holds dim {dim}; use the same embedder")
        known: dict[bytes, ContextItem] = {bytes(r[1]): to_item(r[2]) for r in rows if r[1] is not None}
        fresh = []
        for item, raw_id, vec in zip(items, ids, vectors):
            old = known.get(raw_id)
            if old is not None:
                if old.text == item.text and old.role == item.role:
                    continue  # the same item again: idempotent
                raise DuplicateItemError(f"item id {item.id!r:.80} is already stored with different content; "
                                         "give the new item its own id (or omit id= to derive one from content)")
            known[raw_id] = item
            counts = Counter(terms(search_text(item)))
            fresh.append((item, raw_id, vec, counts, sum(counts.values())))
        return fresh

    def _write(self, cur: Any, tid: int, fresh: list[tuple[Any, ...]], dim: int) -> None:
        """One transaction, sent in pipeline mode: the tenant's row is updated (and so locked
        until the commit) first, so log positions follow commit order without gaps."""
        k = len(fresh)
        originals = sum(int(not item.is_derived and item.seq >= 0) for item, *_ in fresh)
        cur.execute("UPDATE tiered_context_tenants SET log = log + %s, originals = originals + %s, "
                    "total_len = total_len + %s, dim = coalesce(dim, %s) WHERE id = %s",
                    (k, originals, sum(f[4] for f in fresh), dim, tid))
        cur.executemany(  # a vector of another dimension than the tenant's is NULL: refused by NOT NULL
            "INSERT INTO tiered_context_items (tenant, pos, id, seq, derived, len, dim, record, vec) "
            "SELECT t.id, t.log - %s + %s, %s, %s, %s, %s, %s, %s, CASE WHEN t.dim = %s THEN %s END "
            "FROM tiered_context_tenants t WHERE t.id = %s",
            [(k, n + 1, raw_id, item.seq, item.is_derived, length, dim, to_record(item), dim, Vector(vec), tid)
             for n, (item, raw_id, vec, _counts, length) in enumerate(fresh)])
        terms_, offsets, tfs, lengths = [], [], [], []
        for n, (_item_, _raw, _vec, counts, length) in enumerate(fresh):
            for term, tf in sorted(counts.items()):
                terms_.append(term)
                offsets.append(n + 1)
                tfs.append(tf)
                lengths.append(length)
        if terms_:
            cur.execute("INSERT INTO tiered_context_postings (tenant, term, pos, tf, len) "
                        "SELECT t.id, u.term, t.log - %s + u.i, u.tf, u.len FROM tiered_context_tenants t, "
                        "unnest(%s::text[], %s::int8[], %s::int4[], %s::int4[]) AS u(term, i, tf, len) WHERE t.id = %s",
                        (k, terms_, offsets, tfs, lengths, tid))

    # -- reads ---------------------------------------------------------------------------
    def _select(self, tenant: str, sql: str, params: tuple[Any, ...]) -> tuple[int | None, list[tuple[Any, ...]]]:
        """The tenant's id and the rows of `sql`, whose first parameter is that id."""
        key = tenant_key(tenant)
        with self._connection() as conn:
            tid = self._tenant(conn, key, create=False)
            if tid is None:
                return None, []
            with self._cursor(conn) as cur:
                cur.execute(sql, (tid, *params))
                return tid, cur.fetchall()

    def get(self, tenant: str, ids: Iterable[str]) -> list[ContextItem]:
        """The stored items of `ids` (in that order; unknown ids are skipped)."""
        wanted = [item_id(i) for i in ids]
        if not wanted:
            return []
        tid, rows = self._select(tenant, "SELECT id, pos, record FROM tiered_context_items WHERE tenant = %s "
                                 "AND id = ANY(%s)", (list(set(wanted)),))
        found = {bytes(r[0]): self._items.decode(tid, int(r[1]), r[2]) for r in rows}
        return [found[i] for i in wanted if i in found]

    def get_by_seq(self, tenant: str, seqs: Iterable[int]) -> list[ContextItem]:
        """The originals with these seqs (in that order; missing seqs are skipped)."""
        wanted = [int(s) for s in seqs]
        if not wanted:
            return []
        tid, rows = self._select(tenant, "SELECT seq, pos, record FROM tiered_context_items WHERE tenant = %s "
                                 "AND seq = ANY(%s) AND seq >= 0 AND NOT derived", (list(set(wanted)),))
        found = {int(r[0]): self._items.decode(tid, int(r[1]), r[2]) for r in rows}
        return [found[s] for s in wanted if s in found]

    def items(self, tenant: str) -> list[ContextItem]:
        """Every record of `tenant`, in commit order."""
        tid, rows = self._select(tenant, "SELECT pos, record FROM tiered_context_items WHERE tenant = %s ORDER BY pos", ())
        return [self._items.decode(tid, int(p), r) for p, r in rows]

    def count(self, tenant: str, *, originals_only: bool = True) -> int:
        """How many originals (or, with ``originals_only=False``, records) `tenant` holds."""
        column = "originals" if originals_only else "log"
        _, rows = self._select(tenant, f"SELECT {column} FROM tiered_context_tenants WHERE id = %s", ())
        return int(rows[0][0]) if rows else 0

    def search(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult:
        """Union of the top `limit` by BM25 and the top `limit` by cosine, both parts of each,
        and the statistics of each signal over the whole tenant: one database snapshot."""
        key = tenant_key(tenant)
        with self._connection() as conn:
            tid = self._tenant(conn, key, create=False)
            if tid is None:
                return SearchResult([], SignalStats())
            return _search.search(self, conn, tid, query, vector, limit)

    def score(self, tenant: str, query: str, vector: np.ndarray, ids: Iterable[str]) -> dict[str, tuple[float, float]]:
        """(bm25, cosine) for each of `ids` stored under `tenant`."""
        wanted = list({item_id(i) for i in ids})
        if not wanted:
            return {}
        key = tenant_key(tenant)
        with self._connection() as conn:
            tid = self._tenant(conn, key, create=False)
            if tid is None:
                return {}
            return _search.score(self, conn, tid, query, vector, wanted)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the pool this store opened (a connection or pool passed in stays open)."""
        if self._owned and self._pool is not None:
            self._pool.close()
            self._pool = None

    def __repr__(self) -> str:
        where = "own pool" if self._owned else ("shared pool" if self._pool is not None else "shared connection")
        return f"PostgresColdStore({where}, space={self.space!r}, tenants_seen={len(self._tenants)})"
