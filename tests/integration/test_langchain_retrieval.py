"""`TieredRetriever`, `TieredDocumentCompressor` in a real `ContextualCompressionRetriever`,
the embeddings adapters, and the import guards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from tiered_context import TieredContext, TokenCounter  # noqa: E402
from tiered_context.langchain import TieredDocumentCompressor  # noqa: E402
from tiered_context.langchain import LangChainEmbedder, TieredEmbeddings  # noqa: E402
from tiered_context.langchain import TieredRetriever  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

FILLER = "The quarterly report discusses revenue growth in region {i}, the hiring plan and office moves. "


def _docs(n=40):
    docs = [Document(page_content=f"Report {i}. " + FILLER.format(i=i) * 4, metadata={"n": i}, id=f"d{i}") for i in range(n)]
    docs.insert(n // 2, Document(page_content="The Lisbon launch moved to 3 May after the supplier delay.",
                                 metadata={"n": 99, "source": "memo"}, id="lisbon"))
    return docs


def _compression_retriever(max_tokens=300, k=20):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_classic.retrievers import ContextualCompressionRetriever
    store = InMemoryVectorStore(embedding=TieredEmbeddings(HashEmbedder()))
    store.add_documents(_docs())
    compressor = TieredDocumentCompressor(max_tokens=max_tokens, embedder=HashEmbedder())
    return ContextualCompressionRetriever(base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": k}))


def test_contextual_compression_retriever_packs_into_the_budget():
    retriever = _compression_retriever()
    docs = retriever.invoke("When is the Lisbon launch?")
    counter = TokenCounter()
    assert sum(counter.count(d.page_content) for d in docs) <= 300
    assert any(d.id == "lisbon" and "3 May" in d.page_content for d in docs)
    lisbon = next(d for d in docs if d.id == "lisbon")
    assert lisbon.metadata["source"] == "memo" and lisbon.metadata["tiered_context"]["origin_ids"] == ["doc:lisbon"]
    assert len(docs) > 300 // 80  # compressed forms let more documents in than their full texts would
    assert any(d.metadata["tiered_context"]["compressed"] for d in docs)
    async_docs = asyncio.run(retriever.ainvoke("When is the Lisbon launch?"))
    assert [d.id for d in async_docs] == [d.id for d in docs]


def test_compressor_keeps_input_order_and_handles_edge_cases():
    compressor = TieredDocumentCompressor(max_tokens=2000, embedder=HashEmbedder())
    docs = [Document(page_content=f"short doc {i}", id=f"s{i}") for i in range(5)]
    out = compressor.compress_documents(docs, "doc 3")
    assert [d.id for d in out] == [d.id for d in docs]  # all fit: nothing dropped, order kept
    assert all(d.page_content == o.page_content for d, o in zip(docs, out))
    assert compressor.compress_documents([], "q") == []
    assert compressor.compress_documents([Document(page_content="  ")], "q") == []
    top = TieredDocumentCompressor(max_tokens=2000, k=2, embedder=HashEmbedder()).compress_documents(docs, "short doc 3")
    assert len(top) == 2 and "s3" in {d.id for d in top}


def test_retriever_budget_k_and_async():
    retriever = TieredRetriever.from_documents(_docs(), max_tokens=400, embedder=HashEmbedder())
    docs = retriever.invoke("When is the Lisbon launch?")
    assert docs[0].id == "lisbon"  # ranked by value
    assert sum(TokenCounter().count(d.page_content) for d in docs) <= 400
    assert len(retriever.invoke("Lisbon launch", k=3)) == 3
    assert len(asyncio.run(retriever.ainvoke("Lisbon launch", k=2))) == 2
    chrono = TieredRetriever(context=retriever.context, max_tokens=400, order="chronological").invoke("Lisbon launch")
    ns = [d.metadata["tiered_context"]["timestamp"] for d in chrono]
    assert ns == sorted(ns)


def test_retriever_over_a_chat_memory_and_traced():
    class Collect(BaseCallbackHandler):
        def __init__(self):
            self.names, self.outputs = [], []

        def on_chain_start(self, serialized, inputs, *, name=None, **kw):
            self.names.append(name)

        def on_chain_end(self, outputs, **kw):
            self.outputs.append(outputs)

    ctx = TieredContext(session_id="chat", embedder=HashEmbedder())
    ctx.put("We moved the Lisbon launch to 3 May.", role="user")
    ctx.put("Noted.", role="assistant")
    handler = Collect()
    docs = TieredRetriever(context=ctx, max_tokens=200).invoke("Lisbon launch", config={"callbacks": [handler]})
    assert docs[0].metadata["tiered_context"]["role"] == "user"
    assert "TieredContextAssembly" in handler.names
    assert handler.outputs[-1]["assembled_tokens"] <= 200


def test_langchain_embeddings_as_the_core_embedder():
    embedder = LangChainEmbedder(DeterministicFakeEmbedding(size=32))
    assert embedder.dim == 32
    assert embedder.embed(["a", "b"]).shape == (2, 32) and embedder.embed([]).shape == (0, 32)
    assert asyncio.run(embedder.aembed(["a"])).shape == (1, 32)
    ctx = TieredContext(session_id="lc-emb", embedder=embedder)
    ctx.put("The Lisbon launch moved to 3 May.")
    assert "3 May" in ctx.assemble("Lisbon launch", budget=100).text
    # a LangChain Embeddings is wrapped automatically wherever the adapters take embedder=
    retriever = TieredRetriever.from_documents(_docs(5), embedder=DeterministicFakeEmbedding(size=16))
    assert retriever.invoke("Lisbon")


def test_offline_default_embeddings():
    emb = TieredEmbeddings()
    q = emb.embed_query("When is the Lisbon launch?")
    d = emb.embed_documents(["The Lisbon launch moved to 3 May.", "Pastries and trams."])
    assert len(q) == 256 and all(isinstance(x, float) for x in q[:3])
    sims = np.asarray(d) @ np.asarray(q)
    assert sims[0] > sims[1]
    assert asyncio.run(emb.aembed_query("x")) == emb.embed_query("x")


@pytest.mark.parametrize("module", ["", "._middleware", "._history", "._retriever", "._compressor", "._classic",
                                    "._embeddings"])
def test_import_guard_names_the_extra(module):
    code = (
        "import sys\n"
        "for name in ('langchain', 'langchain_core', 'langchain_classic', 'langgraph'):\n"
        "    sys.modules[name] = None\n"
        f"try:\n    import tiered_context.langchain{module}\n    from tiered_context.langchain import *\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "DependencyError" in out.stdout and 'pip install "tiered-context[langchain]"' in out.stdout, out.stderr
