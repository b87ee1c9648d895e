"""RAG postprocessors inside a real LlamaIndex query engine and a real LangChain retrieval
chain, on QMSum meetings.

Each meeting of a QMSum split is cut into chunks of consecutive turns (``Speaker: text``
lines, about `chunk_tokens` each; a node's metadata lists its turn ids), indexed in a
`VectorStoreIndex` with the package's offline embedder (`TieredEmbedding`, WordLlama),
and every specific query runs through ``RetrieverQueryEngine.retrieve`` (top-k, then the
engine's node postprocessors, no LLM) for each pipeline and budget:

- ``none``: the retrieved nodes in rank order, cut to the budget;
- ``sentence-optimizer``: LlamaIndex's `SentenceEmbeddingOptimizer` (percentile 0.5), cut;
- ``long-context-reorder``: LlamaIndex's `LongContextReorder`, cut;
- ``tiered-packer``: `TokenBudgetPostprocessor(token_limit=budget)`;
- ``tiered-compress``: `CompressionPostprocessor(token_limit=budget)` (query-aware) + the packer.

The LangChain half runs the same chunks (as `Document`s) through an `InMemoryVectorStore`
with the same offline embeddings (`TieredEmbeddings`), and every query through an LCEL
retrieval chain ``{"context": ContextualCompressionRetriever(...), "question": ...}``
(top-k, then the compressor, no LLM):

- ``lc-none``: no compressor, the retrieved documents in rank order, cut to the budget;
- ``lc-embeddings-filter``: LangChain's `EmbeddingsFilter` (the top_k/2 most similar), cut;
- ``lc-tiered``: the package's `TieredDocumentCompressor(max_tokens=budget)`.

Evidence recall: the share of a query's evidence turns whose chunk is in the final
context (a compressed chunk counts through its provenance; compression is lossy, so this
is an upper bound for that row). RAGAS context recall: ragas' `NonLLMContextRecall`
(Levenshtein similarity > 0.5, its defaults) with the evidence turns (``Speaker: text``) as
reference contexts and the final context split into its lines as retrieved contexts, so a
compressed turn counts only if its text survives (RAGAS telemetry off). LLM-free and
deterministic. Only ids and figures are printed.

The rows are rows of ``tiered-context eval`` (`eval_rows`: ``category="rag_postprocessor"``,
``strategy="<framework>:<pipeline>"``), tabled next to the retention tables in
``results.md`` and ``report.md`` (`render_markdown`)::

    tiered-context eval --data-qmsum ../shared/data/qmsum/val --rag-postprocessors
    python -m tiered_context.evals.rag_postprocessors --qmsum ../shared/data/qmsum/val   # the table alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["CATEGORY", "FRAMEWORKS", "LC_PIPELINES", "PIPELINES", "chunk_meeting", "eval_rows", "main", "ragas_context_recall",
           "render_markdown", "run", "run_langchain"]

#: ``category`` of the rows `eval_rows` gives ``tiered-context eval`` (tabled apart from retention).
CATEGORY = "rag_postprocessor"
FRAMEWORKS = ("llama-index", "langchain")


def chunk_meeting(conv: Any, *, chunk_tokens: int = 150, counter: Any = None) -> list[Any]:
    """TextNodes of consecutive turns, about `chunk_tokens` each (metadata: turn ids)."""
    from llama_index.core.schema import TextNode
    from tiered_context import TokenCounter

    counter = counter or TokenCounter()
    nodes, lines, ids, size = [], [], [], 0

    def close() -> None:
        if lines:
            nodes.append(TextNode(text="\n".join(lines), id_=f"{conv.id}/c{len(nodes)}", metadata={"turns": ",".join(ids)},
                                  excluded_llm_metadata_keys=["turns"], excluded_embed_metadata_keys=["turns"]))

    for turn in conv.turns:
        line = f"{turn.speaker}: {turn.text}"
        cost = counter.count(line)
        if size and size + cost > chunk_tokens:
            close()
            lines, ids, size = [], [], 0
        lines.append(line)
        ids.append(turn.id)
        size += cost
    close()
    return nodes


def _truncate(token_limit: int, counter: Any) -> Any:
    """A postprocessor that keeps nodes in their order while they fit (the budget every
    baseline gets)."""
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode

    class Truncate(BaseNodePostprocessor):
        def _postprocess_nodes(self, nodes, query_bundle=None):  # type: ignore[no-untyped-def]
            out, used = [], 0
            for n in nodes:
                cost = counter.count(n.node.get_content(metadata_mode=MetadataMode.LLM)) + 1
                if used + cost <= token_limit:
                    out.append(n)
                    used += cost
            return out

    return Truncate()


def _pipelines(embed_model: Any, counter: Any) -> dict[str, Callable[[int], list[Any]]]:
    from llama_index.core.postprocessor import (
        LongContextReorder,
        SentenceEmbeddingOptimizer,
    )
    from tiered_context.llama_index import (
        CompressionPostprocessor,
        TokenBudgetPostprocessor,
    )

    return {
        "none": lambda b: [_truncate(b, counter)],
        "sentence-optimizer": lambda b: [SentenceEmbeddingOptimizer(embed_model=embed_model, percentile_cutoff=0.5),
                                         _truncate(b, counter)],
        "long-context-reorder": lambda b: [LongContextReorder(), _truncate(b, counter)],
        "tiered-packer": lambda b: [TokenBudgetPostprocessor(token_limit=b, counter=counter)],
        "tiered-compress": lambda b: [CompressionPostprocessor(token_limit=b, counter=counter),
                                      TokenBudgetPostprocessor(token_limit=b, counter=counter)],
    }


PIPELINES = ("none", "sentence-optimizer", "long-context-reorder", "tiered-packer", "tiered-compress")


def ragas_context_recall(contexts: Sequence[str], references: Sequence[str], *, _cache: dict | None = None) -> float:
    """RAGAS `NonLLMContextRecall` (its defaults: Levenshtein, threshold 0.5) of the
    `references` (evidence turns) against the lines of the final `contexts`."""
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    import warnings

    from ragas import SingleTurnSample

    with warnings.catch_warnings():  # ragas 0.4 warns that this import path moves in 1.0
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics import NonLLMContextRecall

    lines = [line for text in contexts for line in text.split("\n") if line.strip()]
    refs = [r for r in references if r.strip()]
    if not refs:
        return float("nan")
    if not lines:
        return 0.0
    key = (tuple(sorted(lines)), tuple(refs))
    if _cache is not None and key in _cache:
        return _cache[key]
    sample = SingleTurnSample(retrieved_contexts=lines, reference_contexts=refs)
    score = float(asyncio.run(NonLLMContextRecall().single_turn_ascore(sample)))
    if _cache is not None:
        _cache[key] = score
    return score


def _evidence_texts(conv: Any, evidence: Sequence[str]) -> list[str]:
    text_of = {t.id: f"{t.speaker}: {t.text}" for t in conv.turns}
    return [text_of[e] for e in evidence if e in text_of]


def _rows(framework: str, sums: dict, tokens: dict, ragas: dict) -> list[dict[str, Any]]:
    rows = []
    for (name, budget), v in sums.items():
        r = ragas.get((name, budget)) or []
        rows.append({"framework": framework, "pipeline": name, "budget": budget, "recall": round(sum(v) / len(v), 4),
                     "ragas_recall": round(sum(r) / len(r), 4) if r else None,
                     "tokens": round(sum(tokens[(name, budget)]) / len(v), 1), "queries": len(v)})
    return rows


def run(conversations: Sequence[Any], budgets: Sequence[int], *, top_k: int = 20, chunk_tokens: int = 150,
        pipelines: Sequence[str] = PIPELINES, ragas: bool = True) -> list[dict[str, Any]]:
    """LlamaIndex rows (framework, pipeline, budget, evidence recall, RAGAS context recall
    or None, mean tokens, queries)."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
    from tiered_context import TokenCounter
    from tiered_context.llama_index import TieredEmbedding

    counter = TokenCounter()
    embed = TieredEmbedding()
    makers = _pipelines(embed, counter)
    sums: dict[tuple[str, int], list[float]] = {}
    tokens: dict[tuple[str, int], list[int]] = {}
    ragas_scores: dict[tuple[str, int], list[float]] = {}
    cache: dict = {}
    for conv in conversations:
        nodes = chunk_meeting(conv, chunk_tokens=chunk_tokens, counter=counter)
        turns_of = {n.node_id: set(n.metadata["turns"].split(",")) for n in nodes}
        retriever = VectorStoreIndex(nodes, embed_model=embed).as_retriever(similarity_top_k=top_k)
        for q in conv.questions:
            retrieved = retriever.retrieve(QueryBundle(q.text))
            for name in pipelines:
                for budget in budgets:
                    engine = RetrieverQueryEngine.from_args(retriever, llm=_NoLLM(), node_postprocessors=makers[name](budget))
                    # fresh copies: SentenceEmbeddingOptimizer edits node texts in place
                    fresh = [NodeWithScore(node=n.node.model_copy(deep=True), score=n.score) for n in retrieved]
                    out = engine._apply_node_postprocessors(fresh, QueryBundle(q.text))
                    covered: set[str] = set()
                    for n in out:
                        source = n.node.metadata.get("tiered_context_source_id", n.node.node_id)
                        covered |= turns_of.get(source, set())
                    sums.setdefault((name, budget), []).append(len(covered & set(q.evidence)) / len(q.evidence))
                    texts = [n.node.get_content(metadata_mode=MetadataMode.LLM) for n in out]
                    tokens.setdefault((name, budget), []).append(sum(counter.count(t) + 1 for t in texts))
                    if ragas:
                        ragas_scores.setdefault((name, budget), []).append(
                            ragas_context_recall(texts, _evidence_texts(conv, q.evidence), _cache=cache))
    return _rows("llama-index", sums, tokens, ragas_scores)


