"""LangChain's standard suites (langchain-tests) against the adapters they cover, offline.

* `RetrieversIntegrationTests` -> `TieredRetriever` over a pre-filled in-memory context.
* `EmbeddingsUnitTests` and `EmbeddingsIntegrationTests` -> `TieredEmbeddings` (the offline
  WordLlama embedder, whose weights ship in its wheel, so the "integration" suite runs
  offline too) and `TieredEmbeddings(HashEmbedder())`.
* `SyncCacheTestSuite` and `AsyncCacheTestSuite` -> `TieredSemanticCache` over the
  embedded-Qdrant `SemanticCache` (a fresh directory per test; exact-match threshold so
  the suites' "miss" prompts stay misses).
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")
pytest.importorskip("pytest_asyncio")

import pytest_asyncio  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import (  # noqa: E402
    AsyncCacheTestSuite,
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    SyncCacheTestSuite,
)
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from tiered_context import Budget, TieredContext  # noqa: E402
from tiered_context.langchain import TieredEmbeddings  # noqa: E402
from tiered_context.langchain import TieredRetriever  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

# the suites' async tests carry no marker of their own (partners run asyncio_mode=auto)
pytestmark = [pytest.mark.asyncio(loop_scope="function"),
              pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")]


def _filled_context() -> TieredContext:
    ctx = TieredContext(session_id="standard", embedder=HashEmbedder(), budget=Budget(max_tokens=2000), compaction="inline")
    topics = ["launch dates", "office moves", "hiring plans", "supplier delays", "travel budgets", "quarterly revenue"]
    retriever = TieredRetriever(context=ctx)
    retriever.add_documents(
        Document(page_content=f"Memo {i} about {topics[i % len(topics)]}: the team agreed on item {i}.", id=f"m{i}")
        for i in range(24)
    )
    return ctx


class TestTieredRetrieverStandard(RetrieversIntegrationTests):
    _ctx = None

    @property
    def retriever_constructor(self) -> type[TieredRetriever]:
        return TieredRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        if TestTieredRetrieverStandard._ctx is None:
            TestTieredRetrieverStandard._ctx = _filled_context()
        return {"context": TestTieredRetrieverStandard._ctx, "max_tokens": 1000}

    @property
    def retriever_query_example(self) -> str:
        return "when did the team agree on the launch dates?"


class TestTieredEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[TieredEmbeddings]:
        return TieredEmbeddings


class TestTieredEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[TieredEmbeddings]:
        return TieredEmbeddings


class TestHashEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[TieredEmbeddings]:
        return TieredEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"embedder": HashEmbedder()}


def _semantic_cache(path):
    pytest.importorskip("qdrant_edge")
    from tiered_context.langchain import TieredSemanticCache
    from tiered_context.qdrant import SemanticCache

    return TieredSemanticCache(SemanticCache(path, embedder=HashEmbedder(), threshold=0.999), tenant="standard")


class TestTieredSemanticCacheSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, tmp_path):
        return _semantic_cache(tmp_path / "cache")


class TestTieredSemanticCacheAsync(AsyncCacheTestSuite):
    @pytest_asyncio.fixture
    async def cache(self, tmp_path):
        return _semantic_cache(tmp_path / "cache")
