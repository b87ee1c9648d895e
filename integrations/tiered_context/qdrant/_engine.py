"""What the store and the cache need from an engine, independent of which one runs.

Two engines implement `Collection`: `_edge.EdgeCollection` (qdrant-edge-py, Qdrant's
Rust engine in the process) and `_client.ClientCollection` (qdrant-client: its local
mode on a path, or a Qdrant server / cluster by URL). Both take only `Scope`s for
reads, counts and deletes, and translate them with the tenant condition first.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tiered_context.errors import StoreError
from tiered_context.qdrant._tenancy import Scope

__all__ = ["SCHEMA_VERSION", "Collection", "CollectionSpec", "Engine", "FusionMode", "PointData",
           "Query", "Record", "check_meta", "record_from_point"]

#: Bumped whenever the stored layout changes; a collection with another version is refused
#: (or migrated, once a migration exists) with a message naming both versions.
SCHEMA_VERSION = 1
META_KEY = "tiered_context"
DENSE, SPARSE = "dense", "bm25"
SPARSE_SCHEME = "terms:blake2b32;bm25:k1=1.2,b=0.75"


class Engine(str, enum.Enum):
    """Which Qdrant runs the collection.

    * ``EDGE`` (default on a path): qdrant-edge-py, Qdrant's Rust engine in the process.
    * ``LOCAL``: qdrant-client's local mode on a path (pure Python, exact search).
    * ``SERVER``: a Qdrant server or cluster through qdrant-client (chosen by ``url=``).
    """

    EDGE = "edge"
    LOCAL = "local"
    SERVER = "server"


class FusionMode(str, enum.Enum):
    """How dense and sparse candidates are combined inside Qdrant.

    * ``UNION`` (default): the top `limit` of each, both raw scores kept; the core fuses
      them with z-scores over the tenant's collection (same as the in-process store).
    * ``RRF``: Qdrant's prefetch + reciprocal rank fusion; the top `limit` fused points.
    * ``DBSF``: Qdrant's prefetch + distribution-based score fusion; the top `limit`.
    """

    UNION = "union"
    RRF = "rrf"
    DBSF = "dbsf"


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    """A collection's fixed layout: written to its metadata on creation, checked on open."""

    name: str
    kind: str  # "archive" or "cache"
    dim: int
    sparse: bool = True
    keyword_fields: tuple[str, ...] = ()
    integer_fields: tuple[str, ...] = ()
    float_fields: tuple[str, ...] = ()
    bool_fields: tuple[str, ...] = ()
    #: a server collection's shard count (None: the server's default); the commit log uses 1
    shards: int | None = None
    #: linearizable per point on a cluster: writes ordered through the shard leader
    #: (``ordering=strong``), reads from a majority of replicas (the commit log's claims)
    strong: bool = False

    def meta(self) -> dict[str, Any]:
        return {META_KEY: {"schema": SCHEMA_VERSION, "kind": self.kind, "dim": self.dim, "distance": "dot",
                           "sparse": SPARSE_SCHEME if self.sparse else None}}


def check_meta(where: str, meta: Any, kind: str, dim: int | None) -> int:
    """Validate stored metadata against what we expect; returns the stored dim."""
    ours = meta.get(META_KEY) if isinstance(meta, dict) else None
    if not isinstance(ours, dict) or "schema" not in ours:
        raise StoreError(
            f"{where} exists but was not created by tiered-context (no {META_KEY!r} metadata): "
            "pass another collection= name (or path=), or remove it if it is yours and disposable"
        )
    version = ours.get("schema")
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise StoreError(
            f"{where} has tiered-context schema version {version}, this version reads {SCHEMA_VERSION}: "
            + ("upgrade tiered-context to read it" if newer else
               "no migration from that version exists; re-ingest into a new collection= (the old one is untouched)")
        )
    if ours.get("kind") != kind:
        raise StoreError(f"{where} holds tiered-context {ours.get('kind')!r} data, not {kind!r}: use another collection= name")
    stored = int(ours.get("dim", 0))
    if dim is not None and stored != dim:
        raise StoreError(
            f"{where} holds {stored}-d vectors but this store was given {dim}-d ones: use the embedder the "
            "collection was built with, or another collection= / path= for the new embedder"
        )
    return stored


@dataclass(slots=True)
class PointData:
    id: str
    dense: np.ndarray
    sparse: tuple[list[int], list[float]] | None
    payload: dict[str, Any]


@dataclass(slots=True)
class Record:
    id: str
    payload: dict[str, Any]
    dense: np.ndarray | None = None
    sparse: dict[int, float] | None = None
    score: float = 0.0


@dataclass(slots=True)
class Query:
    """One search: nearest by `dense`, by `sparse`, or both fused (`fusion` not UNION)."""

    scope: Scope
    limit: int
    dense: np.ndarray | None = None
    sparse: tuple[list[int], list[float]] | None = None
    fusion: FusionMode = FusionMode.UNION
    vectors: tuple[str, ...] = ()  # which stored vectors to return (DENSE, SPARSE)
    with_payload: bool = True
    with_ids: bool = True
    exact: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Collection(Protocol):
    """One collection (archive or cache) of one engine; every method is thread-safe."""

    dim: int

    def upsert(self, points: Sequence[PointData], *, insert_only: bool = False) -> None: ...

    def apply(self, points: Sequence[PointData]) -> int:
        """Write `points`, visible to reads at once; returns a ticket for `wait_durable`."""

    def wait_durable(self, ticket: int) -> None:
        """Return once the write `ticket` is durable (an embedded group commit)."""

    def set_sparse(self, updates: Sequence[tuple[str, tuple[list[int], list[float]]]]) -> None: ...

    def query(self, queries: Sequence[Query]) -> list[list[Record]]: ...

    def scroll(self, scope: Scope, *, limit: int, offset: Any = None, with_vectors: bool | list[str] = False,
               with_payload: bool | list[str] = True) -> tuple[list[Record], Any]: ...

    def retrieve(self, point_ids: Sequence[str]) -> list[Record]: ...

    def count(self, scope: Scope) -> int: ...

    def delete(self, scope: Scope) -> None: ...


def dumps_meta(spec: CollectionSpec) -> str:
    return json.dumps(spec.meta(), indent=1, sort_keys=True)


def record_from_point(p: Any) -> Record:
    """A `Record` from a point of either engine (both shape vectors the same way)."""
    vec = p.vector if isinstance(p.vector, dict) else {}
    dense = vec.get(DENSE)
    sparse = vec.get(SPARSE)
    return Record(
        id=str(p.id), payload=p.payload or {},
        dense=None if dense is None else np.asarray(dense, dtype=np.float32),
        sparse=None if sparse is None else dict(zip(sparse.indices, sparse.values)),
        score=float(getattr(p, "score", 0.0) or 0.0),
    )
