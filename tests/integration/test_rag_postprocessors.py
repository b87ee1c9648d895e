"""Postprocessors a RAG user can trust (issue 14, item 5): the packer never drops the
best node that fits, compression is query-aware and keeps "[date] Speaker:", one name
for the limit (`token_limit`; `token_budget` deprecated), and the README recipe inside a
real `VectorStoreIndex` query engine (offline: MockEmbedding, MockLLM)."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, MockEmbedding, VectorStoreIndex  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode  # noqa: E402

from tiered_context import TieredContext  # noqa: E402
from tiered_context import SelfInformationCompressor  # noqa: E402
from tiered_context import TokenCounter  # noqa: E402
from tiered_context.llama_index import (  # noqa: E402
    CompressionPostprocessor,
    PriorityPostprocessor,
    TieredRetriever,
    TokenBudgetPostprocessor,
)
from tiered_context.testing import HashEmbedder  # noqa: E402

COUNTER = TokenCounter()
OFFICE = ("The Lisbon office opens on 3 May with a budget of 40,000 euros for the first year. "
          "The office manager is Ines Carvalho, who joined us from the Porto team last year.")


def cost(node: TextNode) -> int:
    return COUNTER.count(node.get_content(metadata_mode=MetadataMode.LLM)) + 1


def test_the_packer_never_drops_the_best_node_that_fits():
    """The issue's repro: token_budget=60 dropped the best node (0.466, the answer) and
    kept 0.40 and 0.134."""
    best = TextNode(text="The answer: the office manager of the new Lisbon office is Ines Carvalho, since 3 May, "
                         "reporting to the Porto team lead.")
    nodes = [NodeWithScore(node=best, score=0.466),
             NodeWithScore(node=TextNode(text="Lisbon is sunny most of the year, with mild winters and long, dry "
                                             "summers by the sea and the river."), score=0.40),
             NodeWithScore(node=TextNode(text="Porto has trains."), score=0.134)]
    assert cost(best) <= 60 < cost(best) + cost(nodes[1].node) + cost(nodes[2].node)
    density = [n.score / cost(n.node) for n in nodes]
    assert density[0] < min(density[1:])  # by score per token alone, the best node would go
    out = TokenBudgetPostprocessor(token_limit=60).postprocess_nodes(nodes)
    assert out[0].node.node_id == best.node_id
    assert sum(cost(n.node) for n in out) <= 60


def test_the_packer_still_fills_the_room_by_value_per_token():
    nodes = [NodeWithScore(node=TextNode(text=f"note {i} " + "word " * (5 + i)), score=1.0 - i / 10) for i in range(8)]
    out = TokenBudgetPostprocessor(token_limit=60, dedupe_threshold=None).postprocess_nodes(nodes)
    assert out[0].node.node_id == nodes[0].node.node_id and len(out) >= 3
    assert sum(cost(n.node) for n in out) <= 60


def test_the_packer_reads_scores_as_an_order_not_as_values():
    """Raw similarities share an offset (a weak cosine hit scores 0.40 under a 0.47): the
    packer's choice must not move when the scores are shifted or scaled, so a weak short
    chunk is never worth nearly as much as a strong one just because of that offset."""
    texts = [f"chunk {i} " + "word " * (4 + (7 * i) % 23) for i in range(12)]
    base = [0.47 - 0.006 * i for i in range(12)]

    def chosen(scores):
        nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=s) for i, (t, s) in enumerate(zip(texts, scores))]
        return [n.node.node_id for n in TokenBudgetPostprocessor(token_limit=70, dedupe_threshold=None).postprocess_nodes(nodes)]

    got = chosen(base)
    assert got[0] == "n0"
    assert chosen([s - 0.40 for s in base]) == got == chosen([10 * s for s in base])


def test_compression_is_query_aware():
    """The issue's repro: "...The office manager is Ines Carvalho..." for "who manages it"."""
    node = NodeWithScore(node=TextNode(text=OFFICE), score=1.0)
    post = CompressionPostprocessor(ratio=0.4, min_tokens=0)
    plain = post.postprocess_nodes([node])[0].node.get_content()
    aware = post.postprocess_nodes([node], query_bundle=QueryBundle("who manages it"))[0].node.get_content()
    assert "manager" in aware and "Ines Carvalho" in aware
    assert COUNTER.count(aware) < COUNTER.count(OFFICE)
    assert plain != aware


