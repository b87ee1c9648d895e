"""qdrant-client engines: local mode on a path (``Engine.LOCAL``) and a server or cluster
by URL (``Engine.SERVER``). One code path: only the `QdrantClient(...)` arguments differ.

Local mode keeps every point in memory and searches exactly in Python (one SQLite commit
per point on disk); it is the reference the edge engine is measured against. Against a
server, collection metadata carries the schema version, and the tenant field gets a
keyword index with ``is_tenant=True``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from tiered_context.errors import missing_extra

    raise missing_extra("qdrant-client", "qdrant") from exc

from tiered_context.errors import StoreError
from tiered_context.qdrant._engine import DENSE, SPARSE, CollectionSpec, FusionMode, PointData, Query, Record, record_from_point as _record
from tiered_context.qdrant._tenancy import TENANT_FIELD, Scope, require

__all__ = ["ClientConnection"]


class ClientConnection:
    """A `QdrantClient` (local path or server URL) shared by the collections on it."""

    def __init__(self, *, path: Path | None = None, url: str | None = None, api_key: str | None = None,
                 timeout: float = 10.0) -> None:
        self.engine = "server" if url else "local"
        self.where = url if url else str(path)
        self._lock = threading.RLock()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if url:
                    self.client = QdrantClient(url=url, api_key=api_key, timeout=int(max(1, timeout)),
                                               check_compatibility=False)
                else:
                    assert path is not None
                    path.mkdir(parents=True, exist_ok=True)
                    self.client = QdrantClient(path=str(path), force_disable_check_same_thread=True)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._error("open", exc) from exc
        self._open: dict[str, ClientCollection] = {}

    def _error(self, what: str, exc: BaseException) -> StoreError:
        if self.engine == "server":
            return StoreError(
                f"cannot {what} on the Qdrant server at {self.where} ({type(exc).__name__}: {exc}). Check that the "
                "server is running and reachable from here, the URL's scheme/host/port (REST 6333, gRPC 6334), "
                "and api_key= for a secured cluster"
            )
        text = str(exc)
        if "already accessed" in text:
            return StoreError(f"{self.where} is open in another process or client (qdrant-client local mode allows "
                              "one); close it there, share one store object, or use a Qdrant server via url=")
        return StoreError(f"cannot {what} the local Qdrant at {self.where} ({type(exc).__name__}: {exc}); "
                          "pass a writable path= that holds a tiered-context store (or a new one)")

    def call(self, what: str, fn: Any) -> Any:
        with self._lock:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return fn()
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - http / grpc / local errors are all wrapped
                raise self._error(what, exc) from exc

    def stored_meta(self, name: str) -> Any | None:
        if not self.call("read collections", lambda: self.client.collection_exists(name)):
            return None
        info = self.call("read the collection", lambda: self.client.get_collection(name))
        meta = dict(info.config.metadata or {})
        vectors = info.config.params.vectors
        if isinstance(vectors, dict) and DENSE in vectors:
            meta.setdefault("_dense_size", vectors[DENSE].size)
        else:
            meta["_foreign_vectors"] = True
        return meta if "_foreign_vectors" not in meta else {}

    def collection(self, spec: CollectionSpec) -> ClientCollection:
        if spec.name not in self._open:
            self._open[spec.name] = ClientCollection(self, spec)
        return self._open[spec.name]

    def close(self) -> None:
        self._open.clear()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must not raise
            pass


class ClientCollection:
    def __init__(self, conn: ClientConnection, spec: CollectionSpec) -> None:
        self.conn, self.spec, self.dim, self.name = conn, spec, spec.dim, spec.name
        strong = spec.strong and conn.engine == "server"
        self._ordering = {"ordering": qm.WriteOrdering.STRONG} if strong else {}
        self._consistency = {"consistency": qm.ReadConsistencyType.MAJORITY} if strong else {}
        client = conn.client
        if not conn.call("read collections", lambda: client.collection_exists(spec.name)):
            try:
                conn.call("create the collection", lambda: client.create_collection(
                    spec.name,
                    vectors_config={DENSE: qm.VectorParams(size=spec.dim, distance=qm.Distance.DOT)},
                    sparse_vectors_config={SPARSE: qm.SparseVectorParams()} if spec.sparse else None,
                    hnsw_config=qm.HnswConfigDiff(m=0, payload_m=16),
                    metadata=spec.meta(),
                    **({"shard_number": spec.shards} if spec.shards and conn.engine == "server" else {}),
                ))
            except StoreError:  # another worker created it first: use theirs (checked below)
                if not conn.call("read collections", lambda: client.collection_exists(spec.name)):
                    raise
        info = conn.call("read the collection", lambda: client.get_collection(spec.name))
        size = info.config.params.vectors[DENSE].size  # stored_meta() checked the layout (or we made it)
        if size != spec.dim:
            raise StoreError(f"collection {spec.name!r} at {conn.where} holds {size}-d vectors, not {spec.dim}-d")
        schema = conn.call("read the collection", lambda: client.get_collection(spec.name)).payload_schema or {}
        wanted: list[tuple[str, Any]] = [(TENANT_FIELD, qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD,
                                                                               is_tenant=True))]
        wanted += [(f, qm.PayloadSchemaType.KEYWORD) for f in spec.keyword_fields]
        wanted += [(f, qm.IntegerIndexParams(type=qm.IntegerIndexType.INTEGER, lookup=True, range=True))
                   for f in spec.integer_fields]
        wanted += [(f, qm.PayloadSchemaType.FLOAT) for f in spec.float_fields]
        wanted += [(f, qm.PayloadSchemaType.BOOL) for f in spec.bool_fields]
        if conn.engine == "server":  # local mode ignores payload indexes
            for field, schema_type in wanted:
                if field not in schema:
                    conn.call("create a payload index", lambda f=field, s=schema_type: client.create_payload_index(
                        spec.name, f, field_schema=s, wait=True))

    def upsert(self, points: Sequence[PointData], *, insert_only: bool = False) -> None:
        """Write `points` (one request, acknowledged when applied). `insert_only`: a point
        that already exists keeps its content (Qdrant >= 1.17 ``update_mode=insert_only``):
        the first writer of a point id wins, what the commit log's claims rely on."""
        if not points:
            return
        native = [qm.PointStruct(id=p.id, vector=self._vectors(p.dense, p.sparse), payload=p.payload) for p in points]
        mode = {"update_mode": qm.UpdateMode.INSERT_ONLY} if insert_only else {}
        self.conn.call("write", lambda: self.conn.client.upsert(self.name, native, wait=True, **mode, **self._ordering))

    def apply(self, points: Sequence[PointData]) -> int:
        """`upsert`: acknowledged when applied, and durable then (`wait_durable` has nothing to wait for)."""
        self.upsert(points)
        return 0

    def wait_durable(self, ticket: int) -> None:
        """Nothing to wait for: a write is durable when `apply` returns."""

    def set_sparse(self, updates: Sequence[tuple[str, tuple[list[int], list[float]]]]) -> None:
        if not updates:
            return
        native = [qm.PointVectors(id=pid, vector={SPARSE: qm.SparseVector(indices=list(i), values=list(v))})
                  for pid, (i, v) in updates]
        self.conn.call("write", lambda: self.conn.client.update_vectors(self.name, native, wait=True, **self._ordering))

    def delete(self, scope: Scope) -> None:
        selector = qm.FilterSelector(filter=_filter(scope))
        self.conn.call("delete", lambda: self.conn.client.delete(self.name, points_selector=selector, wait=True,
                                                                 **self._ordering))

    def set_payload(self, scope: Scope, payload: dict[str, Any]) -> None:
        selector = qm.FilterSelector(filter=_filter(scope))
        self.conn.call("write", lambda: self.conn.client.set_payload(self.name, payload, points=selector, wait=True,
                                                                     **self._ordering))

    def query(self, queries: Sequence[Query]) -> list[list[Record]]:
        requests = [self._request(q) for q in queries]
        found = self.conn.call("search", lambda: self.conn.client.query_batch_points(self.name, requests))
        return [[_record(p) for p in r.points] if q.with_payload or q.vectors else
                [Record(str(p.id) if q.with_ids else "", {}, score=float(p.score)) for p in r.points] for q, r in zip(queries, found)]

    def scroll(self, scope: Scope, *, limit: int, offset: Any = None, with_vectors: bool | list[str] = False,
               with_payload: bool | list[str] = True, order_by: tuple[str, str] | None = None) -> tuple[list[Record], Any]:
        """A page of `scope`; `order_by` = (integer field, "asc" | "desc"): the page in that
        order (the field needs a range index; no `offset` then)."""
        order = {"order_by": qm.OrderBy(key=order_by[0], direction=qm.Direction(order_by[1]))} if order_by else {}
        points, nxt = self.conn.call("scroll", lambda: self.conn.client.scroll(
            self.name, scroll_filter=_filter(scope), limit=limit, offset=offset,
            with_payload=with_payload, with_vectors=with_vectors, **order, **self._consistency))
        return [_record(p) for p in points], nxt

    def retrieve(self, point_ids: Sequence[str]) -> list[Record]:
        """The points among `point_ids`, with payloads (a lookup by id)."""
        points = self.conn.call("read", lambda: self.conn.client.retrieve(
            self.name, list(point_ids), with_payload=True, with_vectors=False, **self._consistency))
        return [_record(p) for p in points]

    def count(self, scope: Scope) -> int:
        res = self.conn.call("count", lambda: self.conn.client.count(self.name, count_filter=_filter(scope), exact=True))
        return int(res.count)

    def close(self) -> None:
        pass

    def _request(self, q: Query) -> Any:
        flt = _filter(q.scope)
        params = qm.SearchParams(exact=True) if q.exact else None
        wv: Any = [v for v in q.vectors if v == DENSE or self.spec.sparse] or False
        if q.fusion != FusionMode.UNION and q.dense is not None and q.sparse is not None:
            fusion = qm.FusionQuery(fusion=qm.Fusion.RRF if q.fusion == FusionMode.RRF else qm.Fusion.DBSF)
            prefetch = [qm.Prefetch(query=_dense(q.dense), using=DENSE, limit=q.limit, filter=flt, params=params),
                        qm.Prefetch(query=_sparse(q.sparse), using=SPARSE, limit=q.limit, filter=flt)]
            return qm.QueryRequest(prefetch=prefetch, query=fusion, filter=flt, limit=q.limit,
                                   with_vector=wv, with_payload=q.with_payload)
        if q.dense is not None:
            query, using = _dense(q.dense), DENSE
        else:
            assert q.sparse is not None
            query, using = _sparse(q.sparse), SPARSE
        return qm.QueryRequest(query=query, using=using, filter=flt, limit=q.limit, params=params,
                               with_vector=wv, with_payload=q.with_payload)

    def _vectors(self, dense: np.ndarray, sparse: tuple[list[int], list[float]] | None) -> dict[str, Any]:
        out: dict[str, Any] = {DENSE: np.asarray(dense, dtype=np.float32).tolist()}
        if self.spec.sparse:
            idx, val = sparse or ([], [])
            out[SPARSE] = qm.SparseVector(indices=list(idx), values=list(val))
        return out


