"""Hybrid search of a `QdrantColdStore`: candidates, their raw BM25 and cosine parts, and
the collection-wide statistics the core z-normalises them with (`_stats.TenantStats`).

Every score is computed inside Qdrant; only ids and scores move. The assembler scores its
candidates twice (search, then `score`): the parts of the last query are memoised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from tiered_context.core import ContextItem, Hit, SearchResult, SignalStats, normalize, query_terms
from tiered_context.errors import StoreError
from tiered_context.qdrant._engine import FusionMode, Query
from tiered_context.qdrant._payload import from_payload
from tiered_context.qdrant._tenancy import scope

__all__ = ["memo_key", "parts", "scores", "search"]


def search(store: Any, tenant: str, query: str, vector: np.ndarray, *, limit: int,
           tiers: Iterable[str] | None = None, roles: Iterable[str] | None = None,
           since: float | None = None, until: float | None = None) -> SearchResult:
    """`QdrantColdStore.search` (see there)."""
    where = scope(tenant, tiers=tiers, roles=roles, since=since, until=until)
    if store._coll is None or limit <= 0:
        return SearchResult([], SignalStats())
    q = normalize(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
    if q.shape[0] != store._coll.dim:
        raise StoreError(f"query vector has dim {q.shape[0]} but the collection holds {store._coll.dim}-d vectors")
    with store._lock:
        stats = store._tenant_stats(tenant)
        if stats.n == 0:
            return SearchResult([], SignalStats())
        idf = stats.idf(query_terms(query))
        matches = stats.query_matches(idf)
    sparse = (list(idf), list(idf.values())) if idf else None
    queries: list[Query] = []
    if store.fusion == FusionMode.UNION or sparse is None:
        queries.append(Query(where, limit, dense=q))
        if sparse is not None:
            queries.append(Query(where, limit, sparse=sparse))
    else:
        queries.append(Query(where, limit, dense=q, sparse=sparse, fusion=store.fusion))
    exact = sparse is not None and 0 < matches <= store.exact_stats_limit
    if exact:  # every matching document's score: exact BM25 mean and std
        queries.append(Query(scope(tenant), matches, sparse=sparse, with_payload=False, with_ids=False))
    found = store._coll.query(queries)
    matched = np.array([r.score for r in found.pop()], dtype=np.float64) if exact else None
    items: dict[str, ContextItem] = {}
    for batch in found:
        for r in batch:
            if r.id not in items:
                items[r.id] = from_payload(r.payload)
    store._cache.remember(tenant, list(items.values()))
    store._cache.settle(tenant, [i.id for i in items.values()])  # no hit before its write is durable
    # UNION: each hit already has the part of the search that found it; fetch the other
    cos = {items[r.id].id: r.score for r in found[0]} if len(found) == 2 or sparse is None else {}
    bm = {items[r.id].id: r.score for r in found[1]} if len(found) == 2 else {}
    ids = [i.id for i in items.values()]
    more_cos, more_bm = scores(store, tenant, q, sparse, [i for i in ids if i not in cos],
                               [i for i in ids if i not in bm] if sparse is not None else [])
    cos.update(more_cos)
    bm.update(more_bm)
    both = {i: (float(bm.get(i, 0.0)), float(cos.get(i, 0.0))) for i in ids}
    store._state.memo_for(memo_key(store, tenant, q, sparse)).update(both)  # the assembler's score() call reuses them
    hits = [Hit(i, *both[i.id]) for i in items.values()]
    with store._lock:
        signal = stats.signal_stats(q, idf, matched)
    return SearchResult(sorted(hits, key=lambda h: (h.item.seq, h.item.id)), signal)


def memo_key(store: Any, tenant: str, q: np.ndarray, sparse: tuple[list[int], list[float]] | None) -> tuple:
    stats = store._stats.get(tenant)  # a write changes n, a delete the object: a new key
    return (tenant, q.tobytes(), None if sparse is None else tuple(sparse[1]), id(stats), stats and stats.n)


def parts(store: Any, tenant: str, q: np.ndarray, sparse: tuple[list[int], list[float]] | None,
          ids: list[str]) -> dict[str, tuple[float, float]]:
    """(bm25, cosine) of `ids`, computed inside Qdrant (only ids and scores move)."""
    unique = list(dict.fromkeys(ids))
    if not unique:
        return {}
    memo = store._state.memo_for(memo_key(store, tenant, q, sparse))
    todo = [i for i in unique if i not in memo]
    if todo:
        cos, bm = scores(store, tenant, q, sparse, todo, todo if sparse is not None else [])
        memo.update((i, (float(bm.get(i, 0.0)), float(cos[i]))) for i in todo if i in cos)
    return {i: memo[i] for i in unique if i in memo}


def scores(store: Any, tenant: str, q: np.ndarray, sparse: tuple[list[int], list[float]] | None,
           cos_ids: list[str], bm_ids: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Cosine of `cos_ids` (an exact dense search restricted to them; every one that
    exists comes back) and BM25 of `bm_ids` (a sparse search restricted to them; the
    ones without a query term are absent = 0), in one request, by item id."""
    queries, backs = [], []
    for ids, kind in ((cos_ids, "dense"), (bm_ids, "sparse")):
        if not ids:
            continue
        where = scope(tenant, ids=ids)
        assert where.point_ids is not None
        backs.append((kind, dict(zip(where.point_ids, ids))))
        if kind == "dense":
            queries.append(Query(where, len(ids), dense=q, with_payload=False, exact=True))
        else:
            queries.append(Query(where, len(ids), sparse=sparse, with_payload=False))
    out: dict[str, dict[str, float]] = {"dense": {}, "sparse": {}}
    if queries:
        for (kind, back), records in zip(backs, store._coll.query(queries)):
            out[kind] = {back[r.id]: r.score for r in records if r.id in back}
    return out["dense"], out["sparse"]
