"""Throughput of the offline compressor and the extractive summarizer, pinned to one core.

    python -m tiered_context.evals.bench_compress --data-locomo ../shared/data/locomo/locomo_dev5.json \\
        --data-qmsum ../shared/data/qmsum/val

Prints tokens per second (cl100k tokens of the input): the compressor at 2x on every
turn, cold (first pass, caches empty) and warm (caches filled, the steady state of a
memory); the extractive summarizer on batches of 100 turns with the default embedder.
Targets (issue 4): compressor >= 200k tokens/s, summarizer >= 5k tokens/s.

``--lm-turns N`` also times the compressor with the local-LM scorer
(`tiered_context.lm_importance`, SmolLM2-135M, extra ``smollm``) on the first N turns,
after loading the model (the load time is reported apart); ``--lm-backend`` picks
``llama_cpp`` (default) or ``transformers``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "run"]


def _one_core() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        os.environ.setdefault(var, "1" if var != "TOKENIZERS_PARALLELISM" else "false")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def run(locomo: Path, qmsum: Path | None = None, repeats: int = 3, lm_turns: int = 0,
        lm_backend: str = "llama_cpp") -> dict:
    from tiered_context import ContextItem, SelfInformationCompressor, TokenCounter, WordLlamaEmbedder
    from tiered_context import ExtractiveSummarizer
    from tiered_context.evals.datasets import load_locomo, load_qmsum

    convs = load_locomo(locomo) + (load_qmsum(qmsum) if qmsum else [])
    counter = TokenCounter()
    texts = [t.text for c in convs for t in c.turns]
    tokens = sum(counter.count_many(texts))
    compressor = SelfInformationCompressor(counter, min_tokens=0)
    compressor.compress_text("warm up the word lists and the tokenizer", ratio=0.5)
    started = time.perf_counter()
    for text in texts:
        compressor.compress_text(text, ratio=0.5)
    cold = time.perf_counter() - started
    warm = []
    for _ in range(repeats):
        started = time.perf_counter()
        for text in texts:
            compressor.compress_text(text, ratio=0.5)
        warm.append(time.perf_counter() - started)
    kept = sum(counter.count_many([compressor.compress_text(t, ratio=0.5) for t in texts]))

    summarizer = ExtractiveSummarizer(counter=counter, embedder=WordLlamaEmbedder())
    batches = []
    for conv in convs[:5]:
        items = [ContextItem.create(t.text, id=t.id, timestamp=t.timestamp, metadata={"speaker": t.speaker})
                 for t in conv.turns]
        items = [i.evolve(tokens=n) for i, n in zip(items, counter.count_many([i.text for i in items]))]
        batches += [items[k:k + 100] for k in range(0, len(items) - 99, 100)]
    summarizer.summarize(batches[0])  # load the embedder
    started = time.perf_counter()
    summary_tokens = 0
    for batch in batches:
        summary_tokens += summarizer.summarize(batch).tokens
    seconds = time.perf_counter() - started
    batch_tokens = sum(i.tokens for b in batches for i in b)
    out = {
        "turns": len(texts), "tokens": tokens,
        "compressor_tokens_per_s_cold": round(tokens / cold),
        "compressor_tokens_per_s_warm": round(tokens / min(warm)),
        "compressor_achieved_ratio": round(tokens / kept, 3),
        "summarizer_batches": len(batches), "summarizer_tokens": batch_tokens,
        "summarizer_tokens_per_s": round(batch_tokens / seconds),
        "summarizer_ratio": round(batch_tokens / max(summary_tokens, 1), 2),
    }
    if lm_turns > 0:
        out.update(_lm(texts[:lm_turns], counter, lm_backend))
    return out


def _lm(texts: list[str], counter: Any, backend: str) -> dict:
    """Tokens/s of the compressor with the local-LM scorer (model load timed apart)."""
    from tiered_context import SelfInformationCompressor
    from tiered_context.lm_importance import LMSurprisalScorer

    scorer = LMSurprisalScorer(backend=backend)
    started = time.perf_counter()
    scorer.word_bits(["load", "the", "model"])
    load = time.perf_counter() - started
    compressor = SelfInformationCompressor(counter, min_tokens=0, scorer=scorer)
    tokens = sum(counter.count_many(texts))
    started = time.perf_counter()
    for text in texts:
        compressor.compress_text(text, ratio=0.5)
    seconds = time.perf_counter() - started
    return {"lm_backend": backend, "lm_load_s": round(load, 1), "lm_turns": len(texts), "lm_tokens": tokens,
            "lm_compressor_tokens_per_s": round(tokens / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-locomo", type=Path, required=True)
    parser.add_argument("--data-qmsum", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lm-turns", type=int, default=0, help="also time the local-LM scorer on N turns")
    parser.add_argument("--lm-backend", choices=("llama_cpp", "transformers"), default="llama_cpp")
    args = parser.parse_args(argv)
    _one_core()
    print(json.dumps(run(args.data_locomo, args.data_qmsum, args.repeats, args.lm_turns, args.lm_backend), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
