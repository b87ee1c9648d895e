"""Node postprocessors, `TieredRetriever` and embeddings, in real LlamaIndex pipelines."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode  # noqa: E402

from tiered_context import Embedder, TieredContext, TokenCounter, WordLlamaEmbedder  # noqa: E402
from tiered_context.llama_index import LlamaIndexEmbedder, TieredEmbedding  # noqa: E402
from tiered_context.llama_index import TieredMemory  # noqa: E402
from tiered_context.llama_index._postprocessors import PROVENANCE_KEYS
from tiered_context.llama_index import CompressionPostprocessor, PriorityPostprocessor, TokenBudgetPostprocessor
from tiered_context.llama_index import TieredRetriever  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

COUNTER = TokenCounter()
LONG = ("The quarterly planning offsite will take place in Lisbon on 3 May. The team discussed at some length "
        "whether the venue near the river would be suitable, whether the catering should be fully vegetarian, "
        "and how the agenda could be shortened so that everybody gets home before the evening traffic starts.")


def nws(text: str, score: float | None, id_: str, **meta) -> NodeWithScore:
    return NodeWithScore(node=TextNode(text=text, id_=id_, metadata=meta), score=score)


def run(coro):
    return asyncio.run(coro)


# -- budget packer -----------------------------------------------------------------------
def test_budget_packer_keeps_best_value_per_token_and_dedupes():
    nodes = [
        nws(LONG, 0.9, "long"),
        nws(LONG.replace("Lisbon", "Lisbon,"), 0.85, "near-duplicate"),
        nws("Lisbon launch: 3 May.", 0.8, "short"),
        nws("Unrelated note about printers.", 0.1, "low"),
    ]
    packer = TokenBudgetPostprocessor(token_limit=COUNTER.count(LONG) + 12)
    out = packer.postprocess_nodes(nodes, query_str="when is the launch?")
    ids = [n.node.node_id for n in out]
    assert "near-duplicate" not in ids
    assert ids[:2] == ["long", "short"]  # best score first, both fit
    assert sum(COUNTER.count(n.node.get_content(metadata_mode=MetadataMode.LLM)) + 1 for n in out) <= packer.token_limit
    assert run(packer.apostprocess_nodes(nodes, query_str="x")) == out


def test_budget_packer_prefers_value_density_when_tight():
    nodes = [nws(LONG, 0.9, "long"), nws("Lisbon launch: 3 May.", 0.8, "short"), nws("Venue: river.", 0.5, "tiny")]
    out = TokenBudgetPostprocessor(token_limit=30).postprocess_nodes(nodes)
    assert [n.node.node_id for n in out] == ["short", "tiny"]
    assert TokenBudgetPostprocessor(token_limit=5).postprocess_nodes([]) == []


# -- compressor --------------------------------------------------------------------------
def test_compressor_shortens_keeps_scores_order_and_provenance():
    nodes = [nws(LONG, 0.7, "a", source="notes.md"), nws("Short one.", 0.5, "b")]
    out = CompressionPostprocessor(ratio=0.5).postprocess_nodes(nodes)
    assert [n.score for n in out] == [0.7, 0.5]
    compressed, untouched = out[0].node, out[1].node
    assert untouched.node_id == "b"
    assert compressed.node_id == "a~L2" and compressed.metadata["tiered_context_source_id"] == "a"
    assert compressed.metadata["source"] == "notes.md"
    assert compressed.metadata["tiered_context_tokens"] < compressed.metadata["tiered_context_original_tokens"]
    assert "Lisbon" in compressed.text and "3 May" in compressed.text
    llm_view = compressed.get_content(metadata_mode=MetadataMode.LLM)
    assert not any(k in llm_view for k in PROVENANCE_KEYS)
    assert nodes[0].node.text == LONG  # the input nodes are not modified
    again = run(CompressionPostprocessor(ratio=0.5).apostprocess_nodes(nodes))
    assert again[0].node.text == compressed.text


def test_compressor_token_budget_picks_the_ratio():
    nodes = [nws(LONG, 0.7, "a"), nws(LONG + " Again.", 0.6, "b")]
    total = sum(COUNTER.count(n.node.text) for n in nodes)
    out = CompressionPostprocessor(token_limit=total // 2, min_tokens=0).postprocess_nodes(nodes)
    assert sum(COUNTER.count(n.node.text) for n in out) < total * 0.75
    assert CompressionPostprocessor(token_limit=total * 2).postprocess_nodes(nodes) == nodes


# -- priority ----------------------------------------------------------------------------
def test_priority_combines_relevance_recency_importance_and_learns():
    now = 1_714_000_000.0
    nodes = [
        nws("Lisbon launch is on 3 May.", 0.80, "old", timestamp=now - 30 * 86400),
        nws("Lisbon launch moved to 10 May.", 0.78, "new", timestamp=now - 3600),
        nws("ok", 0.2, "chatter", timestamp="2024-03-01T00:00:00+00:00"),
    ]
    priority = PriorityPostprocessor(recency_weight=0.5, now=now)
    out = priority.postprocess_nodes(nodes, query_str="launch date")
    assert [n.node.node_id for n in out][:2] == ["new", "old"]
    assert set(priority.last_parts) == {"old", "new", "chatter"}
    def tilt() -> float:
        w = priority.weights()
        return w["recency"] / max(w["relevance"], 1e-9)

    before = tilt()
    for _ in range(5):
        priority.feedback(out, used=["new"])
    assert tilt() > before  # the user's answers use fresh nodes: recency gains on relevance
    assert [n.node.node_id for n in PriorityPostprocessor(top_n=1, recency_weight=0.0, now=now).postprocess_nodes(nodes)] == ["old"]
    assert [n.node.node_id for n in run(priority.apostprocess_nodes(nodes))][:1] == ["new"]


# -- retriever ---------------------------------------------------------------------------
def kb() -> TieredRetriever:
    ctx = TieredContext(session_id="kb", embedder=HashEmbedder(), compaction="inline")
    retriever = TieredRetriever(ctx, token_limit=120)
    docs = [TextNode(text="The Lisbon launch is on 3 May.", id_="launch", metadata={"file": "plan.md"})]
    docs += [TextNode(text=f"Note {i} about printers, toner and paper jams on floor {i}.", id_=f"n{i}") for i in range(40)]
    retriever.put_nodes(docs)
    return retriever


def test_retriever_sync_and_async_with_provenance():
    retriever = kb()
    nodes = retriever.retrieve("When is the Lisbon launch?")
    assert nodes[0].node.node_id == "launch"
    meta = nodes[0].node.metadata
    assert meta["file"] == "plan.md" and meta["source_node_id"] == "launch"
    assert meta["tier"] in ("L1", "L2", "L3") and meta["origin_ids"] == ["launch"]
    assert all(a.score >= b.score for a, b in zip(nodes, nodes[1:]))
    assert sum(COUNTER.count(n.node.text) for n in nodes) <= 120
    assert [n.node.node_id for n in run(retriever.aretrieve("When is the Lisbon launch?"))] == [n.node.node_id for n in nodes]
    assert "_aretrieve" in TieredRetriever.__dict__
    retriever.feedback([nodes[0]])


def test_retriever_in_a_query_engine_with_all_postprocessors():
    retriever = kb()
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[
        PriorityPostprocessor(), CompressionPostprocessor(ratio=0.6), TokenBudgetPostprocessor(token_limit=80),
    ])
    response = engine.query("When is the Lisbon launch?")
    assert response.source_nodes and response.source_nodes[0].node.metadata.get("source_node_id") == "launch"
    assert sum(COUNTER.count(n.node.get_content(metadata_mode=MetadataMode.LLM)) for n in response.source_nodes) <= 80
    response = run(engine.aquery("When is the Lisbon launch?"))
    assert response.source_nodes


def test_retriever_over_a_tiered_memory_follows_resets():
    memory = TieredMemory.from_defaults(embedder=HashEmbedder(), compaction="inline")
    from llama_index.core.base.llms.types import ChatMessage

    memory.put(ChatMessage(role="user", content="The Lisbon launch is on 3 May."))
    retriever = TieredRetriever(memory, token_limit=100)
    node = retriever.retrieve("Lisbon launch")[0].node
    assert "li_message" not in node.metadata and node.metadata["role"] == "user"
    memory.reset()
    assert retriever.retrieve("Lisbon launch") == []


# -- embeddings --------------------------------------------------------------------------
def test_llama_index_embedding_as_core_embedder():
    embedder = LlamaIndexEmbedder(MockEmbedding(embed_dim=8))
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 8
    assert embedder.embed(["a", "b"]).shape == (2, 8)
    assert run(embedder.aembed(["a"])).shape == (1, 8)
    assert embedder.embed([]).shape == (0, 8)
    ctx = TieredContext(session_id="e", embedder=embedder, compaction="inline")
    ctx.put("The Lisbon launch is on 3 May.")
    assert ctx.assemble("launch", budget=100).items


def test_tiered_embedding_in_a_vector_index_and_round_trip():
    embedding = TieredEmbedding()
    vec = embedding.get_query_embedding("Lisbon launch")
    assert len(vec) == embedding.dim == 256 and abs(np.linalg.norm(vec) - 1) < 1e-5
    assert run(embedding.aget_text_embedding("Lisbon")) == embedding.get_text_embedding("Lisbon")
    index = VectorStoreIndex.from_documents(
        [Document(text="The Lisbon launch is on 3 May."), Document(text="Printers jam on floor two.")], embed_model=embedding,
    )
    top = index.as_retriever(similarity_top_k=1).retrieve("When is the Lisbon launch?")
    assert "Lisbon" in top[0].node.get_content()
    back = LlamaIndexEmbedder(embedding)  # the core's default, through LlamaIndex and back
    np.testing.assert_allclose(back.embed(["Lisbon launch"])[0], WordLlamaEmbedder().embed(["Lisbon launch"])[0], atol=1e-5)
    memory = TieredMemory.from_defaults(embed_model=MockEmbedding(embed_dim=4), compaction="inline")
    assert isinstance(memory.embedder, LlamaIndexEmbedder)
    assert TieredEmbedding(embedder=HashEmbedder(dim=16)).get_text_embedding("x") is not None
    assert QueryBundle("x").query_str == "x"


def test_postprocessors_in_a_vector_memory_block():
    """`VectorMemoryBlock(node_postprocessors=[...])` inside LlamaIndex's `Memory`: the
    retrieved memory is re-scored, compressed (provenance kept) and packed to budget."""
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.memory import Memory, VectorMemoryBlock

    from tiered_context.evals.baselines import _text_vector_store

    class Seen(TokenBudgetPostprocessor):
        """The packer, remembering what reached it (the block only returns text)."""

        def _postprocess_nodes(self, nodes, query_bundle=None):
            out = super()._postprocess_nodes(nodes, query_bundle)
            self.__dict__.setdefault("_seen", []).append(out)
            return out

    packer = Seen(token_limit=150)
    block = VectorMemoryBlock(  # window 2: the question and the latest message are the query
        name="retrieved", vector_store=_text_vector_store(), embed_model=TieredEmbedding(), similarity_top_k=8,
        retrieval_context_window=2,
        node_postprocessors=[PriorityPostprocessor(), CompressionPostprocessor(ratio=0.5, min_tokens=8), packer],
    )
    memory = Memory.from_defaults(session_id="vm", token_limit=400, chat_history_token_ratio=0.5,
                                  token_flush_size=60, memory_blocks=[block])
    turns = [f"Turn {i}: we discussed the museum schedule, the tram passes and the pastry tour in detail."
             for i in range(30)]
    turns[5] = "My passport number is X1234567 and it expires in March, please remember it for the booking."
    turns.append("What is my passport number?")  # the query is the latest message and the input
    memory.put_messages([ChatMessage(role="user" if i % 2 == 0 else "assistant", content=t) for i, t in enumerate(turns)])
    messages = memory.get(input="What is my passport number?")
    assert any("X1234567" in (b.text if hasattr(b, "text") else "") for m in messages for b in m.blocks)
    packed = packer.__dict__["_seen"][-1]
    assert packed and sum(COUNTER.count(n.node.get_content(metadata_mode=MetadataMode.LLM)) for n in packed) <= 150
    compressed = [n for n in packed if n.node.metadata.get("tiered_context_source_id")]
    assert compressed and all(set(PROVENANCE_KEYS) <= n.node.metadata.keys() for n in compressed)
