"""BM25 sparse vectors and per-tenant collection statistics for z-normalisation.

The core fuses BM25 and cosine as z-scores over the tenant's whole collection
(`SignalStats`). Qdrant returns only the top hits, so the store keeps, per tenant and
in memory, sufficient statistics rebuilt from Qdrant on first use and updated on add:

* dense: n, the sum of vectors s and of outer products M. For a query q the mean cosine
  is q.s/n and the variance q^T(M/n)q - mean^2: exact, O(d^2) per query.
* BM25: per term, the document frequency, and the sum and sum of squares of its stored
  weight. The mean is exact; the variance is exact when every document matching the
  query was fetched (the store does this when the matches are few, see `store.py`),
  otherwise the cross-term part is estimated as if terms occurred independently.

Documents are stored as sparse vectors of BM25 term weights
``tf (k1+1) / (tf + k1 (1 - b + b len/avgdl))`` (k1=1.2, b=0.75, as `BM25Index`), and a
query as its terms' IDF ``ln(1 + (n - df + 0.5)/(df + 0.5))`` over the tenant's own
documents (never other tenants'), so the sparse dot product is the core's BM25. avgdl
is the tenant's mean length when a document is written; the store re-weights a
tenant's documents when that mean drifts while the tenant is young (`reweight_due`).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tiered_context.core import SignalStats, one_blas_thread

__all__ = ["K1", "B", "TenantStats", "doc_weights", "term_index"]

K1, B = 1.2, 0.75
_REWEIGHT_UNTIL = 1 << 16  # past this many documents avgdl no longer moves enough to matter
_DRIFT = 0.05
_FOLD_ROWS = 512  # rows of a block folded into the outer-product sum at once


@functools.lru_cache(maxsize=1 << 18)
def term_index(term: str) -> int:
    """Stable 32-bit index of a term (Qdrant sparse indices are u32)."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")


def doc_weights(doc_terms: Sequence[str], avgdl: float) -> tuple[list[int], list[float]]:
    counts: Counter[int] = Counter(term_index(t) for t in doc_terms)
    length = len(doc_terms)
    norm = K1 * (1 - B + B * length / max(avgdl, 1e-9))
    pairs = sorted((i, tf * (K1 + 1) / (tf + norm)) for i, tf in counts.items())
    return [i for i, _ in pairs], [w for _, w in pairs]


