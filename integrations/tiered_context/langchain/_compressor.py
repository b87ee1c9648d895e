"""`TieredDocumentCompressor`: budget packing + compression as a `BaseDocumentCompressor`.

```python
from langchain_classic.retrievers import ContextualCompressionRetriever
from tiered_context.langchain._compressor import TieredDocumentCompressor

retriever = ContextualCompressionRetriever(
    base_compressor=TieredDocumentCompressor(max_tokens=1000),
    base_retriever=vectorstore.as_retriever(search_kwargs={"k": 30}),
)
```
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain_core.callbacks import BaseCallbackManager, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, PrivateAttr, field_validator
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain-core", "langchain") from exc

from tiered_context.core import (
    AssembledContext,
    Budget,
    Compaction,
    Compressor,
    Embedder,
    LocalColdStore,
    MemoryConfig,
    ScoringConfig,
    TieredContext,
    TokenCounter,
    WordLlamaEmbedder,
)
from tiered_context.errors import ConfigError, positive_int
from tiered_context.langchain._convert import document_to_item, item_to_document
from tiered_context.langchain._trace import assembly_run, report_outputs
from tiered_context.langchain._embeddings import as_embedder

__all__ = ["TieredDocumentCompressor"]

#: Documents from a retriever have no history: no recency, no neighbour inheritance.
DOCUMENT_SCORING = ScoringConfig(recency_weight=0.0, neighbour_decay=0.0, neighbour_window=0)


class TieredDocumentCompressor(BaseDocumentCompressor):
    """Keeps the documents (or their compressed forms) worth their tokens for a query.

    Setup::

        compressor = TieredDocumentCompressor(max_tokens=1000)                   # offline defaults
        compressor = TieredDocumentCompressor(max_tokens=1000, embedder=my_embeddings, k=8)

    Use: ``compressor.compress_documents(docs, query)`` (or ``acompress_documents``), or
    as ``base_compressor`` of `ContextualCompressionRetriever`. Result: documents whose
    texts together fit ``max_tokens`` (exact counts with the core `TokenCounter`), scored
    by hybrid relevance (BM25 + dense) and importance. When the input is over budget,
    the least valuable documents are compressed first (self-information: numbers, names
    and quoted spans stay; ``compression_ratio`` of the tokens kept), and the most
    valuable are upgraded back to their full text while the budget lasts. Documents keep
    their input order, metadata and id; ``metadata["tiered_context"]`` says what was done.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    max_tokens: int = 1000
    k: int | None = None
    compression_ratio: float = 0.5
    embedder: Any = None
    counter: Any = None
    compressor: Any = None
    scoring: ScoringConfig = DOCUMENT_SCORING
    _embedder: Embedder | None = PrivateAttr(default=None)
    _counter: TokenCounter | None = PrivateAttr(default=None)

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int) -> int:
        return positive_int("max_tokens", value)

    @field_validator("compression_ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if not 0.05 <= value <= 1.0:
            raise ConfigError(f"compression_ratio must be in [0.05, 1.0], got {value}")
        return value

    def _context(self, budget: int) -> TieredContext:
        if self._embedder is None:
            self._embedder = as_embedder(self.embedder) or WordLlamaEmbedder()
        if self._counter is None:
            self._counter = self.counter or TokenCounter()
        compressor: Compressor | None = self.compressor
        config = MemoryConfig(
            store=LocalColdStore(), embedder=self._embedder, counter=self._counter, compressor=compressor,
            scoring=self.scoring, compaction=Compaction.INLINE,
            # compress as soon as the documents exceed the budget, keep no "recent" ones
            budget=Budget(max_tokens=budget, working_set_tokens=max(1, budget // 2),
                          compression_ratio=self.compression_ratio, recent_items=0, prune_at=1000.0),
        )
        return TieredContext(config=config, session_id=f"compress-{uuid.uuid4().hex}")

    def _pack(self, documents: Sequence[Document], query: str, budget: int) -> tuple[list[Document], AssembledContext | None]:
        seen: set[str] = set()
        items = []
        for n, doc in enumerate(documents):
            if doc.id is not None and doc.id in seen:
                continue
            if doc.id is not None:
                seen.add(doc.id)
            item = document_to_item(doc, position=n, timestamp=float(n))
            if item is not None:
                items.append(item)
        if not items:
            return [], None
        ctx = self._context(budget)
        try:
            ctx.put_many(items)
            out = ctx.assemble(query, budget=budget)
        finally:
            ctx.close()
        scores = out.report.scores
        chosen = list(range(len(out.items)))
        if self.k is not None:
            chosen = sorted(chosen, key=lambda n: -float((scores.get(out.items[n].origin_ids[0]) or {}).get("value", 0.0)))[: self.k]
            chosen.sort()
        docs = [item_to_document(out.items[n], score=scores.get(out.items[n].origin_ids[0]),
                                 tokens=self._counter.count(out.items[n].text) if self._counter else None) for n in chosen]
        return docs, out

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None) -> Sequence[Document]:
        config = callbacks if isinstance(callbacks, BaseCallbackManager) else ({"callbacks": callbacks} if callbacks else None)
        with assembly_run(config, {"query": query, "documents": len(documents), "max_tokens": self.max_tokens}) as run:
            docs, out = self._pack(documents, query, self.max_tokens)
            run.outputs = {"documents": len(docs), **report_outputs(out)}
        return docs

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        import asyncio

        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)
