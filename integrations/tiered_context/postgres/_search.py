"""Hybrid search and scoring served by PostgreSQL: the core's BM25 over the postings table,
pgvector's inner product, and the statistics of both over the whole tenant.

Every statement of one `search` runs in one ``REPEATABLE READ`` snapshot, sent in pipeline
mode (two round trips: the candidates, then their records and missing scores), so the hits,
their scores and the statistics describe the same state of the tenant; every worker reading
that state computes the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tiered_context.core import Hit, SearchResult, SignalStats, query_terms
from tiered_context.errors import StoreError
from tiered_context.postgres._moments import Moments
from tiered_context.postgres._schema import HNSW_MAX_DIM, Vector

if TYPE_CHECKING:
    from tiered_context.postgres._store import PostgresColdStore

__all__ = ["K1", "B", "search", "score"]

K1, B = 1.2, 0.75
_BM25 = """
WITH t AS (
    SELECT log::float8 AS n, greatest(total_len::float8 / greatest(log, 1), 1e-9) AS avgdl
    FROM tiered_context_tenants WHERE id = %(t)s
), df AS (
    SELECT term, count(*)::float8 AS df FROM tiered_context_postings
    WHERE tenant = %(t)s AND term = ANY(%(terms)s) GROUP BY term
), scored AS (
    SELECT p.pos, sum(ln(1 + (t.n - df.df + 0.5) / (df.df + 0.5))
                      * p.tf * {k1p1} / (p.tf + {k1} * (1 - {b} + {b} * p.len / t.avgdl))) AS bm25
    FROM tiered_context_postings p JOIN df ON p.term = df.term CROSS JOIN t
    WHERE p.tenant = %(t)s AND p.term = ANY(%(terms)s) {only}
    GROUP BY p.pos
)
"""


def _bm25_sql(tail: str, only: str = "") -> str:
    return _BM25.format(k1p1=K1 + 1, k1=K1, b=B, only=only) + tail


#: top `k` by BM25 with the sum and the sum of squares of every matching document's score
LEX_TOP = _bm25_sql("SELECT pos, bm25, (SELECT sum(bm25) FROM scored), (SELECT sum(bm25 * bm25) FROM scored) "
                    "FROM scored ORDER BY bm25 DESC, pos LIMIT %(k)s")
LEX_AGG = _bm25_sql("SELECT coalesce(sum(bm25), 0), coalesce(sum(bm25 * bm25), 0) FROM scored")
#: BM25 of the given positions (df and avgdl still over the whole tenant)
LEX_AT = _bm25_sql("SELECT pos, bm25 FROM scored", only="AND p.pos = ANY(%(pos)s)")
#: BM25 of the given item ids
LEX_IDS = _bm25_sql("SELECT pos, bm25 FROM scored", only="AND p.pos IN (SELECT pos FROM tiered_context_items "
                                                         "WHERE tenant = %(t)s AND id = ANY(%(ids)s))")
_HEAD = "SELECT log, dim, total_len FROM tiered_context_tenants WHERE id = %s"
_RR = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def _check_dim(q: np.ndarray, n: int, dim: int | None) -> None:
    if n and q.shape[0] != dim:
        raise StoreError(f"the query vector has dim {q.shape[0]} but this tenant holds dim {dim}; use the same embedder")


_EXACT = "SELECT pos FROM tiered_context_items WHERE tenant = %s ORDER BY vec <#> %s, pos LIMIT %s"


def _dense_top(store: PostgresColdStore, cur: Any, tid: int, q: np.ndarray, dim: int, n: int, k: int) -> bool:
    """Queue the positions of the `k` records nearest to `q`: an exact scan below
    `exact_below` records, else the partial HNSW index of this dimension (True)."""
    if store.hnsw and n >= store.exact_below and 0 < dim <= HNSW_MAX_DIM:
        if store._iterative:  # noqa: SLF001 - pgvector >= 0.8 keeps scanning until the filter is satisfied
            cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cur.execute(f"SET LOCAL hnsw.ef_search = {min(1000, max(40, 4 * k))}")
        cur.execute(f"SELECT pos FROM tiered_context_items WHERE tenant = %s AND dim = {int(dim)} "
                    f"ORDER BY vec::vector({int(dim)}) <#> %s::vector({int(dim)}) LIMIT %s", (tid, Vector(q), k))
        return True
    cur.execute(_EXACT, (tid, Vector(q), k))
    return False


def search(store: PostgresColdStore, conn: Any, tid: int, query: str, vector: np.ndarray, limit: int) -> SearchResult:
    """`ColdStore.search` for tenant id `tid` (see `PostgresColdStore.search`)."""
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    qterms = sorted(query_terms(query))
    known_n = store._sizes.get(tid, 0)  # noqa: SLF001 - the size last seen: only chooses exact scan vs index
    want = int(limit)  # LIMIT past the tenant's size is harmless; the hits are cut to min(limit, n) below
    with conn.pipeline(), conn.transaction():
        head, lex, dense = store._cursor(conn), store._cursor(conn), store._cursor(conn)  # noqa: SLF001
        head.execute(_RR)
        head.execute(_HEAD, (tid,))
        if qterms and want > 0:
            lex.execute(LEX_TOP, {"t": tid, "terms": qterms, "k": want})
        elif qterms:
            lex.execute(LEX_AGG, {"t": tid, "terms": qterms})
        indexed = want > 0 and _dense_top(store, dense, tid, q, int(q.shape[0]), known_n, want)
        n, dim, _total = head.fetchone()
        n, dim = int(n), int(dim or 0)
        store._sizes[tid] = n  # noqa: SLF001
        _check_dim(q, n, dim)
        if n == 0:
            return SearchResult([], SignalStats())
        k = min(int(limit), n)
        s1 = s2 = 0.0
        lex_scores: dict[int, float] = {}
        if qterms:
            rows = lex.fetchall()
            if want > 0:
                lex_scores = {int(r[0]): float(r[1]) for r in rows[:k]}
                if rows:
                    s1, s2 = float(rows[0][2]), float(rows[0][3])
            elif rows:
                s1, s2 = float(rows[0][0]), float(rows[0][1])
        top = set(lex_scores)
        if want > 0:
            nearest = dense.fetchall()
            if indexed and len(nearest) < k:  # the tenant filter left too few of the index's candidates
                dense.execute(_EXACT, (tid, Vector(q), k))
                nearest = dense.fetchall()
            top.update(int(r[0]) for r in nearest[:k])
        moments = store._moments.read_at(store._cursor(conn), tid, n, dim)  # noqa: SLF001
        hits: list[Hit] = []
        if top and k > 0:
            ordered = sorted(top)
            rows_cur, rec_cur, miss_cur = store._cursor(conn), store._cursor(conn), store._cursor(conn)  # noqa: SLF001
            rows_cur.execute("SELECT pos, -(vec <#> %s) FROM tiered_context_items WHERE tenant = %s AND pos = ANY(%s) "
                             "ORDER BY pos", (Vector(q), tid, ordered))
            uncached = store._items.missing(tid, ordered)  # noqa: SLF001
            if uncached:
                rec_cur.execute("SELECT pos, record FROM tiered_context_items WHERE tenant = %s AND pos = ANY(%s)",
                                (tid, uncached))
            missing = [p for p in ordered if p not in lex_scores]
            if qterms and missing:
                miss_cur.execute(LEX_AT, {"t": tid, "terms": qterms, "pos": missing})
            dense_rows = rows_cur.fetchall()
            records = {int(p): r for p, r in rec_cur.fetchall()} if uncached else {}
            if qterms and missing:
                lex_scores.update((int(p), float(s)) for p, s in miss_cur.fetchall())
            hits = [Hit(store._items.decode(tid, int(p), records.get(int(p))), lex_scores.get(int(p), 0.0), float(d))  # noqa: SLF001
                    for p, d in dense_rows]
    store._moments.save(conn, tid, moments)  # noqa: SLF001
    return SearchResult(hits, _stats(s1, s2, n, moments, q))


def _stats(s1: float, s2: float, n: int, moments: Moments, q: np.ndarray) -> SignalStats:
    mean = s1 / n
    std = float(np.sqrt(max(s2 / n - mean * mean, 0.0)))
    dmean, dstd = moments.stats(q, n)
    return SignalStats(mean, std if std > 1e-9 else 1.0, dmean, dstd)


def score(store: PostgresColdStore, conn: Any, tid: int, query: str, vector: np.ndarray,
          ids: list[bytes]) -> dict[str, tuple[float, float]]:
    """`ColdStore.score` for tenant id `tid`: (bm25, cosine) of each stored id, one snapshot."""
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    qterms = sorted(query_terms(query))
    with conn.pipeline(), conn.transaction():
        head, rows_cur, lex = store._cursor(conn), store._cursor(conn), store._cursor(conn)  # noqa: SLF001
        head.execute(_RR)
        head.execute(_HEAD, (tid,))
        rows_cur.execute("SELECT pos, id, -(vec <#> %s) FROM tiered_context_items WHERE tenant = %s AND id = ANY(%s)",
                         (Vector(q), tid, ids))
        if qterms:
            lex.execute(LEX_IDS, {"t": tid, "terms": qterms, "ids": ids})
        n, dim, _ = head.fetchone()
        _check_dim(q, int(n), dim)
        rows = rows_cur.fetchall()
        found = {int(p): float(s) for p, s in lex.fetchall()} if qterms else {}
    return {bytes(raw).decode("utf-8", "surrogatepass"): (found.get(int(pos), 0.0), float(d)) for pos, raw, d in rows}
