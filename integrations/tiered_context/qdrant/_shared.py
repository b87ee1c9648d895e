"""`QdrantColdStore` on a Qdrant server that many worker processes write at once.

``QdrantColdStore(url=...)`` is this class: a `SharedColdStore` (``core._memory``), so a
`TieredContext` on it catches up with what other workers acknowledged before each put
and assembly. On top of the embedded store's behaviour:

- **Commit log and seqs** (`_log`): every `add` claims one log slot per record (a full
  copy of it) before it writes the record to the searchable collection; `watermark` is the
  number of slots written, `since` the records of the contiguous slots after a position;
  `next_seqs` claims seq slots. Why nothing acknowledged is missed and no seq is issued
  twice: see `_log`.
- **Statistics that do not drift**: a tenant's BM25 and dense statistics are *folded from
  the log*, in log order, from the vectors each writer stored (not recomputed): every
  worker at log position ``p`` holds exactly the same statistics, and so ranks the same
  way. A search first folds the slots it has not seen (one count when nothing changed).
  The embedded store's re-weighting of a young tenant (rewriting stored BM25 weights when
  the mean length drifts) is off here: it would change stored vectors behind the log.
- **Repair**: a worker that dies after claiming its slots but before writing the records
  leaves them in the log only; the next worker that folds those slots writes them.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from tiered_context.core import ContextItem, SharedTwins
from tiered_context.errors import ConfigError
from tiered_context.qdrant._log import POS, SEQ, Claims, log_spec
from tiered_context.qdrant._payload import from_payload
from tiered_context.qdrant._state import WRITE_BATCH
from tiered_context.qdrant._engine import PointData
from tiered_context.qdrant._stats import TenantStats
from tiered_context.qdrant._store import QdrantColdStore
from tiered_context.qdrant._tenancy import point_id, scope

__all__ = ["SharedQdrantColdStore"]

#: What a `pos` slot holds beyond the record's own payload.
_SLOT_FIELDS = ("kind", "n", "token", "vec", "spi", "spv", "deleted")
_RECORD_FIELDS = ["tenant", "id", "text", "role", "timestamp", "tokens", "tier", "importance", "pinned", "metadata",
                  "source_ids", "seq", "form", "len", "n", "deleted"]


class SharedQdrantColdStore(QdrantColdStore, SharedTwins):
    """A `QdrantColdStore` on a server, shared by any number of workers (see the module).

    Setup: ``QdrantColdStore(url="http://qdrant:6333")`` returns one. Use: as any store;
    ``next_seqs(tenant, n)``, ``watermark(tenant)`` and ``since(tenant, position)`` are
    what `TieredContext` catches up through. Result: every worker sees every acknowledged
    record at its next catch-up, ranks with the same statistics, and numbers its originals
    with seqs no other worker holds.
    """

    _claims_obj: Claims | None = None

    # -- the SharedColdStore protocol ----------------------------------------------------
    def next_seqs(self, tenant: str, n: int) -> range:
        """`n` consecutive seqs for `tenant`'s originals that no other worker is ever issued
        (also above every seq stored before the log existed). A crash leaves a gap."""
        if n < 0:
            raise ConfigError("n must be >= 0")
        scope(tenant)
        with self._lock:
            claims = self._claims()
            floor = self._seq_floor(tenant)
            if n == 0:
                start = max(floor, claims.written(tenant, SEQ, known=True))
                return range(start, start)
            slots = claims.claim(tenant, SEQ, [None] * n, contiguous=True, floor=floor)
            return range(slots[0], slots[0] + n)

    def watermark(self, tenant: str) -> int:
        """The number of records `tenant`'s commit log holds (one count): equal to the
        position a reader last reached means nothing was acknowledged since."""
        scope(tenant)
        return self._claims().written(tenant, POS, known=True)

    def since(self, tenant: str, position: int, *, limit: int | None = None) -> list[ContextItem]:
        """The records logged after `position`, in log order, up to the first slot not yet
        visible (a reader never skips one). A deleted record's slot is passed over."""
        scope(tenant)
        slots = self._claims().read(tenant, POS, int(position), payload=_RECORD_FIELDS, limit=limit)
        return [from_payload(r.payload) for r in slots if not r.payload.get("deleted")]

    def items(self, tenant: str) -> list[ContextItem]:
        """Every record of `tenant`, read from the log (what catch-up reads), in history order."""
        scope(tenant)
        out: dict[str, ContextItem] = {}
        for r in self._claims().read(tenant, POS, 0, payload=_RECORD_FIELDS):
            if not r.payload.get("deleted"):
                out.setdefault(r.payload["id"], from_payload(r.payload))
        return sorted(out.values(), key=lambda i: (i.seq, i.is_derived, i.timestamp, i.id))

    def delete(self, tenant: str, ids: Any) -> None:
        """Remove `ids` from search and reads; their log slots become tombstones."""
        ids = list(ids)
        super().delete(tenant, ids)
        if ids:
            with self._lock:
                self._claims().mark(tenant, ids, {"deleted": True})

    def drop_tenant(self, tenant: str) -> None:
        """Remove every record of `tenant` and its log (other workers' positions restart)."""
        super().drop_tenant(tenant)
        with self._lock:
            self._claims().forget(tenant)
            self._floors.pop(tenant, None)

    # -- hooks of the base store ---------------------------------------------------------
    def _write(self, tenant: str, coll: Any, points: list[PointData]) -> int:
        """Log first (a slot per record, a full copy), then the searchable collection."""
        entries = [{**p.payload, "vec": np.asarray(p.dense, dtype=np.float32).tolist(),
                    "spi": list((p.sparse or ([], []))[0]), "spv": list((p.sparse or ([], []))[1])} for p in points]
        self._claims().claim(tenant, POS, entries, contiguous=False)
        return super()._write(tenant, coll, points)

    def _fold(self, tenant: str, stats: TenantStats, unit: np.ndarray, sparse: list[dict[int, float]],
              lengths: list[int]) -> None:
        """Nothing: statistics are folded from the log, in log order, before a search."""

    def _stats_for_write(self, tenant: str) -> TenantStats | None:
        return self._stats.get(tenant)  # only its mean length is used: no catch-up for a write

    def _tenant_stats(self, tenant: str) -> TenantStats:
        """The tenant's statistics, folded from its log up to the slots written now."""
        with self._lock:
            stats = self._stats.get(tenant)
            if stats is None:
                stats = self._stats[tenant] = TenantStats(self._coll.dim)
                while len(self._stats) > self._cached_tenants:
                    self._stats.popitem(last=False)
            self._stats.move_to_end(tenant)
            claims = self._claims()
            if claims.written(tenant, POS, max(stats.pos, claims.known(tenant, POS))) == stats.pos:
                return stats
            slots = claims.read(tenant, POS, stats.pos)
            live = [r.payload for r in slots if not r.payload.get("deleted")]
            if live:
                dense = np.asarray([p["vec"] for p in live], dtype=np.float64)
                stats.add(dense, [dict(zip(p["spi"], p["spv"])) for p in live], [int(p["len"]) for p in live])
            stats.pos += len(slots)
            self._repair(tenant, live)
            return stats

    # -- internals -----------------------------------------------------------------------
    @property
    def _floors(self) -> dict[str, int]:
        return self._state.__dict__.setdefault("floors", {})

    def _claims(self) -> Claims:
        state = self._state
        if getattr(state, "claims", None) is None:
            with _OPEN_LOCK:
                if getattr(state, "claims", None) is None:
                    state.claims = Claims(self._connection.collection(log_spec(self.collection_name)))
        return state.claims

    def _seq_floor(self, tenant: str) -> int:
        """One above the largest seq stored before the tenant had a seq log (0 if none)."""
        floor = self._floors.get(tenant)
        if floor is None:
            floor = 0
            if self._claims().written(tenant, SEQ, 0) == 0 and self._coll is not None:
                top = self._coll.scroll(scope(tenant, originals_only=True), limit=1, with_payload=["seq"],
                                        order_by=("seq", "desc"))[0]
                floor = int(top[0].payload["seq"]) + 1 if top else 0
            self._floors[tenant] = floor
        return floor

    def _repair(self, tenant: str, logged: list[dict[str, Any]]) -> None:
        """Write the logged records the searchable collection lacks (their writer died
        between its log claim and its write)."""
        ids = list(dict.fromkeys(p["id"] for p in logged))
        if not ids or self._coll.count(scope(tenant, ids=ids)) == len(ids):
            return
        found, _ = self._coll.scroll(scope(tenant, ids=ids), limit=len(ids), with_payload=False)
        have = {r.id for r in found}
        missing = {p["id"]: p for p in logged if point_id(tenant, p["id"]) not in have}
        points = [PointData(point_id(tenant, i), np.asarray(p["vec"], dtype=np.float32), (p["spi"], p["spv"]),
                            {k: v for k, v in p.items() if k not in _SLOT_FIELDS}) for i, p in missing.items()]
        for start in range(0, len(points), WRITE_BATCH):
            self._coll.upsert(points[start:start + WRITE_BATCH])


_OPEN_LOCK = threading.Lock()