class TenantStats:
    """Sufficient statistics of one tenant's collection (see the module docstring)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.total_len = 0
        self.df: Counter[int] = Counter()
        self.wsum: dict[int, float] = {}
        self.wsq: dict[int, float] = {}
        self.dsum = np.zeros(dim, dtype=np.float64)
        self._douter = np.zeros((dim, dim), dtype=np.float64)
        self._rows: list[np.ndarray] = []  # vectors added, not yet in `douter` (folded in blocks)
        self._pending = 0
        self.weighted_at = 0  # n when the stored weights were last made uniform
        self.weighted_avgdl = 0.0
        self.pos = 0  # a shared store: the commit-log position these statistics reflect

    # -- updates -------------------------------------------------------------------
    def avgdl(self, extra_len: int = 0, extra_n: int = 0) -> float:
        n = self.n + extra_n
        return (self.total_len + extra_len) / n if n else 1.0

    @property
    def douter(self) -> np.ndarray:
        """The sum of outer products of the vectors added (those added since the last read
        are folded in first)."""
        self._fold()
        return self._douter

    def _fold(self) -> None:
        """Add the pending rows' outer products: one product per block, not one per put."""
        if self._rows:
            block = np.concatenate(self._rows).astype(np.float64)
            self._rows, self._pending = [], 0
            with one_blas_thread(rows=len(block)):
                self._douter += block.T @ block

    @douter.setter
    def douter(self, value: np.ndarray) -> None:
        self._douter, self._rows, self._pending = value, [], 0

    def add(self, dense: np.ndarray, sparse: Iterable[Mapping[int, float]], lengths: Iterable[int]) -> None:
        dense = np.asarray(dense).reshape(-1, self.dsum.shape[0])
        self.dsum += dense.sum(axis=0, dtype=np.float64)
        self._rows.append(dense)
        self._pending += len(dense)
        if self._pending >= _FOLD_ROWS:
            self._fold()
        for vec, length in zip(sparse, lengths):
            self._add_sparse(vec, +1)
            self.n += 1
            self.total_len += int(length)

    def reweighted(self, idx: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
        """Documents' weights of terms `idx` went from `old` to `new` (0: the document
        lacks the term): the sums follow; so do document frequencies, which change only
        when a store indexed by other term rules is rewritten."""
        if not len(idx):
            return
        terms, where = np.unique(idx, return_inverse=True)
        dsum = np.bincount(where, weights=new - old)
        dsq = np.bincount(where, weights=new * new - old * old)
        ddf = np.bincount(where, weights=(new > 0).astype(np.float64) - (old > 0))
        for i, a, b, d in zip(terms.tolist(), dsum.tolist(), dsq.tolist(), ddf.tolist()):
            self.wsum[i] = self.wsum.get(i, 0.0) + a
            self.wsq[i] = self.wsq.get(i, 0.0) + b
            if d:
                self.df[i] += int(round(d))
            if self.df[i] <= 0:
                self.df.pop(i, None)
                self.wsum.pop(i, None)
                self.wsq.pop(i, None)

    def _add_sparse(self, vec: Mapping[int, float], sign: int) -> None:
        for i, w in vec.items():
            self.df[i] += sign
            self.wsum[i] = self.wsum.get(i, 0.0) + sign * w
            self.wsq[i] = self.wsq.get(i, 0.0) + sign * w * w
            if self.df[i] <= 0:
                del self.df[i]
                self.wsum.pop(i, None)
                self.wsq.pop(i, None)

    def reweight_due(self) -> bool:
        """True when avgdl has drifted > 5% since the weights were made uniform, checked
        each time the tenant doubles (amortised O(1) per document), up to 65,536 docs."""
        if self.n < 8 or self.n > _REWEIGHT_UNTIL or self.n < 2 * max(self.weighted_at, 4):
            return False
        drift = abs(self.avgdl() - self.weighted_avgdl) / max(self.avgdl(), 1e-9)
        if drift <= _DRIFT:
            self.weighted_at = self.n  # checked: wait for the next doubling
            return False
        return True

    # -- queries -------------------------------------------------------------------
    def idf(self, query_terms: Iterable[str]) -> dict[int, float]:
        """IDF of each distinct query term present in this tenant (absent terms score 0)."""
        out: dict[int, float] = {}
        for term in set(query_terms):
            i = term_index(term)
            df = self.df.get(i, 0)
            if df > 0:
                out[i] = out.get(i, 0.0) + math.log(1 + (self.n - df + 0.5) / (df + 0.5))
        return out

    def signal_stats(self, vector: np.ndarray, idf: Mapping[int, float],
                     matched_scores: np.ndarray | None = None) -> SignalStats:
        """Collection-wide mean / std of both signals for this query. `matched_scores`:
        the BM25 scores of *every* document matching a query term, when fetched (exact)."""
        if self.n == 0:
            return SignalStats()
        n = float(self.n)
        q = np.asarray(vector, dtype=np.float64).reshape(-1)
        with one_blas_thread():
            d_mean = float(q @ self.dsum) / n
            d_var = float(q @ self.douter @ q) / n - d_mean * d_mean
        d_std = math.sqrt(d_var) if d_var > 1e-12 else 0.0
        b_mean = sum(w * self.wsum.get(i, 0.0) for i, w in idf.items()) / n
        if matched_scores is not None:
            ex2 = float(np.square(np.asarray(matched_scores, dtype=np.float64)).sum()) / n
        else:
            own = sum(w * w * self.wsq.get(i, 0.0) for i, w in idf.items())
            parts = [w * self.wsum.get(i, 0.0) for i, w in idf.items()]
            total = sum(parts)
            cross = (total * total - sum(p * p for p in parts)) / n  # independence estimate
            ex2 = (own + cross) / n
        b_var = ex2 - b_mean * b_mean
        b_std = math.sqrt(b_var) if b_var > 1e-12 else 0.0
        return SignalStats(b_mean, b_std or 1.0, d_mean, d_std or 1.0)

    def query_matches(self, idf: Mapping[int, float]) -> int:
        """Upper bound on the number of documents containing any query term."""
        return min(self.n, sum(self.df.get(i, 0) for i in idf))
