"""`ScopeRouter`: each new block goes to the scopes whose task it is relevant to.

With one shared memory every agent's budget competes with every other agent's context.
The router scores a block against each scope's task (a description, or a list of the
sub-tasks / questions the agent was given) with the same two signals as the core's
relevance, BM25 and embedding cosine, and writes it into every scope scoring at least
`threshold`; so each agent's budget holds its own task's context::

    router = ScopeRouter([dates, people], threshold=0.3)
    routed = router.route("We moved the launch to 3 May.")   # {scope name: relevance}
    router.scores("some text")                              # the scores, nothing written

Score of a block for one task string ``t`` (in [0, 1])::

    lexical = BM25(block terms against t) / BM25(t against itself)   (capped at 1)
    score   = bm25_share * lexical + (1 - bm25_share) * max(cosine(block, t), 0)

and a scope's score is its best task string's. Evidence often spans a few turns (a
question, its answer, the follow-up), so a block routed to a scope also brings its
`neighbours` preceding and following blocks (default 1), as the assembler's neighbour
expansion does in one shared memory. `fallback="best"` (default) gives a block
no scope wants to the best-scoring one, so no block is lost; ``"drop"`` drops it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tiered_context.scopes._blocks import ContextBlock, content_hash
from tiered_context.errors import ConfigError, TenantError
from tiered_context.core import BM25Index, normalize, one_blas_thread, terms
from tiered_context.scopes._scope import ContextScope

__all__ = ["ScopeRouter"]


class ScopeRouter:
    """Routes blocks to the scopes whose `task` they are relevant to (see module docs)."""

    def __init__(
        self,
        scopes: Sequence[ContextScope],
        *,
        threshold: float = 0.3,
        bm25_share: float = 0.5,
        fallback: str = "best",
        neighbours: int = 1,
    ) -> None:
        if not scopes:
            raise ConfigError("ScopeRouter needs at least one scope (fork one per agent, each with a task=)")
        tenants = {s.tenant for s in scopes}
        if len(tenants) > 1:
            raise TenantError(f"scopes of several tenants {sorted(tenants)} cannot share a router; use one per tenant")
        if not 0 <= threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
        if not 0 <= bm25_share <= 1:
            raise ConfigError("bm25_share must be in [0, 1] (0 = cosine only, 1 = BM25 only)")
        if fallback not in ("best", "drop"):
            raise ConfigError(f"fallback must be 'best' or 'drop', got {fallback!r}")
        if not isinstance(neighbours, int) or not 0 <= neighbours <= 10:
            raise ConfigError(f"neighbours must be an int in [0, 10] blocks, got {neighbours!r}")
        self.scopes, self.threshold, self.bm25_share, self.fallback = list(scopes), threshold, bm25_share, fallback
        self.neighbours = neighbours
        self._recent: deque[tuple[Any, Mapping[str, Any], np.ndarray, dict[str, ContextBlock]]] = deque(maxlen=neighbours)
        self._carry: dict[int, int] = {}  # scope index -> following blocks it still receives
        self._lock = threading.Lock()
        self._owner: list[int] = []  # task string -> scope index
        texts: list[str] = []
        for k, scope in enumerate(self.scopes):
            tasks = [scope.task] if isinstance(scope.task, str) else list(scope.task)
            tasks = [t for t in tasks if t and t.strip()]
            if not tasks:
                raise ConfigError(f"scope {scope.name!r} has no task; fork it with task='what this agent works on'")
            texts.extend(tasks)
            self._owner.extend([k] * len(tasks))
        self._index = BM25Index()
        for text in texts:
            self._index.add(text)
        self._self_bm25 = np.array([max(float(self._index.scores(t)[j]), 1e-9) for j, t in enumerate(texts)])
        self._vectors = normalize(self.scopes[0]._tree.embedder.embed(texts))
        self._owner_arr = np.asarray(self._owner)

    def scores(self, text: str) -> dict[str, float]:
        """Relevance of `text` to each scope's task, in [0, 1] (nothing is written)."""
        return dict(zip((s.name for s in self.scopes), self._scope_scores([text])[0].tolist()))

    def _scope_scores(self, texts: Sequence[str]) -> np.ndarray:
        tree = self.scopes[0]._tree
        vectors = normalize(tree.embedder.embed(list(texts)))
        with tree.lock:  # the scopes reuse these vectors instead of embedding again
            for text, vec in zip(texts, vectors):
                tree.vectors.setdefault(content_hash(text), vec)
        out = np.zeros((len(texts), len(self.scopes)), dtype=np.float32)
        with one_blas_thread():  # once for every text, not per text
            for row, (text, vec) in enumerate(zip(texts, vectors)):
                lexical = np.minimum(self._index.scores(" ".join(terms(text))) / self._self_bm25, 1.0)
                dense = np.maximum(self._vectors @ vec, 0.0)
                per_task = self.bm25_share * lexical + (1 - self.bm25_share) * dense
                np.maximum.at(out[row], self._owner_arr, per_task)
        return out

    def route(self, content: Any, **block_options: Any) -> dict[str, ContextBlock]:
        """Write `content` into each scope it is relevant to; returns {scope name: block}
        (each block carries its `relevance` for that scope). `block_options` as `ContextScope.add`."""
        return self.route_many([content], **block_options)[0]

    def route_many(self, contents: Sequence[Any], *, options: Sequence[Mapping[str, Any]] | None = None,
                   **block_options: Any) -> list[dict[str, ContextBlock]]:
        """`route` for many contents, scored in one embedding batch. `options`, one
        mapping per content, adds per-block `ContextScope.add` arguments (key, metadata)."""
        if options is not None and len(options) != len(contents):
            raise ConfigError(f"{len(contents)} contents but {len(options)} options; pass one mapping per content")
        texts = [c.content if isinstance(c, ContextBlock) else str(c) for c in contents]
        if not texts:
            return []
        scores = self._scope_scores(texts)
        out: list[dict[str, ContextBlock]] = []
        with self._lock:
            for n, (content, row) in enumerate(zip(contents, scores)):
                extra = {**block_options, **(options[n] if options is not None else {})}
                primary = {k for k, s in enumerate(row) if s >= self.threshold}
                carried = {k for k, left in self._carry.items() if left > 0}
                self._carry = {k: left - 1 for k, left in self._carry.items() if left > 1}
                if not primary and not carried and self.fallback == "best":
                    primary = {int(row.argmax())}
                routed: dict[str, ContextBlock] = {}
                for k in sorted(primary):  # a relevant block brings its preceding neighbours
                    self._carry[k] = self.neighbours
                    for prev in self._recent:
                        if self.scopes[k].name not in prev[3]:
                            prev[3][self.scopes[k].name] = self._write(k, *prev[:3])
                for k in sorted(primary | carried):
                    routed[self.scopes[k].name] = self._write(k, content, extra, row)
                if self.neighbours:
                    self._recent.append((content, extra, row, routed))
                out.append(routed)
        return out

    def _write(self, k: int, content: Any, extra: Mapping[str, Any], row: np.ndarray) -> ContextBlock:
        scope = self.scopes[k]
        if isinstance(content, ContextBlock):
            return scope.write(content.evolve(relevance=float(row[k])))
        return scope.add(content, relevance=float(row[k]), **extra)

    async def aroute(self, content: Any, **block_options: Any) -> dict[str, ContextBlock]:
        """Async twin of `route` (embedding runs in a thread)."""
        return await asyncio.to_thread(self.route, content, **block_options)

    def __repr__(self) -> str:
        return (f"ScopeRouter({[s.name for s in self.scopes]}, threshold={self.threshold}, "
                f"bm25_share={self.bm25_share}, neighbours={self.neighbours}, fallback={self.fallback!r})")

    @staticmethod
    def describe(routed: Mapping[str, ContextBlock]) -> str:
        """One line per target: ``scope: key (relevance)``, for logs."""
        return "; ".join(f"{n}: {b.key} ({b.relevance:.2f})" for n, b in routed.items())
