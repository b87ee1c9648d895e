"""Embeddings both ways: any LangChain `Embeddings` as the core embedder, and the core's
offline embedder as a LangChain `Embeddings`.

```python
from langchain_core.embeddings import DeterministicFakeEmbedding
from tiered_context import TieredContext
from tiered_context.langchain._embeddings import LangChainEmbedder, TieredEmbeddings

ctx = TieredContext(session_id="s1", embedder=LangChainEmbedder(DeterministicFakeEmbedding(size=64)))
emb = TieredEmbeddings()              # WordLlama, 256-d, weights inside its wheel: offline
emb.embed_query("when is the launch?")  # list[float]
```
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiered_context.errors import ConfigError, missing_extra

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain-core", "langchain") from exc

from tiered_context.core import Embedder, WordLlamaEmbedder, WrappedEmbedder

__all__ = ["LangChainEmbedder", "TieredEmbeddings", "as_embedder"]


class LangChainEmbedder(WrappedEmbedder):
    """The core `Embedder` protocol over any LangChain `Embeddings`.

    Setup::

        from langchain_openai import OpenAIEmbeddings      # or any Embeddings
        embedder = LangChainEmbedder(OpenAIEmbeddings())
        ctx = TieredContext(session_id="s1", embedder=embedder)

    Documents and queries both go through ``embed_documents`` (the core has one
    ``embed`` for both); ``dim`` is measured with one probe call unless given.
    """

    def __init__(self, embeddings: Embeddings, *, dim: int | None = None) -> None:
        if not hasattr(embeddings, "embed_documents"):
            raise ConfigError(f"expected a LangChain Embeddings, got {type(embeddings).__name__}")
        super().__init__(dim)
        self.embeddings = embeddings

    @property
    def _source(self) -> object:
        return self.embeddings

    def _probe(self) -> list[float]:
        return self.embeddings.embed_query("dimension probe")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self._array(self.embeddings.embed_documents(texts) if texts else [], len(texts))

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self._array(await self.embeddings.aembed_documents(texts) if texts else [], len(texts))

    def __repr__(self) -> str:
        return f"LangChainEmbedder({type(self.embeddings).__name__})"


class TieredEmbeddings(Embeddings):
    """A LangChain `Embeddings` over a core embedder: by default the offline WordLlama one.

    Setup and use::

        emb = TieredEmbeddings()                     # WordLlama 256-d, no download, no key
        emb.embed_documents(["a", "b"])              # [[...256 floats], [...]]
        InMemoryVectorStore(embedding=emb)           # anywhere LangChain takes Embeddings

    Pass ``embedder=`` for another core embedder (``MiniLMEmbedder()``, a test fake).
    """

    def __init__(self, embedder: Embedder | None = None, *, dim: int = 256) -> None:
        self.embedder: Embedder = embedder if embedder is not None else WordLlamaEmbedder(dim=dim)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return np.asarray(self.embedder.embed(list(texts)), dtype=np.float64).tolist()

    def embed_query(self, text: str) -> list[float]:
        return np.asarray(self.embedder.embed([text]), dtype=np.float64)[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        aembed = getattr(self.embedder, "aembed", None)
        rows = await aembed(list(texts)) if aembed is not None else await asyncio.to_thread(self.embedder.embed, list(texts))
        return np.asarray(rows, dtype=np.float64).tolist()

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]

    def __repr__(self) -> str:
        return f"TieredEmbeddings({self.embedder!r})"


def as_embedder(value: Any) -> Embedder | None:
    """`value` as a core embedder: LangChain `Embeddings` are wrapped, None stays None."""
    if value is None:
        return None
    if isinstance(value, TieredEmbeddings):
        return value.embedder
    if isinstance(value, Embeddings) or (hasattr(value, "embed_documents") and not hasattr(value, "embed")):
        return LangChainEmbedder(value)
    return value