def test_a_leading_date_and_speaker_survive_compression():
    compressor = SelfInformationCompressor(COUNTER)
    for text, prefix in [
        ("[2023-05-08] Caroline: I went to the LGBTQ support group yesterday and it was really powerful for me.",
         "[2023-05-08] Caroline:"),
        ("Caroline: well, honestly, I think that the support group was a really nice thing to go to.", "Caroline:"),
        ("Speaker A: well I think we should maybe move the meeting to later in the week.\n"
         "Speaker B: yes, that works fine for me, to be honest with you all.", "Speaker A:"),
        ("[10:42] so we basically agreed on the plan and then we just moved on to the next point.", "[10:42]"),
    ]:
        out = compressor.compress_text(text, ratio=0.3)
        assert out.startswith(prefix), out
        assert COUNTER.count(out) < COUNTER.count(text)
    two = compressor.compress_text("Speaker A: well I think we should maybe move it.\nSpeaker B: yes, that works fine "
                                   "for me, honestly, to be quite honest.", ratio=0.3)
    assert "\nSpeaker B:" in two


@pytest.mark.parametrize("make", [
    lambda **kw: TokenBudgetPostprocessor(**kw), lambda **kw: CompressionPostprocessor(**kw),
])
def test_token_limit_is_the_name_and_token_budget_a_deprecated_alias(make):
    with pytest.warns(DeprecationWarning, match="token_limit"):
        old = make(token_budget=123)
    assert old.token_limit == 123 and old.token_budget == 123
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make(token_limit=77).token_limit == 77
    with pytest.raises(ValueError, match="token_limit"):
        make(token_budget=1, token_limit=2)


def test_retriever_token_limit_and_explicit_feedback():
    ctx = TieredContext(session_id="kb", embedder=HashEmbedder(), compaction="inline")
    with pytest.warns(DeprecationWarning, match="token_limit"):
        assert TieredRetriever(ctx, token_budget=50).token_limit == 50
    retriever = TieredRetriever(ctx, token_limit=120)
    retriever.put_nodes([TextNode(text=OFFICE, id_="office"), TextNode(text="The Porto team ships on Fridays.", id_="porto")])
    nodes, assembled = retriever.retrieve_with_result("who manages the Lisbon office?")
    assert nodes and assembled.items
    retriever.feedback([nodes[0]], assembled=assembled)


def test_postprocessors_in_a_real_vector_store_query_engine():
    """The README recipe: VectorStoreIndex -> retrieve top-k -> priority, compression,
    budget -> MockLLM. Offline (MockEmbedding)."""
    docs = [Document(text=OFFICE)] + [Document(text=f"Unrelated memo {i} about the coffee machine, the plants and "
                                                    f"the parking spaces on floor {i}.") for i in range(12)]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=8,
        node_postprocessors=[PriorityPostprocessor(), CompressionPostprocessor(ratio=0.6), TokenBudgetPostprocessor(token_limit=120)],
    )
    response = engine.query("Who manages the Lisbon office?")
    assert response.source_nodes
    assert sum(cost(n.node) for n in response.source_nodes) <= 120


