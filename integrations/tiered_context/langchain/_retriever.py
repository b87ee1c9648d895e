"""`TieredRetriever`: a LangChain `BaseRetriever` over the tiers of a `TieredContext`.

```python
from tiered_context.langchain._retriever import TieredRetriever
retriever = TieredRetriever.from_documents(docs, max_tokens=1500)   # or TieredRetriever(context=ctx)
retriever.invoke("when is the launch?")          # Documents, together <= 1500 tokens
retriever.invoke("when is the launch?", k=3)     # at most the 3 most valuable
```
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from tiered_context.errors import missing_extra

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, Field, field_validator
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain-core", "langchain") from exc

from tiered_context.core import AssembledContext, Budget, Compaction, MemoryConfig, TieredContext
from tiered_context.errors import ConfigError, positive_int
from tiered_context.langchain._convert import document_to_item, item_to_document
from tiered_context.langchain._trace import assembly_run, report_outputs
from tiered_context.langchain._embeddings import as_embedder

__all__ = ["TieredRetriever"]


class TieredRetriever(BaseRetriever):
    """Retrieves from every tier (L1 recent, L2 compressed, L3 archive) under a token budget.

    Setup::

        retriever = TieredRetriever(context=ctx, max_tokens=1500)      # over an existing memory
        retriever = TieredRetriever.from_documents(docs, max_tokens=1500, embedder=my_embeddings)

    Use: ``retriever.invoke(query)`` (or ``ainvoke``); ``k=`` and ``max_tokens=`` may be
    passed per call. The result: the most valuable items for the query (hybrid BM25 +
    dense relevance, recency, importance, learned preference), their texts together within
    ``max_tokens``, a compressed form where that lets more evidence fit. Each Document
    keeps its original metadata and id and gains ``metadata["tiered_context"]`` (tier,
    compressed, origin ids, score parts, tokens). ``order="relevance"`` (default) ranks
    them by value; ``"chronological"`` keeps the order they were stored in.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    context: TieredContext = Field(default_factory=lambda: TieredContext(session_id="documents"))
    max_tokens: int = 2000
    k: int | None = None
    order: Literal["relevance", "chronological"] = "relevance"

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int) -> int:
        return positive_int("max_tokens", value)

    @field_validator("k")
    @classmethod
    def _k(cls, value: int | None) -> int | None:
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise ConfigError(f"k must be a positive int or None, got {value!r}")
        return value

    @classmethod
    def from_documents(cls, documents: Iterable[Document], *, session_id: str = "documents", embedder: Any = None,
                       max_tokens: int = 2000, k: int | None = None, **kwargs: Any) -> "TieredRetriever":
        """A retriever over a fresh in-memory context holding `documents`."""
        config = MemoryConfig(embedder=as_embedder(embedder), budget=Budget(max_tokens=max_tokens),
                              compaction=Compaction.INLINE)
        ctx = TieredContext(config=config, session_id=session_id)
        retriever = cls(context=ctx, max_tokens=max_tokens, k=k, **kwargs)
        retriever.add_documents(documents)
        return retriever

    def add_documents(self, documents: Iterable[Document]) -> list[str]:
        """Store `documents` (one batch); returns the item ids."""
        items = [i for d in documents if (i := document_to_item(d)) is not None]
        return [i.id for i in self.context.put_many(items)] if items else []

    async def aadd_documents(self, documents: Iterable[Document]) -> list[str]:
        items = [i for d in documents if (i := document_to_item(d)) is not None]
        return [i.id for i in await self.context.aput_many(items)] if items else []

    def _documents(self, out: AssembledContext, k: int | None) -> list[Document]:
        scores = out.report.scores
        ranked = sorted(range(len(out.items)), key=lambda n: -float((scores.get(out.items[n].origin_ids[0]) or {}).get("value", 0.0)))
        if k is not None:
            ranked = ranked[:k]
        if self.order == "chronological":
            ranked.sort()
        return [item_to_document(out.items[n], score=scores.get(out.items[n].origin_ids[0])) for n in ranked]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, max_tokens: int | None = None) -> list[Document]:
        budget = max_tokens or self.max_tokens
        with assembly_run(run_manager.get_child(), {"query": query, "max_tokens": budget}) as run:
            out = self.context.assemble(query, budget=budget)
            docs = self._documents(out, k or self.k)
            run.outputs = {"documents": len(docs), **report_outputs(out)}
        return docs

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: int | None = None, max_tokens: int | None = None) -> list[Document]:
        budget = max_tokens or self.max_tokens
        with assembly_run(run_manager.get_child(), {"query": query, "max_tokens": budget}) as run:
            out = await self.context.aassemble(query, budget=budget)
            docs = self._documents(out, k or self.k)
            run.outputs = {"documents": len(docs), **report_outputs(out)}
        return docs
