"""`GraphStoreColdStore`: the tiered archive (L3) kept in a LangGraph `BaseStore`.

```python
from langgraph.store.postgres import PostgresStore    # or InMemoryStore, SqliteStore, ...
from tiered_context.langchain._middleware import TieredContextMiddleware

with PostgresStore.from_conn_string(uri) as store:
    store.setup()
    agent = create_agent(model, tools, middleware=[TieredContextMiddleware(max_tokens=2000)],
                         store=store, checkpointer=saver)   # the middleware archives into `store`
```

**On a LangGraph ``PostgresStore`` (or ``AsyncPostgresStore``)** the archive is a
`tiered_context.postgres.PostgresColdStore` in the same database: its own tables next to
the store's (created on first use), on the store's own connection or pool (an async store:
a small pool of its own to the same database). Search runs in Postgres (the core's BM25 over
an inverted-index table, pgvector for cosine, the statistics of both over the whole tenant),
nothing of a tenant is loaded into a worker, and any number of worker processes share one
memory coherently: a record one worker acknowledged is seen by every other at once,
`next_seqs` never issues a sequence number twice, `watermark` / `since` tell a worker what
it has not seen. The space of the tables is `prefix`; tenants are exact keys.

**On any other `BaseStore`** every record lives under the namespace ``(prefix,
<tenant>)``: the thread's original messages, their compressed (L2) forms, and under
``(prefix, <tenant>#summaries)`` the progressive summaries. Each value is ``{"item":
{...}, "vec": "<base64 float32>"}`` (written with ``index=False``). Reads are served by an
in-process `LocalColdStore` filled from the store the first time a tenant is touched;
writes go to the `BaseStore` first, then to the index, so an acknowledged item is durable
as far as the store is. That index does not see writes made by other processes, so these
stores serve one process at a time (resuming in a new process is fine).

Either way the graph state (checkpointer) keeps the messages; the store keeps what was
*derived* from them, so a thread resumed by another process with the same store replays
its summaries instead of re-summarizing (and re-asking an LLM summarizer); see
`TieredContextMiddleware` for the compaction-mode caveat.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tiered_context.errors import DuplicateItemError, StoreError, missing_extra

try:
    from langgraph.store.base import BaseStore, PutOp
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langgraph", "langchain") from exc

from tiered_context.core import ContextItem, LocalColdStore, SearchResult, decode_record, encode_record

__all__ = ["GraphStoreColdStore", "DEFAULT_PREFIX"]

DEFAULT_PREFIX = "tiered_context"
#: Records read per `BaseStore.search` page when a tenant is first loaded.
PAGE = 500


def _label(tenant: str) -> str:
    """A namespace label for `tenant` (LangGraph forbids "." in labels)."""
    return tenant.replace("%", "%25").replace(".", "%2E")


def _postgres_backend(store: BaseStore, prefix: str) -> Any:
    """A `PostgresColdStore` on a LangGraph Postgres store's database, or None for any other store."""
    kind = type(store).__name__
    module = type(store).__module__
    if not module.startswith("langgraph.store.postgres") or kind not in {"PostgresStore", "AsyncPostgresStore"}:
        return None
    try:
        from tiered_context.postgres import PostgresColdStore
    except ImportError as exc:
        raise missing_extra("psycopg", "postgres") from exc
    if kind == "PostgresStore":
        if getattr(store, "pipe", None) is not None:
            raise StoreError("this PostgresStore runs in pipeline mode, which cannot share its connection; pass "
                             "store=PostgresColdStore(conninfo) to TieredContextMiddleware instead")
        return PostgresColdStore(connection=store.conn, lock=store.lock, space=prefix)
    return PostgresColdStore(_conninfo(store.conn), space=prefix)  # async: a small sync pool of our own


def _conninfo(conn: Any) -> str:
    """The connection string of an async psycopg connection or pool (password included)."""
    from psycopg.conninfo import make_conninfo

    if hasattr(conn, "conninfo"):  # AsyncConnectionPool
        return make_conninfo(conn.conninfo, **{k: v for k, v in (conn.kwargs or {}).items()
                                               if k in {"password", "user", "dbname", "host", "port"}})
    info = conn.info
    return make_conninfo(info.dsn, **({"password": info.password} if info.password else {}))


