"""Dense statistics of a tenant, maintained incrementally from its commit log.

The core turns raw cosines into z-scores with their mean and standard deviation over the
tenant's whole collection, for the query at hand (`SignalStats`). With ``n`` records, the
sum of their vectors ``s`` and of their outer products ``M``, for a query ``q``::

    mean = q.s / n        var = q^T M q / n - mean^2

exactly, in O(d^2) per query, whatever ``n``. ``(pos, s, M)`` is a function of the log
position alone: every worker that has read the log up to ``pos`` holds the same values (up
to float rounding), so all workers normalise the same way. A worker keeps them per tenant
(a bounded LRU), extends them with the records committed since (one indexed read of the
new vectors), and writes a snapshot to ``tiered_context_moments`` every `SNAPSHOT_EVERY`
records, so a worker that opens a large tenant reads one row and a short tail, never the
whole tenant.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tiered_context.core import one_blas_thread

__all__ = ["Moments", "MomentsCache", "SNAPSHOT_EVERY"]

#: Records between two snapshots of a tenant's moments in the database.
SNAPSHOT_EVERY = 2048
#: Vectors read per query when extending the moments over a long tail.
_CHUNK = 8192


@dataclass(frozen=True, slots=True)
class Moments:
    """Sum and sum of outer products of a tenant's vectors up to log position `pos`."""

    pos: int
    s: np.ndarray  # (d,) float64
    m: np.ndarray  # (d, d) float64

    @classmethod
    def zero(cls, dim: int) -> "Moments":
        return cls(0, np.zeros(dim, dtype=np.float64), np.zeros((dim, dim), dtype=np.float64))

    @property
    def dim(self) -> int:
        return int(self.s.shape[0])

    def plus(self, pos: int, vectors: np.ndarray, sign: float = 1.0) -> "Moments":
        v = np.asarray(vectors, dtype=np.float64)
        if not len(v):
            return Moments(pos, self.s, self.m)
        with one_blas_thread(rows=len(v)):
            return Moments(pos, self.s + sign * v.sum(axis=0), self.m + sign * (v.T @ v))

    def stats(self, query: np.ndarray, n: int) -> tuple[float, float]:
        """(mean, std) of the cosine of `query` with the `n` vectors summed here; std is
        1.0 when the collection has no spread (as `LocalColdStore`)."""
        if n <= 0:
            return 0.0, 1.0
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        with one_blas_thread():
            mean = float(q @ self.s) / n
            var = float(q @ (self.m @ q)) / n - mean * mean
        std = float(np.sqrt(var)) if var > 1e-12 else 0.0
        return mean, (std if std > 1e-6 else 1.0)

    def to_bytes(self) -> tuple[bytes, bytes]:
        return self.s.astype("<f8").tobytes(), self.m.astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, pos: int, dim: int, s: bytes, m: bytes) -> "Moments":
        return cls(int(pos), np.frombuffer(bytes(s), dtype="<f8").astype(np.float64).reshape(dim),
                   np.frombuffer(bytes(m), dtype="<f8").astype(np.float64).reshape(dim, dim))


VectorReader = Callable[[int, int], np.ndarray]  # (after, upto) -> vectors of pos in (after, upto], in order


class MomentsCache:
    """Per-tenant `Moments`, least recently used first out, safe across threads."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, Moments] = OrderedDict()
        self._saved: dict[Any, int] = {}  # tenant -> pos of the snapshot known to be in the database
        self._lock = threading.Lock()

    def at(self, tenant: Any, n: int, dim: int, read: VectorReader, load: Callable[[], Moments | None]) -> Moments:
        """The moments of `tenant` at log position `n` (read within one database snapshot)."""
        with self._lock:
            base = self._items.get(tenant)
            if base is not None:
                self._items.move_to_end(tenant)
        if base is None or base.dim != dim:
            base = load()
            if base is None or base.dim != dim or base.pos > n:
                base = Moments.zero(dim)
            else:
                with self._lock:
                    self._saved[tenant] = max(self._saved.get(tenant, 0), base.pos)
        if base.pos < n:
            for start in range(base.pos, n, _CHUNK):
                upto = min(start + _CHUNK, n)
                base = base.plus(upto, read(start, upto))
        elif base.pos > n:  # another thread moved ahead of this snapshot: subtract the difference
            return base.plus(n, read(n, base.pos), sign=-1.0)
        with self._lock:
            current = self._items.get(tenant)
            if current is None or current.pos < base.pos or current.dim != base.dim:
                self._items[tenant] = base
                self._items.move_to_end(tenant)
                while len(self._items) > self.capacity:
                    old, _ = self._items.popitem(last=False)
                    self._saved.pop(old, None)
        return base

    def snapshot_due(self, tenant: Any, moments: Moments) -> bool:
        with self._lock:
            return moments.pos - self._saved.get(tenant, 0) >= SNAPSHOT_EVERY

    def saved(self, tenant: Any, pos: int) -> None:
        with self._lock:
            self._saved[tenant] = max(self._saved.get(tenant, 0), pos)

    # -- in the database (the table `tiered_context_moments`) -----------------------------
    def read_at(self, cur: Any, tid: int, n: int, dim: int) -> Moments:
        """`at` for tenant row `tid`, reading vectors and the saved snapshot through `cur`."""
        def read(after: int, upto: int) -> np.ndarray:
            cur.execute("SELECT vec FROM tiered_context_items WHERE tenant = %s AND pos > %s AND pos <= %s ORDER BY pos",
                        (tid, after, upto))
            rows = cur.fetchall()
            return np.stack([r[0] for r in rows]) if rows else np.zeros((0, dim), dtype=np.float32)

        def load() -> Moments | None:
            cur.execute("SELECT pos, dim, s, m FROM tiered_context_moments WHERE tenant = %s", (tid,))
            row = cur.fetchone()
            return Moments.from_bytes(*row) if row is not None else None

        return self.at(tid, n, dim, read, load)

    def save(self, conn: Any, tid: int, moments: Moments) -> None:
        """Snapshot the moments every `SNAPSHOT_EVERY` records (outside the read snapshot)."""
        if not self.snapshot_due(tid, moments):
            return
        from psycopg.rows import tuple_row

        s, m = moments.to_bytes()
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute("INSERT INTO tiered_context_moments (tenant, pos, dim, s, m) VALUES (%s, %s, %s, %s, %s) "
                        "ON CONFLICT (tenant) DO UPDATE SET pos = EXCLUDED.pos, dim = EXCLUDED.dim, s = EXCLUDED.s, "
                        "m = EXCLUDED.m WHERE tiered_context_moments.pos < EXCLUDED.pos",
                        (tid, moments.pos, moments.dim, s, m))
        self.saved(tid, moments.pos)
