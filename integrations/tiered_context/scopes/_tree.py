"""The shared state under a `ContextScope` tree: `_Tree` (tenant, seams, the vector of
each content, the scopes by name, the tree's lock) and `_View` (a scope's visible blocks
as an assembler-ready store). `ContextScope` itself is in `_scope`."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered_context.core import (
    Compressor,
    ContextAssembler,
    Embedder,
    Kind,
    LocalColdStore,
    Namespace,
    Scorer,
    TokenCounter,
    normalize,
)
from tiered_context.scopes._blocks import ContextBlock

if TYPE_CHECKING:
    from tiered_context.scopes._scope import ContextScope

__all__ = ["_Tree", "_View"]


class _Tree:
    """What every scope of one tree shares: tenant, seams, vectors, names."""

    def __init__(self, tenant: str, counter: TokenCounter, embedder: Embedder, scorer: Scorer,
                 compressor: Compressor | None) -> None:
        self.tenant, self.counter, self.embedder, self.scorer, self.compressor = tenant, counter, embedder, scorer, compressor
        self.vectors: dict[str, np.ndarray] = {}  # content hash -> unit vector
        self.scopes: dict[str, ContextScope] = {}
        self.lock = threading.RLock()

    def embed(self, blocks: Iterable[ContextBlock]) -> np.ndarray:
        """Unit vectors of `blocks` (each content embedded once per tree, in one batch)."""
        blocks = list(blocks)
        missing = list({b.content_hash: b.content for b in blocks if b.content_hash not in self.vectors}.items())
        if missing:
            fresh = normalize(self.embedder.embed([text for _, text in missing]))
            for (digest, _), vec in zip(missing, fresh):
                self.vectors[digest] = vec
        dim = next(iter(self.vectors.values())).shape[0] if self.vectors else 1
        return np.stack([self.vectors[b.content_hash] for b in blocks]) if blocks else np.zeros((0, dim), np.float32)


class _View:
    """A scope's visible blocks as an assembler-ready store, grown in place while blocks
    are only added, rebuilt when one is retired or replaced."""

    def __init__(self, tree: _Tree, name: str) -> None:
        self.tree = tree
        where = Namespace(tenant=tree.tenant, session=name)  # fields, never a joined string
        self.tenant, self.summary_tenant = where.key, where.with_kind(Kind.SUMMARIES).key
        self.ids: list[str] = []
        self.store = LocalColdStore()
        self.summaries: list[Any] = []
        self.assembler = ContextAssembler(counter=tree.counter, embedder=tree.embedder, store=self.store,
                                          scorer=tree.scorer, compressor=tree.compressor)

    def sync(self, visible: list[ContextBlock]) -> None:
        ids = [b.id for b in visible]
        if ids[: len(self.ids)] != self.ids:
            self.store, self.ids, self.summaries = LocalColdStore(), [], []
        fresh = visible[len(self.ids):]
        if not fresh:
            return
        items = [b.to_item(seq=len(self.ids) + k) for k, b in enumerate(fresh)]
        pairs = list(zip(items, self.tree.embed(fresh)))
        turns = [(i, v) for i, v in pairs if not i.is_derived]
        sums = [(i, v) for i, v in pairs if i.is_derived]
        if turns:
            self.store.add(self.tenant, [i for i, _ in turns], np.stack([v for _, v in turns]))
        if sums:
            self.store.add(self.summary_tenant, [i for i, _ in sums], np.stack([v for _, v in sums]))
            self.summaries.extend(i for i, _ in sums)
        self.ids.extend(ids[len(self.ids):])
