"""The embedded default: qdrant-edge-py (Qdrant's Rust engine in the process).

Layout of a store directory::

    PATH/.lock                  flock: one process owns the directory at a time
    PATH/<collection>/meta.json schema version, kind, vector size (written first)
    PATH/<collection>/shard/    the EdgeShard (segments + write-ahead log)

Durability: every update goes to the shard's write-ahead log, and the log's files are
fsynced before `upsert` returns (~0.5 ms), so an acknowledged write survives a killed
process and a power cut; segments are flushed by `close()`. Concurrent writers share
their fsyncs (`apply`, then `wait_durable`: a group commit outside the lock).

A full disk: the engine writes through memory-mapped files, and a write into a mapped
page the filesystem cannot back kills the process with SIGBUS, not an error. So every
write first checks the free space (`free_bytes`) against `MIN_FREE_BYTES` plus what the
write itself takes, and raises `StoreError` below it, before anything is written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import qdrant_edge as qe
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from tiered_context.errors import missing_extra

    raise missing_extra("qdrant-edge-py", "qdrant") from exc

from tiered_context.core import free_bytes, write_atomic
from tiered_context.errors import StoreError
from tiered_context.qdrant import _indexer
from tiered_context.qdrant._engine import (DENSE, SPARSE, CollectionSpec, FusionMode, PointData, Query, Record, record_from_point as _record,
                                           check_meta, dumps_meta)
from tiered_context.qdrant._tenancy import TENANT_FIELD, Scope, require
from tiered_context.qdrant._wal import LogSync

log = logging.getLogger("tiered_context")

__all__ = ["INDEX_AFTER", "MIN_FREE_BYTES", "EdgeConnection"]

#: Unindexed points that start a background HNSW build (`qdrant._indexer`): below it an
#: exact scan of the unindexed part costs a few ms; None turns automatic builds off.
INDEX_AFTER = 50_000

#: Free space an embedded write must leave on the store's filesystem (it checks for this
#: plus its own size, counted twice: once in the write-ahead log, once in a segment). The
#: engine's files are memory-mapped and grow in 32 MiB regions (log segments, payload
#: and vector pages; sparse, so the disk fills as they are written), and one write may
#: open a fresh region of the log and of a segment at once: two regions of headroom.
MIN_FREE_BYTES = 64 * 2**20


class EdgeConnection:
    """One directory holding one shard per collection; owned by one process (flock)."""

    engine = "edge"

    def __init__(self, path: Path, *, temporary: bool = False) -> None:
        self.path = path
        self.temporary = temporary  # removed at close: nothing derived is worth saving
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(path / ".lock", "a+")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise StoreError(f"cannot open the Qdrant directory {path}: {exc}; pass a writable path=") from exc
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            raise StoreError(
                f"{path} is open in another process (one process owns an embedded Qdrant directory); "
                "close it there, share one store object, or run a Qdrant server and pass url="
            ) from exc
        if not os.access(path, os.W_OK):
            self._lock_file.close()
            raise StoreError(f"the Qdrant directory {path} is not writable; pass a writable path=")
        self._open: dict[str, EdgeCollection] = {}
        self.on_close: list[Callable[[], None]] = []  # run first at close (statistics snapshots)

    def stored_meta(self, name: str) -> Any | None:
        """The stored metadata of collection `name`, or None if it does not exist."""
        folder = self.path / name
        meta = folder / "meta.json"
        if meta.exists():
            try:
                return json.loads(meta.read_text())
            except (OSError, ValueError) as exc:
                raise StoreError(f"collection {name!r} in {self.path} has unreadable metadata ({exc}): "
                                 "it is corrupted or not ours; pass another collection= or path=") from exc
        if (folder / "shard").exists() or (folder.exists() and any(folder.iterdir())):
            return {}  # something is there, but not written by us
        return None

    def collection(self, spec: CollectionSpec) -> EdgeCollection:
        if spec.name not in self._open:
            self._open[spec.name] = EdgeCollection(self.path / spec.name, spec)
        return self._open[spec.name]

    def close(self) -> None:
        for hook in self.on_close:
            hook()
        self.on_close.clear()
        for coll in self._open.values():
            coll.close()
        self._open.clear()
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()


class EdgeCollection:
    def __init__(self, folder: Path, spec: CollectionSpec) -> None:
        self.folder, self.spec, self.dim = folder, spec, spec.dim
        self._lock = threading.RLock()
        self.index_after: int | None = INDEX_AFTER
        self._build: _indexer.IndexBuild | None = None
        self._replay: list[Any] | None = None  # updates taken while a build runs, replayed into it
        self._unindexed = 0
        shard_dir = folder / "shard"
        self._log = LogSync(shard_dir / "wal", self.flush)
        meta = folder / "meta.json"
        where = f"collection {spec.name!r} in {folder.parent}"
        try:
            if meta.exists():
                check_meta(where, json.loads(meta.read_text()), spec.kind, spec.dim)
            else:
                if shard_dir.exists():
                    check_meta(where, {}, spec.kind, spec.dim)  # raises: a shard that is not ours
                write_atomic(meta, dumps_meta(spec).encode())
            _indexer.recover(folder)
            if (shard_dir / "edge_config.json").exists():
                self._shard = qe.EdgeShard.load(str(shard_dir))
                vectors = self._shard_config_dim(shard_dir)
                if vectors is not None and vectors != spec.dim:
                    raise StoreError(f"{where} holds {vectors}-d vectors, not {spec.dim}-d: use the same embedder")
            else:
                self._check_space(0)
                self._shard = qe.EdgeShard.create(str(shard_dir), self._config(spec))
            self._ensure_indexes(spec)
            info = self._shard.info()
            self._unindexed = max(0, info.points_count - info.indexed_vectors_count)
        except StoreError:
            raise
        except (OSError, ValueError, RuntimeError, Exception) as exc:  # noqa: BLE001 - engine errors are untyped
            raise StoreError(f"cannot open {where} ({type(exc).__name__}: {exc}); it may be corrupted: "
                             "restore it from a backup, or pass another collection= / path=") from exc

    # -- setup -------------------------------------------------------------------------
    @staticmethod
    def _config(spec: CollectionSpec) -> Any:
        return qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Dot)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams()} if spec.sparse else None,
            # per-tenant graphs only: every search is filtered by tenant (payload_m), none global (m=0)
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000, payload_m=16),
        )

    @staticmethod
    def _shard_config_dim(shard_dir: Path) -> int | None:
        try:
            cfg = json.loads((shard_dir / "edge_config.json").read_text())
            return int(cfg["vectors"][DENSE]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _ensure_indexes(self, spec: CollectionSpec) -> None:
        have = set(self._shard.info().payload_schema)
        wanted: list[tuple[str, Any]] = [(TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True))]
        wanted += [(f, qe.PayloadSchemaType.Keyword) for f in spec.keyword_fields]
        wanted += [(f, qe.IntegerIndexParams(lookup=True, range=True)) for f in spec.integer_fields]
        wanted += [(f, qe.PayloadSchemaType.Float) for f in spec.float_fields]
        wanted += [(f, qe.PayloadSchemaType.Bool) for f in spec.bool_fields]
        for name, schema in wanted:
            if name not in have:
                self._check_space(0)
                self._update(qe.UpdateOperation.create_field_index(name, schema), "index")
        self._sync()

    # -- writes ------------------------------------------------------------------------
    def upsert(self, points: Sequence[PointData]) -> None:
        """Write `points`; durable when it returns."""
        self.wait_durable(self.apply(points))

    def apply(self, points: Sequence[PointData]) -> int:
        """Write `points` into the shard: visible to reads at once, durable once
        `wait_durable` returns for the ticket this returns."""
        if not points:
            return 0
        native = [qe.Point(p.id, self._vectors(p.dense, p.sparse), p.payload) for p in points]
        with self._lock:
            self._check_space(2 * sum(_size(p) for p in points))  # into the log, then a segment
            self._update(qe.UpdateOperation.upsert_points(native), "write")
            ticket = self._log.applied_one()
            self._unindexed += len(native)
            self._maybe_index()
            return ticket

    def wait_durable(self, ticket: int) -> None:
        """Return once the write `ticket` is on disk (a group commit outside the lock:
        writers that applied meanwhile share one fsync, `qdrant._wal`)."""
        self._log.wait(ticket)

    def set_sparse(self, updates: Sequence[tuple[str, tuple[list[int], list[float]]]]) -> None:
        if not updates:
            return
        native = [qe.PointVectors(pid, {SPARSE: qe.SparseVector(list(i), list(v))}) for pid, (i, v) in updates]
        with self._lock:
            self._check_space(2 * sum(64 + 8 * len(i) for _, (i, _) in updates))
            self._update(qe.UpdateOperation.update_vectors(native), "write")
            self._sync()

    def delete(self, scope: Scope) -> None:
        flt = _filter(scope)
        with self._lock:
            self._check_space(0)
            self._update(qe.UpdateOperation.delete_points_by_filter(flt), "delete")
            self._sync()

    # -- reads -------------------------------------------------------------------------
    def query(self, queries: Sequence[Query]) -> list[list[Record]]:
        requests = [self._request(q) for q in queries]
        with self._lock:
            found = self._call(lambda: self._shard.query_batch(qe.QueryBatchRequest(requests)), "search")
        return [[_record(p) for p in points] if q.with_payload or q.vectors else
                [Record(str(p.id) if q.with_ids else "", {}, score=float(p.score)) for p in points] for q, points in zip(queries, found)]

    def scroll(self, scope: Scope, *, limit: int, offset: Any = None, with_vectors: bool | list[str] = False,
               with_payload: bool | list[str] = True) -> tuple[list[Record], Any]:
        req = qe.ScrollRequest(offset=offset, limit=limit, filter=_filter(scope), with_payload=with_payload,
                               with_vector=with_vectors)
        with self._lock:
            points, nxt = self._call(lambda: self._shard.scroll(req), "scroll")
        return [_record(p) for p in points], nxt

    def retrieve(self, point_ids: Sequence[str]) -> list[Record]:
        """The points among `point_ids`, with payloads: a lookup by id (~2 us), not a
        filtered scroll (~30 us)."""
        with self._lock:
            points = self._call(lambda: self._shard.retrieve(list(point_ids), True, False), "retrieve")
        return [_record(p) for p in points]

    def count(self, scope: Scope) -> int:
        req = qe.CountRequest(filter=_filter(scope), exact=True)
        with self._lock:
            return int(self._call(lambda: self._shard.count(req), "count"))

    def flush(self) -> None:
        with self._lock:
            self._call(self._shard.flush, "flush")

    def optimize(self, *, wait: bool = True) -> bool:
        """Build the HNSW index now, in a child process (`qdrant._indexer`): puts and
        searches go on meanwhile. `wait=False` returns at once; True when a build swapped
        in (or, without waiting, started). Waiting joins a build already running, then
        indexes what it could not include."""
        build = self.build_index()
        if build is None or not wait:
            return build is not None
        build.join()
        if build.swapped and self._unindexed:  # written while that build ran
            build = self.build_index()
            if build is not None:
                build.join()
        return build is not None and build.swapped

    def build_index(self) -> _indexer.IndexBuild | None:
        """The running background build, or a new one (None when the collection is closed)."""
        with self._lock:
            if self._shard is None:
                return None
            if self._build is None or not self._build.is_alive():
                self._build = _indexer.IndexBuild(self)
                self._build.start()
            return self._build

    @property
    def indexing(self) -> bool:
        """True while a background index build runs."""
        return self._build is not None and self._build.is_alive()

    def close(self) -> None:
        build = self._build
        if build is not None:  # outside the lock: the build may be waiting for it
            build.cancel()
            build.join()
        with self._lock:
            shard, self._shard = getattr(self, "_shard", None), None
            if shard is not None:
                try:
                    shard.flush()
                finally:
                    shard.close()
        self._log.close()  # outside the lock: a pass in flight may be waiting for it

    # -- internals ---------------------------------------------------------------------
    def _update(self, op: Any, what: str) -> None:
        """Apply `op` to the live shard (and record it for a build in flight)."""
        self._call(lambda: self._shard.update(op), what)
        if self._replay is not None:
            self._replay.append(op)
            if len(self._replay) > _indexer.MAX_REPLAY:
                self._replay = None  # the build is dropped at its swap
                log.info("background index build of %s dropped: too many writes meanwhile", self.folder)

    def _maybe_index(self) -> None:
        if self.index_after is not None and self._unindexed >= self.index_after and not self.indexing:
            self.build_index()

    def _check_space(self, size: int) -> None:
        """Raise `StoreError` unless the disk has `size` bytes (what the write puts on
        disk) free beyond the headroom the engine's mapped files need (`MIN_FREE_BYTES`)."""
        need = MIN_FREE_BYTES + size
        free = free_bytes(self.folder.parent)
        if free is not None and free < need:
            raise StoreError(
                f"only {free / 2**20:.1f} MiB free on the disk of {self.folder.parent}; an embedded Qdrant write "
                f"needs {need / 2**20:.0f} MiB free (its memory-mapped files would otherwise crash the process). "
                "Nothing was written: free disk space, or move path= to a larger disk")

    def _request(self, q: Query) -> Any:
        flt = _filter(q.scope)
        params = qe.SearchParams(exact=True) if q.exact else None
        wv: Any = [v for v in q.vectors if v == DENSE or self.spec.sparse] or False
        if q.fusion != FusionMode.UNION and q.dense is not None and q.sparse is not None:
            fusion = qe.Fusion.Rrf(k=60) if q.fusion == FusionMode.RRF else qe.Fusion.Dbsf()
            prefetch = [qe.Prefetch(limit=q.limit, query=self._nearest(q.dense, None), filter=flt, params=params),
                        qe.Prefetch(limit=q.limit, query=self._nearest(None, q.sparse), filter=flt)]
            return qe.QueryRequest(limit=q.limit, prefetches=prefetch, query=fusion, filter=flt,
                                   with_vector=wv, with_payload=q.with_payload)
        return qe.QueryRequest(limit=q.limit, query=self._nearest(q.dense, q.sparse), filter=flt,
                               with_vector=wv, with_payload=q.with_payload, params=params)

    @staticmethod
    def _nearest(dense: np.ndarray | None, sparse: tuple[list[int], list[float]] | None) -> Any:
        if dense is not None:
            return qe.Query.Nearest(np.asarray(dense, dtype=np.float32).tolist(), using=DENSE)
        assert sparse is not None
        return qe.Query.Nearest(qe.SparseVector(list(sparse[0]), list(sparse[1])), using=SPARSE)

    def _vectors(self, dense: np.ndarray, sparse: tuple[list[int], list[float]] | None) -> dict[str, Any]:
        out: dict[str, Any] = {DENSE: np.asarray(dense, dtype=np.float32).tolist()}
        if self.spec.sparse:
            idx, val = sparse or ([], [])
            out[SPARSE] = qe.SparseVector(list(idx), list(val))
        return out

    def _call(self, fn: Any, what: str) -> Any:
        if self._shard is None:
            raise StoreError(f"the Qdrant collection {self.spec.name!r} is closed; open a new store")
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the engine raises plain Exception / ValueError
            raise StoreError(f"Qdrant edge {what} failed on {self.folder} ({exc}); nothing acknowledged was lost. "
                             "Check the disk (space, permissions) and that the inputs match the collection") from exc

    def _sync(self) -> None:
        """fsync the write-ahead log, under the lock (writes other than `apply`'s)."""
        self._log.sync()


