"""RAG postprocessors inside a real LlamaIndex query engine, on QMSum meetings.

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

Evidence recall: the share of a query's evidence turns whose chunk is in the final
context (a compressed chunk counts through its provenance; compression is lossy, so this
is an upper bound for that row). LLM-free and deterministic. Only ids and figures are
printed::

    python -m evals.rag_postprocessors --qmsum ../shared/data/qmsum/val --budgets 500,1000,2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["PIPELINES", "chunk_meeting", "run", "main"]


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
    from llama_index.core.postprocessor import LongContextReorder, SentenceEmbeddingOptimizer

    from tiered_context.llama_index import CompressionPostprocessor, TokenBudgetPostprocessor

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


def run(conversations: Sequence[Any], budgets: Sequence[int], *, top_k: int = 20, chunk_tokens: int = 150,
        pipelines: Sequence[str] = PIPELINES) -> list[dict[str, Any]]:
    """Rows (pipeline, budget, evidence recall, mean tokens, queries)."""
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
                    tokens.setdefault((name, budget), []).append(
                        sum(counter.count(n.node.get_content(metadata_mode=MetadataMode.LLM)) + 1 for n in out))
    return [{"pipeline": name, "budget": budget, "recall": round(sum(v) / len(v), 4),
             "tokens": round(sum(tokens[(name, budget)]) / len(v), 1), "queries": len(v)}
            for (name, budget), v in sums.items()]


def _NoLLM() -> Any:
    from llama_index.core.llms import MockLLM

    return MockLLM()


def main(argv: Sequence[str] | None = None) -> int:
    from evals.datasets import load_qmsum

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qmsum", required=True, help="a QMSum split directory (val)")
    parser.add_argument("--budgets", default="500,1000,2000")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--chunk-tokens", type=int, default=150)
    parser.add_argument("--meetings", type=int, default=None, help="at most this many meetings")
    args = parser.parse_args(argv)
    convs = load_qmsum(args.qmsum)[: args.meetings]
    start = time.perf_counter()
    rows = run(convs, [int(b) for b in args.budgets.split(",")], top_k=args.top_k, chunk_tokens=args.chunk_tokens)
    print(f"{len(convs)} meetings, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print("| pipeline | budget | evidence recall | tokens |\n|---|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["budget"], PIPELINES.index(r["pipeline"]))):
        print(f"| {r['pipeline']} | {r['budget']} | {r['recall']:.3f} | {r['tokens']:.0f} |")
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