def test_langchain_rows_in_a_real_retrieval_chain():
    """The LangChain half of the eval (issue 14, item 5): InMemoryVectorStore ->
    ContextualCompressionRetriever (no compressor / EmbeddingsFilter / TieredDocumentCompressor)
    inside an LCEL chain, evidence recall and RAGAS context recall per row. Tiny synthetic
    meeting, offline (hash embeddings)."""
    pytest.importorskip("langchain_classic")
    pytest.importorskip("ragas")
    from types import SimpleNamespace

    from tiered_context.evals.rag_postprocessors import (
        LC_PIPELINES,
        ragas_context_recall,
        run_langchain,
    )
    from tiered_context.langchain import TieredEmbeddings

    filler = ["the coffee machine on floor two is broken again", "parking spaces move to the east lot in June",
              "the plants in the lobby need water twice a week", "the printer queue jams every Monday morning"]
    turns = [SimpleNamespace(id=str(i), speaker=f"Speaker {'AB'[i % 2]}", text=f"{filler[i % 4]}, item {i}.")
             for i in range(40)]
    turns[23] = SimpleNamespace(id="23", speaker="Speaker B", text=OFFICE)
    question = SimpleNamespace(text="Who manages the Lisbon office?", evidence=("23",))
    conv = SimpleNamespace(id="m1", turns=turns, questions=[question])
    rows = run_langchain([conv], [60, 400], top_k=6, chunk_tokens=40, embeddings=TieredEmbeddings(HashEmbedder()))
    assert {(r["framework"], r["pipeline"], r["budget"]) for r in rows} == {
        ("langchain", p, b) for p in LC_PIPELINES for b in (60, 400)}
    for r in rows:
        assert r["queries"] == 1 and 0.0 <= r["recall"] <= 1.0 and 0.0 <= r["ragas_recall"] <= 1.0
        assert r["tokens"] <= r["budget"] + 1
    by = {(r["pipeline"], r["budget"]): r for r in rows}
    assert by[("lc-tiered", 400)]["recall"] == 1.0 and by[("lc-tiered", 400)]["ragas_recall"] == 1.0

    # RAGAS' string-based recall: a reference line found among the context's lines counts
    ref = f"Speaker B: {OFFICE}"
    assert ragas_context_recall(["Speaker A: hello there.\n" + ref], [ref]) == 1.0
    assert ragas_context_recall(["Speaker A: the printer queue jams every Monday."], [ref]) == 0.0
    assert ragas_context_recall([], [ref]) == 0.0


def test_the_postprocessor_table_is_rows_of_tiered_context_eval(tmp_path, capsys):
    """``tiered-context eval --data-qmsum DIR --rag-postprocessors``: the table is written
    next to the retention tables (results.md) and its rows into results.json."""
    import json

    pytest.importorskip("langchain_classic")
    from tiered_context.cli import main
    from tiered_context.evals.rag_postprocessors import CATEGORY, LC_PIPELINES, PIPELINES

    filler = ["the coffee machine on floor two is broken again", "parking spaces move to the east lot in June",
              "the plants in the lobby need water twice a week", "the printer queue jams every Monday morning"]
    transcript = [{"speaker": f"Speaker {'AB'[i % 2]}", "content": f"{filler[i % 4]}, item {i}."} for i in range(40)]
    transcript[23] = {"speaker": "Speaker B", "content": OFFICE}
    meeting = {"meeting_transcripts": transcript,
               "specific_query_list": [{"query": "Who manages the Lisbon office?", "answer": "Ines Carvalho",
                                        "relevant_text_span": [["23", "23"]]}]}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m1.json").write_text(json.dumps(meeting), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["eval", "--data-qmsum", str(tmp_path / "data"), "--budgets", "60,400", "--strategies", "bm25",
                 "--rag-postprocessors", "--no-ragas", "--no-progress", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rag = [r for r in rows if r["category"] == CATEGORY]
    assert {(r["strategy"], r["budget"]) for r in rag} == {
        (f"{f}:{p}", b) for f, names in (("llama-index", PIPELINES), ("langchain", LC_PIPELINES))
        for p in names for b in (60, 400)}
    assert any(r["strategy"] == "bm25" for r in rows)  # the retention rows are still there
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "### qmsum (" in md and "### qmsum: RAG postprocessors" in md and "| llama-index | tiered-packer |" in md
    with pytest.raises(SystemExit):  # it needs the QMSum meetings
        main(["eval", "--data-locomo", str(tmp_path / "data" / "m1.json"), "--rag-postprocessors"])
    assert "--data-qmsum" in capsys.readouterr().err