def _filter(scope: Scope) -> Any:
    scope = require(scope)
    must: list[Any] = [qe.FieldCondition(key=TENANT_FIELD, match=qe.MatchValue(scope.tenant))]
    if scope.point_ids is not None:
        must.append(qe.HasIdCondition(set(scope.point_ids)))
    if scope.seqs is not None:
        must.append(qe.FieldCondition(key="seq", match=qe.MatchAny(list(scope.seqs))))
    if scope.tiers is not None:
        must.append(qe.FieldCondition(key="tier", match=qe.MatchAny(list(scope.tiers))))
    if scope.roles is not None:
        must.append(qe.FieldCondition(key="role", match=qe.MatchAny(list(scope.roles))))
    if scope.since is not None or scope.until is not None:
        must.append(qe.FieldCondition(key="timestamp", range=qe.RangeFloat(gte=scope.since, lte=scope.until)))
    if scope.originals_only:
        must.append(qe.FieldCondition(key="form", match=qe.MatchValue("original")))
    for key, value in scope.equals:
        must.append(qe.FieldCondition(key=key, match=qe.MatchValue(value)))
    for key, bound in scope.above:
        must.append(qe.FieldCondition(key=key, range=qe.RangeFloat(gt=bound)))
    for key, bound in scope.below:
        must.append(qe.FieldCondition(key=key, range=qe.RangeFloat(lte=bound)))
    return qe.Filter(must=must)


def _size(point: PointData) -> int:
    """About how many bytes `point` takes once stored, from above: vectors, and a payload
    bounded by its variable parts (text at 4 bytes a character, metadata, source ids)."""
    sparse = len(point.sparse[0]) if point.sparse else 0
    payload = point.payload
    text = payload.get("text")
    variable = 4 * len(text) if isinstance(text, str) else len(repr(text))
    variable += len(repr(payload.get("metadata"))) + len(repr(payload.get("source_ids")))
    return 4 * len(point.dense) + 8 * sparse + variable + 512