class GraphStoreColdStore:
    """A `ColdStore` whose records live in a LangGraph `BaseStore` (any backend).

    Setup: ``GraphStoreColdStore(store)``; `TieredContextMiddleware` builds one itself
    from ``runtime.store`` when the agent has a store and the middleware got neither
    ``path=`` nor ``store=``. Use: as any `ColdStore` (``TieredContext(store=...)``), plus
    ``next_seqs(tenant, n)``, ``watermark(tenant)`` and ``since(tenant, pos)`` for workers
    that share it. Result: one tenant's reads never see another's records, everything
    written survives as long as the store does, and on a ``PostgresStore`` every worker
    process reads the same memory, served by the database.
    """

    def __init__(self, store: BaseStore, *, prefix: str = DEFAULT_PREFIX) -> None:
        if not isinstance(store, BaseStore):
            raise StoreError(f"GraphStoreColdStore needs a langgraph BaseStore, got {type(store).__name__}")
        if not prefix or "." in prefix or prefix == "langgraph":
            raise StoreError(f"prefix must be a non-empty namespace label without '.', other than 'langgraph' (got {prefix!r})")
        self.store, self.prefix = store, prefix
        #: the `PostgresColdStore` serving a LangGraph Postgres store, else None (in-process index)
        self.postgres = _postgres_backend(store, prefix)
        self._index = LocalColdStore()
        self._loaded: set[str] = set()
        self._next: dict[str, int] = {}
        self._lock = threading.RLock()

    def namespace(self, tenant: str) -> tuple[str, str]:
        """The `BaseStore` namespace that holds `tenant`'s records (non-Postgres stores)."""
        if not tenant:
            raise StoreError("tenant must be a non-empty string (the session / user scope)")
        return (self.prefix, _label(tenant))

    # -- coherence -----------------------------------------------------------------------
    def next_seqs(self, tenant: str, n: int) -> range:
        """`n` fresh sequence numbers for `tenant` (never issued twice; across processes on Postgres)."""
        if self.postgres is not None:
            return self.postgres.next_seqs(tenant, n)
        self._load(tenant)
        with self._lock:
            start = max(self._next.get(tenant, 0), max((i.seq + 1 for i in self._index.items(tenant)
                                                        if not i.is_derived and i.seq >= 0), default=0))
            self._next[tenant] = start + n
        return range(start, start + n)

    def watermark(self, tenant: str) -> int:
        """How many records `tenant`'s log holds (unchanged means nothing new)."""
        if self.postgres is not None:
            return self.postgres.watermark(tenant)
        self._load(tenant)
        return self._index.count(tenant, originals_only=False)

    def since(self, tenant: str, watermark: int, *, limit: int | None = None) -> list[ContextItem]:
        """The records after log position `watermark`, in the order they were acknowledged."""
        if self.postgres is not None:
            return self.postgres.since(tenant, watermark, limit=limit)
        self._load(tenant)
        tail = self._index.items(tenant)[max(int(watermark), 0):]
        return tail if limit is None else tail[:limit]

    # -- writes ------------------------------------------------------------------
    def add(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        """Archive `items` with their unit vectors: into the `BaseStore`, then the index.
        Same contract as `LocalColdStore.add` (idempotent; a conflicting id raises)."""
        if self.postgres is not None:
            return self.postgres.add(tenant, items, vectors)
        fresh = self._fresh(tenant, items, vectors)
        if fresh:
            ns = self.namespace(tenant)
            self.store.batch([PutOp(ns, i.id, encode_record(i, v), index=False) for i, v in fresh])
            self._index.add(tenant, [i for i, _ in fresh], np.stack([v for _, v in fresh]))

    async def aadd(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        if self.postgres is not None:
            return await self.postgres.aadd(tenant, items, vectors)
        fresh = self._fresh(tenant, items, vectors)
        if fresh:
            ns = self.namespace(tenant)
            await self.store.abatch([PutOp(ns, i.id, encode_record(i, v), index=False) for i, v in fresh])
            self._index.add(tenant, [i for i, _ in fresh], np.stack([v for _, v in fresh]))

    def _fresh(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> list[tuple[ContextItem, np.ndarray]]:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(items) != len(vectors):
            raise StoreError(f"{len(items)} items but vectors of shape {vectors.shape}; pass one vector per item")
        self._load(tenant)
        dim = self._index._dim  # noqa: SLF001 - the index is ours
        if dim is not None and vectors.shape[1] != dim:
            raise StoreError(f"vectors have dim {vectors.shape[1]} but this store holds dim {dim}; use the same embedder")
        out: dict[str, tuple[ContextItem, np.ndarray]] = {}
        for item, vec in zip(items, vectors):
            old = (self._index.get(tenant, [item.id]) or [None])[0] or (out[item.id][0] if item.id in out else None)
            if old is not None:
                if old.text == item.text and old.role == item.role:
                    continue
                raise DuplicateItemError(f"item id {item.id!r} is already stored with different content; "
                                         "give the new item its own id (or omit id= to derive one from content)")
            out[item.id] = (item, vec)
        return list(out.values())

    # -- reads -------------------------------------------------------------------
    def get(self, tenant: str, ids: Iterable[str]) -> list[ContextItem]:
        if self.postgres is not None:
            return self.postgres.get(tenant, ids)
        self._load(tenant)
        return self._index.get(tenant, ids)

    def get_by_seq(self, tenant: str, seqs: Iterable[int]) -> list[ContextItem]:
        if self.postgres is not None:
            return self.postgres.get_by_seq(tenant, seqs)
        self._load(tenant)
        return self._index.get_by_seq(tenant, seqs)

    def items(self, tenant: str) -> list[ContextItem]:
        if self.postgres is not None:
            return self.postgres.items(tenant)
        self._load(tenant)
        return self._index.items(tenant)

    def count(self, tenant: str, *, originals_only: bool = True) -> int:
        if self.postgres is not None:
            return self.postgres.count(tenant, originals_only=originals_only)
        self._load(tenant)
        return self._index.count(tenant, originals_only=originals_only)

    def search(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult:
        if self.postgres is not None:
            return self.postgres.search(tenant, query, vector, limit=limit)
        self._load(tenant)
        return self._index.search(tenant, query, vector, limit=limit)

    async def asearch(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult:
        if self.postgres is not None:
            return await self.postgres.asearch(tenant, query, vector, limit=limit)
        return self.search(tenant, query, vector, limit=limit)

    def score(self, tenant: str, query: str, vector: np.ndarray, ids: Iterable[str]) -> dict[str, tuple[float, float]]:
        if self.postgres is not None:
            return self.postgres.score(tenant, query, vector, ids)
        self._load(tenant)
        return self._index.score(tenant, query, vector, ids)

    def close(self) -> None:
        """Release what this object opened (a pool for an async Postgres store); the
        `BaseStore` itself belongs to the graph."""
        if self.postgres is not None:
            self.postgres.close()

    def __repr__(self) -> str:
        if self.postgres is not None:
            return f"GraphStoreColdStore({type(self.store).__name__}, prefix={self.prefix!r}, {self.postgres!r})"
        return f"GraphStoreColdStore({type(self.store).__name__}, prefix={self.prefix!r}, tenants={len(self._loaded)})"

    # -- internals ---------------------------------------------------------------
    def _load(self, tenant: str) -> None:
        """Fill the index with `tenant`'s records the first time it is touched."""
        if tenant in self._loaded:
            return
        with self._lock:
            if tenant not in self._loaded:
                self._fill(tenant)

    def _fill(self, tenant: str) -> None:
        ns = self.namespace(tenant)
        records: list[Any] = []
        offset = 0
        while True:
            page = self.store.search(ns, limit=PAGE, offset=offset)
            records.extend(r for r in page if tuple(r.namespace) == ns)
            offset += len(page)
            if len(page) < PAGE:
                break
        if records:
            items, vecs = map(list, zip(*(decode_record(r.value) for r in records)))
            order = sorted(range(len(items)), key=lambda k: (items[k].seq, records[k].created_at))
            self._index.add(tenant, [items[k] for k in order], np.stack([vecs[k] for k in order]))
        self._loaded.add(tenant)  # only once the index holds every record
