"""Embeddings both ways: any LlamaIndex `BaseEmbedding` as the core's `Embedder`, and the
core's offline embedders as a LlamaIndex `BaseEmbedding`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, List, Optional

import numpy as np

from tiered_context.errors import ConfigError, missing_extra

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core import Embedder, WrappedEmbedder

__all__ = ["LlamaIndexEmbedder", "TieredEmbedding"]


class LlamaIndexEmbedder(WrappedEmbedder):
    """Any LlamaIndex embedding model as the core's `Embedder`.

    Setup and use::

        from llama_index.embeddings.huggingface import HuggingFaceEmbedding  # any BaseEmbedding
        ctx = TieredContext(session_id="s1", embedder=LlamaIndexEmbedder(HuggingFaceEmbedding(...)))
        memory = TieredMemory.from_defaults(embed_model=my_embedding)   # wraps it for you

    `embed` uses the model's batched text embeddings (its batch size, cache and rate
    limiter apply); `aembed` its native async path. `dim` is probed with one call the
    first time it is read, unless given. The core embeds queries and stored texts alike,
    so models with a separate query instruction get the text form for both.
    """

    def __init__(self, embed_model: BaseEmbedding, *, dim: Optional[int] = None) -> None:
        if not isinstance(embed_model, BaseEmbedding):
            raise ConfigError(f"expected a llama_index BaseEmbedding, got {type(embed_model).__name__}")
        super().__init__(dim)
        self.embed_model = embed_model

    @property
    def _source(self) -> object:
        return self.embed_model

    def _probe(self) -> List[float]:
        return self.embed_model.get_text_embedding("dimension probe")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        rows = self.embed_model.get_text_embedding_batch(texts) if texts else []
        return self._array(rows, len(texts))

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        rows = await self.embed_model.aget_text_embedding_batch(texts) if texts else []
        return self._array(rows, len(texts))

    def __repr__(self) -> str:
        return f"LlamaIndexEmbedder({self.embed_model.class_name()}:{self.embed_model.model_name})"


class TieredEmbedding(BaseEmbedding):
    """The package's offline embedder (WordLlama, 256-d, weights in its wheel; or any core
    `Embedder`) as a LlamaIndex embedding model.

    Setup and use::

        from llama_index.core import Settings, VectorStoreIndex
        Settings.embed_model = TieredEmbedding()          # offline, no model hub
        index = VectorStoreIndex.from_documents(docs)
        TieredEmbedding(embedder=MiniLMEmbedder())        # the [minilm] extra

    Vectors are unit length; sync calls embed in-process, async ones off the event loop.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model_name: str = Field(default="wordllama-256")
    embedder: Optional[Any] = Field(default=None, exclude=True, description="A core Embedder (default WordLlama).")

    _core: Embedder = PrivateAttr()

    def model_post_init(self, __context: Any) -> None:
        if self.embedder is None:
            from tiered_context.core import WordLlamaEmbedder

            self.embedder = WordLlamaEmbedder()
        elif self.model_name == "wordllama-256":
            self.model_name = repr(self.embedder)
        self._core = self.embedder

    @classmethod
    def class_name(cls) -> str:
        return "TieredEmbedding"

    @property
    def dim(self) -> int:
        return int(self._core.dim)

    def _rows(self, vectors: np.ndarray) -> List[List[float]]:
        from tiered_context.core import normalize

        return normalize(vectors).astype(float).tolist()

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._rows(self._core.embed([query]))[0]

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return self._rows(await self._core.aembed([query]))[0]

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._rows(self._core.embed([text]))[0]

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return self._rows(await self._core.aembed([text]))[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._rows(self._core.embed(texts)) if texts else []

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._rows(await self._core.aembed(texts)) if texts else []