def _dense(v: np.ndarray) -> list[float]:
    return np.asarray(v, dtype=np.float32).tolist()


def _sparse(s: tuple[list[int], list[float]]) -> Any:
    return qm.SparseVector(indices=list(s[0]), values=list(s[1]))


def _filter(scope: Scope) -> Any:
    scope = require(scope)
    must: list[Any] = [qm.FieldCondition(key=TENANT_FIELD, match=qm.MatchValue(value=scope.tenant))]
    if scope.point_ids is not None:
        must.append(qm.HasIdCondition(has_id=list(scope.point_ids)))
    if scope.seqs is not None:
        must.append(qm.FieldCondition(key="seq", match=qm.MatchAny(any=list(scope.seqs))))
    if scope.tiers is not None:
        must.append(qm.FieldCondition(key="tier", match=qm.MatchAny(any=list(scope.tiers))))
    if scope.roles is not None:
        must.append(qm.FieldCondition(key="role", match=qm.MatchAny(any=list(scope.roles))))
    if scope.since is not None or scope.until is not None:
        must.append(qm.FieldCondition(key="timestamp", range=qm.Range(gte=scope.since, lte=scope.until)))
    if scope.originals_only:
        must.append(qm.FieldCondition(key="form", match=qm.MatchValue(value="original")))
    for key, value in scope.equals:
        must.append(qm.FieldCondition(key=key, match=qm.MatchValue(value=value)))
    for key, bound in scope.above:
        must.append(qm.FieldCondition(key=key, range=qm.Range(gt=bound)))
    for key, bound in scope.below:
        must.append(qm.FieldCondition(key=key, range=qm.Range(lte=bound)))
    return qm.Filter(must=must)

