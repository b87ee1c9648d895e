"""Tenant statistics saved at a clean close of an embedded store, so that reopening it
does not scan every tenant it searches.

`_stats.TenantStats` is derived: without a snapshot the first search of a tenant after an
open reads every point of it back with its vectors (~9 s for 100k points, ~20 s for 200k,
the whole tenant in this process's memory). A snapshot is trusted only when it describes
exactly what the shard holds, which this module guarantees with one marker file:

* ``VALID`` exists only between a clean close and the next write. The first write after
  an open removes it (durably) *before* anything is written, so a process killed at any
  instruction after that leaves no marker, and the next open discards every snapshot.
* At a clean close, every tenant whose statistics are in memory is saved; a tenant
  written since the open whose statistics are not in memory (evicted, or a large tenant
  written without loading them) has its old snapshot removed. Then ``VALID`` is written.
* A snapshot also records its tenant's point count, checked against the shard on load,
  and a damaged or foreign file is ignored: the statistics are rebuilt from Qdrant, as
  they always could be. Nothing here is needed for correctness, only for speed.

Files: ``<store path>/.stats/<collection>/<blake2b of the tenant>.npz`` (numpy arrays only, loaded
without pickle) and ``VALID``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tiered_context.core import fsync_dir, write_atomic
from tiered_context.qdrant._stats import TenantStats

__all__ = ["Snapshots"]

log = logging.getLogger("tiered_context")
_MARKER = "VALID"


class Snapshots:
    """The statistics snapshots of one embedded collection (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.trusted = (folder / _MARKER).is_file()
        self._written: set[str] = set()  # tenants written since the open
        self._dirty = False  # the marker is gone: writes happened since the open
        if not self.trusted and folder.exists():  # left by a process that did not close cleanly
            shutil.rmtree(folder, ignore_errors=True)

    def _file(self, tenant: str) -> Path:
        return self.folder / f"{hashlib.blake2b(tenant.encode('utf-8', 'surrogatepass'), digest_size=16).hexdigest()}.npz"

    def before_write(self, tenant: str) -> None:
        """Called before any write to `tenant`: the snapshots stop being trusted, durably."""
        self._written.add(tenant)
        if not self._dirty:
            self._dirty = True
            self.trusted = False
            marker = self.folder / _MARKER
            if marker.exists():
                marker.unlink()
                fsync_dir(self.folder)

    def load(self, tenant: str, dim: int, points: int) -> TenantStats | None:
        """The saved statistics of `tenant` if they can be trusted and hold `points` points."""
        if not self.trusted or tenant in self._written:
            return None
        path = self._file(tenant)
        try:
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
                head, terms, df = z["head"], z["terms"], z["df"]
                wsum, wsq, dsum, douter = z["wsum"], z["wsq"], z["dsum"], z["douter"]
                if (head.shape != (4,) or dsum.shape != (dim,) or douter.shape != (dim, dim)
                        or not len(terms) == len(df) == len(wsum) == len(wsq)):
                    raise ValueError("shapes do not match")
                stats = TenantStats(dim)
                stats.n, stats.total_len, stats.weighted_at = (int(v) for v in head[:3])
                stats.weighted_avgdl = float(z["avgdl"])
                keys = terms.tolist()
                stats.df = Counter(dict(zip(keys, df.tolist())))
                stats.wsum, stats.wsq = dict(zip(keys, wsum.tolist())), dict(zip(keys, wsq.tolist()))
                stats.dsum, stats.douter = dsum.astype(np.float64), douter.astype(np.float64)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - damaged or foreign: rebuilt from Qdrant instead
            log.info("statistics snapshot %s unusable (%s); rebuilding from the shard", path.name, exc)
            return None
        if stats.n != points:
            log.info("statistics snapshot %s holds %d points, the shard %d; rebuilding", path.name, stats.n, points)
            return None
        return stats

    def save(self, stats: Mapping[str, TenantStats]) -> None:
        """At a clean close: save `stats`, drop what a write made stale, then mark them trusted."""
        if not self._dirty and self.trusted:
            return  # nothing was written since the open: the snapshots on disk still hold
        for tenant, s in stats.items():
            buf = io.BytesIO()
            keys = list(s.df)
            np.savez(buf, head=np.array([s.n, s.total_len, s.weighted_at, 0], dtype=np.int64),
                     avgdl=np.float64(s.weighted_avgdl), terms=np.array(keys, dtype=np.uint32),
                     df=np.array([s.df[k] for k in keys], dtype=np.int64),
                     wsum=np.array([s.wsum.get(k, 0.0) for k in keys], dtype=np.float64),
                     wsq=np.array([s.wsq.get(k, 0.0) for k in keys], dtype=np.float64),
                     dsum=s.dsum, douter=s.douter)
            write_atomic(self._file(tenant), buf.getvalue())
        for tenant in self._written - stats.keys():
            self._file(tenant).unlink(missing_ok=True)
        if self.folder.exists():
            fsync_dir(self.folder)
        write_atomic(self.folder / _MARKER, b"statistics snapshots match the shard\n")
        self._written.clear()
        self._dirty, self.trusted = False, True