LC_PIPELINES = ("lc-none", "lc-embeddings-filter", "lc-tiered")


def _lc_truncate(max_tokens: int, counter: Any) -> Any:
    """A LangChain `BaseDocumentCompressor` that keeps documents in their order while they
    fit (the budget every LangChain baseline gets; ``lc-none`` is this alone)."""
    from langchain_core.documents import BaseDocumentCompressor

    class Truncate(BaseDocumentCompressor):
        def compress_documents(self, documents, query, callbacks=None):  # type: ignore[no-untyped-def]
            out, used = [], 0
            for d in documents:
                cost = counter.count(d.page_content) + 1
                if used + cost <= max_tokens:
                    out.append(d)
                    used += cost
            return out

    return Truncate()


def _lc_compressors(embeddings: Any, counter: Any, top_k: int) -> dict[str, Callable[[int], Any]]:
    from langchain_classic.retrievers.document_compressors import (
        DocumentCompressorPipeline,
        EmbeddingsFilter,
    )
    from tiered_context.langchain import TieredDocumentCompressor

    return {
        "lc-none": lambda b: _lc_truncate(b, counter),
        "lc-embeddings-filter": lambda b: DocumentCompressorPipeline(transformers=[
            EmbeddingsFilter(embeddings=embeddings, k=max(1, top_k // 2), similarity_threshold=None),
            _lc_truncate(b, counter)]),
        "lc-tiered": lambda b: TieredDocumentCompressor(max_tokens=b, embedder=embeddings, counter=counter),
    }


def run_langchain(conversations: Sequence[Any], budgets: Sequence[int], *, top_k: int = 20, chunk_tokens: int = 150,
                  pipelines: Sequence[str] = LC_PIPELINES, embeddings: Any = None,
                  ragas: bool = True) -> list[dict[str, Any]]:
    """LangChain rows, as `run`: an `InMemoryVectorStore` retriever (top-k) under a
    `ContextualCompressionRetriever` per pipeline and budget, inside an LCEL retrieval
    chain. `embeddings`: any LangChain `Embeddings` (default: the offline `TieredEmbeddings`)."""
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore
    from tiered_context import TokenCounter
    from tiered_context.langchain import TieredEmbeddings

    counter = TokenCounter()
    embeddings = embeddings if embeddings is not None else TieredEmbeddings()
    makers = _lc_compressors(embeddings, counter, top_k)
    sums: dict[tuple[str, int], list[float]] = {}
    tokens: dict[tuple[str, int], list[int]] = {}
    ragas_scores: dict[tuple[str, int], list[float]] = {}
    cache: dict = {}
    for conv in conversations:
        nodes = chunk_meeting(conv, chunk_tokens=chunk_tokens, counter=counter)
        docs = [Document(page_content=n.text, id=n.node_id, metadata={"turns": n.metadata["turns"]}) for n in nodes]
        store = InMemoryVectorStore(embedding=embeddings)
        store.add_documents(docs, ids=[d.id for d in docs])
        base = store.as_retriever(search_kwargs={"k": top_k})
        chains = {(name, budget): {"context": ContextualCompressionRetriever(base_compressor=makers[name](budget),
                                                                             base_retriever=base),
                                   "question": RunnablePassthrough()}
                  for name in pipelines for budget in budgets}
        chains = {key: RunnablePassthrough() | chain for key, chain in chains.items()}
        for q in conv.questions:
            references = _evidence_texts(conv, q.evidence) if ragas else []
            for (name, budget), chain in chains.items():
                out = chain.invoke(q.text)["context"]
                covered: set[str] = set()
                for d in out:
                    covered |= set(filter(None, str(d.metadata.get("turns", "")).split(",")))
                sums.setdefault((name, budget), []).append(len(covered & set(q.evidence)) / len(q.evidence))
                texts = [d.page_content for d in out]
                tokens.setdefault((name, budget), []).append(sum(counter.count(t) + 1 for t in texts))
                if ragas:
                    ragas_scores.setdefault((name, budget), []).append(
                        ragas_context_recall(texts, references, _cache=cache))
    return _rows("langchain", sums, tokens, ragas_scores)


def _NoLLM() -> Any:
    from llama_index.core.llms import MockLLM

    return MockLLM()


def eval_rows(conversations: Sequence[Any], budgets: Sequence[int], *, dataset: str = "qmsum",
              frameworks: Sequence[str] = FRAMEWORKS, top_k: int = 20, chunk_tokens: int = 150,
              ragas: bool = True) -> list[dict[str, Any]]:
    """The table as rows of ``tiered-context eval``: one per (framework, pipeline, budget),
    ``category=CATEGORY``, ``strategy="<framework>:<pipeline>"``, ``recall`` (evidence
    recall), ``ragas_recall`` (RAGAS non-LLM context recall, or None), ``mean_tokens``,
    ``questions``, ``seconds`` (the framework's wall time, split evenly over its rows)."""
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise ValueError(f"frameworks: unknown {unknown}; choose from {list(FRAMEWORKS)}")
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    rows: list[dict[str, Any]] = []
    common = {"top_k": top_k, "chunk_tokens": chunk_tokens, "ragas": ragas}
    for framework in frameworks:
        start = time.perf_counter()
        got = run(conversations, budgets, **common) if framework == "llama-index" else \
            run_langchain(conversations, budgets, **common)
        seconds = (time.perf_counter() - start) / max(1, len(got))
        for r in got:
            rows.append({"dataset": dataset, "strategy": f"{r['framework']}:{r['pipeline']}", "budget": r["budget"],
                         "category": CATEGORY, "framework": r["framework"], "pipeline": r["pipeline"],
                         "recall": r["recall"], "ragas_recall": r["ragas_recall"], "mean_tokens": r["tokens"],
                         "questions": r["queries"], "top_k": top_k, "chunk_tokens": chunk_tokens,
                         "seconds": round(seconds, 3)})
    order, names = FRAMEWORKS, PIPELINES + LC_PIPELINES
    return sorted(rows, key=lambda r: (r["dataset"], r["budget"], order.index(r["framework"]), names.index(r["pipeline"])))


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The postprocessor table(s) of `rows` (those with ``category=CATEGORY``), one per
    dataset: pipeline down, evidence recall / RAGAS context recall per budget across."""
    out: list[str] = []
    mine = [r for r in rows if r.get("category") == CATEGORY]
    for dataset in dict.fromkeys(r["dataset"] for r in mine):
        data = [r for r in mine if r["dataset"] == dataset]
        budgets = sorted({int(r["budget"]) for r in data})
        cells = {(r["framework"], r["pipeline"], int(r["budget"])): r for r in data}
        pipelines = list(dict.fromkeys((r["framework"], r["pipeline"]) for r in data))
        queries = max(int(r["questions"]) for r in data)
        ragas = any(r.get("ragas_recall") is not None for r in data)
        what = "evidence recall / RAGAS context recall (non-LLM)" if ragas else "evidence recall"
        first = data[0]
        out += [f"### {dataset}: RAG postprocessors ({queries} queries; top-{first.get('top_k', '?')} chunks of "
                f"~{first.get('chunk_tokens', '?')} tokens, then budgeted; {what})", "",
                "| framework | pipeline | " + " | ".join(f"{b} tokens" for b in budgets) + " |",
                "|---|---|" + "---:|" * len(budgets)]
        for framework, pipeline in pipelines:
            line = [framework, pipeline]
            for b in budgets:
                r = cells.get((framework, pipeline, b))
                if r is None:
                    line.append("")
                elif ragas:
                    rr = r.get("ragas_recall")
                    line.append(f"{r['recall']:.3f} / " + ("-" if rr is None else f"{rr:.3f}"))
                else:
                    line.append(f"{r['recall']:.3f}")
            out.append("| " + " | ".join(line) + " |")
        out += ["", "Evidence recall counts a compressed chunk through its provenance (an upper bound for "
                "the compressing rows); RAGAS context recall only counts text that survived.", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from tiered_context.evals.datasets import load_qmsum

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qmsum", required=True, help="a QMSum split directory (val)")
    parser.add_argument("--budgets", default="500,1000,2000")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--chunk-tokens", type=int, default=150)
    parser.add_argument("--meetings", type=int, default=12,
                        help="at most this many meetings (default 12, a few minutes on 2 cores; 0 = all)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="llama-index, langchain or both")
    parser.add_argument("--no-ragas", action="store_true", help="skip RAGAS context recall (faster)")
    args = parser.parse_args(argv)
    convs = load_qmsum(args.qmsum)
    convs = convs[: args.meetings] if args.meetings else convs
    budgets = [int(b) for b in args.budgets.split(",")]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    start = time.perf_counter()
    rows = eval_rows(convs, budgets, frameworks=frameworks, top_k=args.top_k, chunk_tokens=args.chunk_tokens,
                     ragas=not args.no_ragas)
    print(f"{len(convs)} meetings, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(render_markdown(rows))
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
