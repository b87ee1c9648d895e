"""`aget` latency: `TieredMemory` against LlamaIndex's own `Memory`, same history, one run.

    python -m tiered_context.evals.bench_llama_index \\
        --data-locomo ../shared/data/locomo/locomo_dev5.json --token-limit 2000 --queries 100

Both memories get the same conversation (LoCoMo's first conversation as user/assistant
messages; a synthetic one without the data), put in one `aput_messages` call, then
answer the same questions with `aget(input=question)`, alternating which goes first.
LlamaIndex's `Memory` uses its default in-memory SQLite store (aiosqlite) and no memory
blocks; `TieredMemory` uses its defaults (WordLlama embedder, cl100k tokens). Reported:
p50 / p95 / mean seconds per `aget`, the ratio tiered / llama-index, put time, and how
many questions had all their evidence turns in what each returned: verbatim, and for the
tiered memory also verbatim-or-compressed (older turns may come back in their L2 form).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tiered_context.errors import missing_extra

try:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.memory import Memory
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.evals.datasets import Conversation, Question, Turn, load_locomo
from tiered_context.llama_index import TieredMemory

__all__ = ["bench_aget", "main"]


def _synthetic(turns: int = 600, questions: int = 50) -> Conversation:
    topics = ["the Lisbon launch", "the budget review", "the hiring plan", "the office move", "the supplier contract"]
    out, asks = [], []
    for i in range(turns):
        topic = topics[i % len(topics)]
        text = f"On day {i} we talked about {topic}: item {i * 7 % 101} was agreed, and {topic} owner is person {i % 13}."
        out.append(Turn(id=f"t{i}", speaker="A" if i % 2 == 0 else "B", text=text, timestamp=1_700_000_000 + 60 * i, session=1))
    for q in range(questions):
        i = (q * 37) % turns
        asks.append(Question(id=f"q{q}", text=f"What was agreed on day {i}?", evidence=(f"t{i}",), category="1", answer=None))
    return Conversation(id="synthetic", dataset="synthetic", turns=out, questions=asks, speakers=("A", "B"))


def _messages(conversation: Conversation) -> list[ChatMessage]:
    first = conversation.speakers[0] if conversation.speakers else None
    return [ChatMessage(role="user" if t.speaker == first else "assistant", content=t.text) for t in conversation.turns]


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50": round(statistics.median(ordered), 6),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 6),
        "mean": round(statistics.fmean(ordered), 6),
    }


async def bench_aget(conversation: Conversation, *, token_limit: int = 2000, queries: int = 100, warmup: int = 3) -> dict[str, Any]:
    """Put `conversation` into both memories, time `aget(input=question)` on each."""
    messages = _messages(conversation)
    text_of = {t.id: t.text for t in conversation.turns}
    questions = [q for q in conversation.questions][:queries] or [Question(id="q", text="what happened?", evidence=(), category="1", answer=None)]

    started = time.perf_counter()
    tiered = TieredMemory.from_defaults(token_limit=token_limit, session_id="bench")
    tiered_init = time.perf_counter() - started
    started = time.perf_counter()
    await tiered.aput_messages(messages)
    tiered.context.flush()
    tiered_put = time.perf_counter() - started

    started = time.perf_counter()
    llama = Memory.from_defaults(session_id="bench", token_limit=token_limit)
    await llama.aput_messages(messages)
    llama_put = time.perf_counter() - started

    for q in questions[:warmup]:
        await tiered.aget(input=q.text)
        await llama.aget(input=q.text)

    times: dict[str, list[float]] = {"tiered": [], "llama_index": []}
    kept = {"tiered": 0, "llama_index": 0, "tiered_any_form": 0}
    tokens = {"tiered": [], "llama_index": []}
    turn_ids = [t.id for t in conversation.turns]
    for n, q in enumerate(questions):
        order = [("tiered", tiered), ("llama_index", llama)]
        for name, memory in order if n % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            got = await memory.aget(input=q.text)
            times[name].append(time.perf_counter() - started)
            contents = {m.content for m in got}
            kept[name] += bool(q.evidence) and all(text_of.get(e) in contents for e in q.evidence)
            tokens[name].append(tiered.count_tokens(got))
            if name == "tiered":
                shown = {turn_ids[p] for p in tiered.last_positions if p is not None}
                kept["tiered_any_form"] += bool(q.evidence) and set(q.evidence) <= shown
    tiered_stats, llama_stats = _stats(times["tiered"]), _stats(times["llama_index"])
    return {
        "conversation": conversation.id,
        "messages": len(messages),
        "history_tokens": tiered.history_tokens,
        "token_limit": token_limit,
        "queries": len(questions),
        "tiered": {**tiered_stats, "init_s": round(tiered_init, 4), "put_s": round(tiered_put, 4),
                   "mean_tokens_returned": round(statistics.fmean(tokens["tiered"]), 1),
                   "evidence_verbatim": kept["tiered"], "evidence_verbatim_or_compressed": kept["tiered_any_form"]},
        "llama_index_memory": {**llama_stats, "put_s": round(llama_put, 4),
                               "mean_tokens_returned": round(statistics.fmean(tokens["llama_index"]), 1),
                               "evidence_verbatim": kept["llama_index"]},
        "ratio_p50": round(tiered_stats["p50"] / llama_stats["p50"], 3),
        "ratio_mean": round(tiered_stats["mean"] / llama_stats["mean"], 3),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-locomo", type=Path, help="locomo JSON; without it a synthetic 600-turn conversation")
    parser.add_argument("--token-limit", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    conversation = load_locomo(args.data_locomo)[0] if args.data_locomo else _synthetic()
    result = asyncio.run(bench_aget(conversation, token_limit=args.token_limit, queries=args.queries))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
