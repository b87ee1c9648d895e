"""Speed benchmarks: ingest rate, assembly latency and compression throughput, on real
conversation text, with the frameworks' nearest equivalents side by side in one run.

    tiered-context bench --data-locomo ../shared/data/locomo/locomo_dev5.json \\
        --data-qmsum ../shared/data/qmsum/train --items 1000,10000,100000 --out out/bench

- **ingest**: a 600-turn conversation (LoCoMo turns, in order) put turn by turn through
  the public API, embeddings included, then `flush()`; median of 3 warm runs, plus the
  cold start (model load) separately, for each embedder. Beside it, the same turns one
  call per turn into LangChain's `InMemoryChatMessageHistory.add_messages`, LlamaIndex's
  `ChatMemoryBuffer.put`, and LlamaIndex's `Memory.put` / `Memory.aput` (default SQLite
  store, no memory blocks). These store messages and embed nothing, so the ratio is
  the price of tiered-context's indexing, not a like-for-like race.
- **assemble**: `assemble(question, budget=2000)` latency with N items stored (LoCoMo and
  QMSum turns cycled to N), over up to 200 LoCoMo questions; p50 and p95. Beside it, what
  a user of each framework calls to get a 2000-token context from the same N messages:
  `trim_messages(strategy="last")`, `ChatMemoryBuffer.get()`, `Memory.get()` /
  `Memory.aget()` (all by recency: none of them looks at the question). Every one counts
  cl100k tokens. Two are capped, because measuring them at the biggest N takes longer
  than the rest of the run (the row says so, with the reason): see `FRAMEWORK_CAPS`.
- **compress**: `bench_compress.run` (the offline compressor, cold and warm, and the
  extractive summarizer), and, when a local LLMLingua model is given, LLMLingua's
  tokens per second on the first turns of the same text.

Every framework row carries ``ratio_tiered_over_this``: tiered-context's time divided by
that system's (below 1: tiered-context is faster). Numbers are wall-clock on whatever
machine runs it; the README quotes a run.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tiered_context.evals.progress import progress_bar as tqdm

from tiered_context.evals.datasets import Conversation, Turn

__all__ = ["FRAMEWORK_CAPS", "bench_assemble", "bench_compression", "bench_framework_assemble",
           "bench_framework_ingest", "bench_ingest", "bench_long_ingest", "render_bench", "run_bench", "write_bench"]


def _embedders() -> dict[str, Callable[[], Any]]:
    from tiered_context import MiniLMEmbedder, WordLlamaEmbedder

    return {"wordllama (default)": WordLlamaEmbedder, "minilm": MiniLMEmbedder}


def _ingest(turns: Sequence[Turn], **options: Any) -> float:
    from tiered_context import TieredContext

    started = time.perf_counter()
    ctx = TieredContext(session_id="bench", **options)
    for t in turns:
        ctx.put(t.text, timestamp=t.timestamp, metadata={"dia_id": t.id, "speaker": t.speaker})
    ctx.flush()
    elapsed = time.perf_counter() - started
    ctx.close()
    return elapsed


def bench_ingest(turns: Sequence[Turn], *, runs: int = 3) -> list[dict[str, Any]]:
    """Seconds to ingest `turns` one `put` at a time, per embedder."""
    rows = []
    for name, make in _embedders().items():
        try:
            started = time.perf_counter()
            embedder = make()
            cold = time.perf_counter() - started
        except ImportError as exc:
            rows.append({"bench": "ingest", "embedder": name, "skipped": str(exc)})
            continue
        times = [_ingest(turns, embedder=embedder) for _ in range(runs)]
        rows.append({
            "bench": "ingest", "embedder": name, "turns": len(turns), "model_load_s": round(cold, 3),
            "seconds_median": round(statistics.median(times), 3), "seconds_all": [round(t, 3) for t in times],
            "turns_per_s": round(len(turns) / statistics.median(times), 1),
        })
    return rows


def _long_histories(conversations: Sequence[Conversation], tokens: int, count: int) -> list[list[Turn]]:
    """`count` histories of about `tokens` cl100k tokens of real turns each, taken one after
    another from the conversations' turns (cycled only when they run out; ids made unique):
    LongMemEval-sized histories when `tokens` is ~115k."""
    pool = [t for c in conversations for t in c.turns]
    if not pool:
        return []
    sizes = _cl100k().count_many([t.text for t in pool])
    out: list[list[Turn]] = []
    i = 0
    for _ in range(count):
        history: list[Turn] = []
        total = 0
        while total < tokens:
            t = pool[i % len(pool)]
            history.append(Turn(id=f"{i}:{t.id}", speaker=t.speaker, text=t.text, timestamp=1.6e9 + i, session=t.session))
            total += sizes[i % len(pool)]
            i += 1
        out.append(history)
    return out


def bench_long_ingest(histories: Sequence[Sequence[Turn]], *, runs: int = 3) -> list[dict[str, Any]]:
    """Ingest rate of a long history (default embedder, default configuration): the whole
    history in one `put_many`, and one `put` per turn, each followed by `flush()` (the
    compressed forms and the ladder's work included). Tokens per second of wall time and
    per CPU second of this process (`time.process_time`: what one core delivers).

    The first history warms the process (models, word tables, the per-word memos a server
    fills as it runs) untimed, and the word tables of every language the timed histories'
    sentences are detected as are loaded (0.2-0.3 s each, once per process: a server pays
    it once, not per token); each timed run ingests another history, so no memo holds a
    text it is timed on. Medians over the timed runs (at most `runs`)."""
    from tiered_context import TieredContext
    from tiered_context.core import load_languages

    histories = [list(h) for h in histories if h]
    if len(histories) < 2:
        return [{"bench": "ingest_long", "skipped": "needs two histories: one to warm up, one to time"}]
    load_languages(t.text for turns in histories[: runs + 1] for t in turns)
    rows = []
    for mode in ("put_many", "put"):
        walls, cpus, tokens = [], [], []
        for n, turns in enumerate(histories[: runs + 1]):
            ctx = TieredContext(session_id="bench-long")
            wall, cpu = time.perf_counter(), time.process_time()
            if mode == "put_many":
                ctx.put_many([{"content": t.text, "timestamp": t.timestamp, "id": t.id,
                               "metadata": {"dia_id": t.id, "speaker": t.speaker}} for t in turns])
            else:
                for t in turns:
                    ctx.put(t.text, timestamp=t.timestamp, id=t.id, metadata={"dia_id": t.id, "speaker": t.speaker})
            ctx.flush()
            if n:
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
                tokens.append(sum(_cl100k().count_many([t.text for t in turns])))
            ctx.close()
        wall, cpu, size = statistics.median(walls), statistics.median(cpus), statistics.median(tokens)
        rows.append({"bench": "ingest_long", "mode": mode, "histories": len(walls),
                     "turns": round(statistics.median(len(h) for h in histories[1: runs + 1])), "tokens": round(size),
                     "seconds_median": round(wall, 3), "cpu_seconds_median": round(cpu, 3),
                     "tokens_per_s": round(statistics.median(t / w for t, w in zip(tokens, walls))),
                     "tokens_per_cpu_s": round(statistics.median(t / c for t, c in zip(tokens, cpus)))})
    return rows


def bench_assemble(pool: Sequence[Turn], questions: Sequence[str], sizes: Sequence[int], *, budget: int = 2000,
                   progress: bool = True) -> list[dict[str, Any]]:
    """p50 / p95 latency of `assemble` with each of `sizes` items stored (default embedder)."""
    from tiered_context import TieredContext

    rows = []
    for n in sizes:
        ctx = TieredContext(session_id=f"bench-{n}")
        batch: list[dict[str, Any]] = []
        for i in range(n):
            t = pool[i % len(pool)]
            batch.append({"content": t.text, "timestamp": 1.6e9 + i * 30, "id": f"{i}:{t.id}",
                          "metadata": {"speaker": t.speaker, "dia_id": t.id}})
            if len(batch) == 1000 or i == n - 1:
                ctx.put_many(batch)
                batch = []
        ctx.flush()
        ctx.assemble(questions[0], budget=budget)  # warm caches once
        latencies = []
        for q in tqdm(questions, desc=f"assemble @ {n} items", disable=not progress, leave=False):
            started = time.perf_counter()
            ctx.assemble(q, budget=budget)
            latencies.append(time.perf_counter() - started)
        rows.append({"bench": "assemble", "system": "tiered-context assemble", "items": n, "budget": budget,
                     **_percentiles(latencies)})
        ctx.close()
    return rows


#: Largest store size measured per framework assembly call, and why (measured on the
#: 2-core dev machine; the row of a skipped size repeats the reason).
FRAMEWORK_CAPS: dict[str, tuple[int, str]] = {
    "llama_index ChatMemoryBuffer.get": (
        1000, "get() re-counts the kept tail once per message it drops (quadratic in N): "
              "1.4 s per call at 1k messages, 255 s at 10k"),
    "llama_index Memory.get": (
        10000, "put_messages of 100k messages fails (SQLite: too many SQL variables) and "
               "10k already take 28 s to store; per-message put of 10k takes 118 s"),
}


def _cl100k() -> Any:
    from tiered_context.evals.strategies import counter

    return counter()


def _li_tokenizer() -> Callable[[str], Sequence[int]]:
    """A LlamaIndex ``tokenizer_fn`` counting cl100k tokens: LlamaIndex only takes the
    ``len`` of what it returns, so a range of that length will do."""
    count = _cl100k().count
    return lambda text: range(count(text))


def _lc_messages(texts: Sequence[str]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage

    return [HumanMessage(t) if i % 2 == 0 else AIMessage(t) for i, t in enumerate(texts)]


def _li_messages(texts: Sequence[str]) -> list[Any]:
    from llama_index.core.base.llms.types import ChatMessage

    return [ChatMessage(role="user" if i % 2 == 0 else "assistant", content=t) for i, t in enumerate(texts)]


def _framework_ingest(texts: Sequence[str]) -> dict[str, Callable[[], None]]:
    """System name -> a function that stores `texts` one call per message, from empty."""
    out: dict[str, Callable[[], None]] = {}
    try:
        from langchain_core.chat_history import InMemoryChatMessageHistory

        lc = _lc_messages(texts)

        def langchain() -> None:
            with warnings.catch_warnings():  # deprecated in LangChain 1.6.4, still what users call
                warnings.filterwarnings("ignore", message=".*InMemoryChatMessageHistory.*deprecated")
                history = InMemoryChatMessageHistory()
            for m in lc:
                history.add_messages([m])

        out["langchain InMemoryChatMessageHistory.add_messages"] = langchain
    except ImportError:
        pass
    try:
        from llama_index.core.memory import ChatMemoryBuffer, Memory

        li = _li_messages(texts)
        tokenizer = _li_tokenizer()

        def buffer() -> None:
            memory = ChatMemoryBuffer.from_defaults(token_limit=2000, tokenizer_fn=tokenizer)
            for m in li:
                memory.put(m)

        def memory_put() -> None:
            memory = Memory.from_defaults(session_id="bench", token_limit=2000, tokenizer_fn=tokenizer)
            for m in li:
                memory.put(m)

        def memory_aput() -> None:
            async def run() -> None:
                memory = Memory.from_defaults(session_id="bench", token_limit=2000, tokenizer_fn=tokenizer)
                for m in li:
                    await memory.aput(m)

            asyncio.run(run())

        out["llama_index ChatMemoryBuffer.put"] = buffer
        out["llama_index Memory.put"] = memory_put
        out["llama_index Memory.aput"] = memory_aput
    except ImportError:
        pass
    return out


def bench_framework_ingest(turns: Sequence[Turn], tiered_seconds: float, *, runs: int = 3) -> list[dict[str, Any]]:
    """Seconds to store `turns` one call per turn in each framework's own history."""
    rows = []
    for system, run in _framework_ingest([t.text for t in turns]).items():
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        rows.append({"bench": "ingest", "system": system, "turns": len(turns), "seconds_median": round(median, 5),
                     "turns_per_s": round(len(turns) / median),
                     "ratio_tiered_over_this": _sig(tiered_seconds / median)})
    return rows


def _framework_assemblers(texts: Sequence[str], budget: int) -> dict[str, Callable[[], Callable[[], Any]]]:
    """System name -> a setup that stores `texts` and returns the per-query call."""
    count = _cl100k()
    out: dict[str, Callable[[], Callable[[], Any]]] = {}
    try:
        from langchain_core.messages import trim_messages

        def trim() -> Callable[[], Any]:
            messages = _lc_messages(texts)
            counter = lambda ms: sum(count.count(m.content) for m in ms)  # noqa: E731 - token_counter=
            return lambda: trim_messages(messages, max_tokens=budget, strategy="last", token_counter=counter)

        out["langchain trim_messages"] = trim
    except ImportError:
        pass
    try:
        from llama_index.core.memory import ChatMemoryBuffer, Memory

        def buffer() -> Callable[[], Any]:
            memory = ChatMemoryBuffer.from_defaults(chat_history=_li_messages(texts), token_limit=budget,
                                                    tokenizer_fn=_li_tokenizer())
            return memory.get

        def memory(asynchronous: bool) -> Callable[[], Callable[[], Any]]:
            def setup() -> Callable[[], Any]:
                store = Memory.from_defaults(session_id="bench", token_limit=budget, tokenizer_fn=_li_tokenizer())
                messages = _li_messages(texts)
                for k in range(0, len(messages), 5000):  # SQLite caps the variables of one INSERT
                    store.put_messages(messages[k:k + 5000])
                if not asynchronous:
                    return store.get
                loop = asyncio.new_event_loop()
                return lambda: loop.run_until_complete(store.aget())

            return setup

        out["llama_index ChatMemoryBuffer.get"] = buffer
        out["llama_index Memory.get"] = memory(False)
        out["llama_index Memory.aget"] = memory(True)
    except ImportError:
        pass
    return out


def bench_framework_assemble(pool: Sequence[Turn], sizes: Sequence[int], tiered: Mapping[int, float], *,
                             budget: int = 2000, queries: int = 20) -> list[dict[str, Any]]:
    """p50 / p95 of each framework's "give me the context" call with N messages stored;
    `tiered` maps N to tiered-context's p50 ms for the ratio. Calls do not depend on the
    question, so `queries` repeats the same call (at most 5 times at a system's cap)."""
    rows = []
    for n in sizes:
        texts = [pool[i % len(pool)].text for i in range(n)]
        for system, setup in _framework_assemblers(texts, budget).items():
            cap, reason = FRAMEWORK_CAPS.get(system.replace(".aget", ".get"), (None, ""))
            if cap is not None and n > cap:
                rows.append({"bench": "assemble", "system": system, "items": n, "skipped": f"capped at {cap}: {reason}"})
                continue
            call = setup()
            call()  # warm
            latencies = []
            for _ in range(queries if cap is None or n < cap else min(queries, 5)):
                started = time.perf_counter()
                call()
                latencies.append(time.perf_counter() - started)
            row = {"bench": "assemble", "system": system, "items": n, "budget": budget, **_percentiles(latencies)}
            if n in tiered:
                row["ratio_tiered_over_this"] = _sig(tiered[n] / max(row["p50_ms"], 1e-6))
            rows.append(row)
    return rows


def _percentiles(seconds: Sequence[float]) -> dict[str, Any]:
    """Nearest-rank p50 / p95 and the max of `seconds`, in milliseconds."""
    ordered = sorted(seconds)

    def rank(p: float) -> float:
        return round(1000 * ordered[max(0, math.ceil(p * len(ordered)) - 1)], 2)

    return {"queries": len(ordered), "p50_ms": rank(0.5), "p95_ms": rank(0.95), "max_ms": round(1000 * ordered[-1], 2)}


def _sig(value: float) -> float:
    """A ratio to four significant digits (a plain round() would turn 0.0004 into 0)."""
    return float(f"{value:.4g}")


def bench_compression(locomo_path: Path, qmsum_path: Path | None = None, *, llmlingua: str | None = None,
                      llmlingua_turns: int = 100) -> list[dict[str, Any]]:
    """Compressor and summarizer throughput (`bench_compress.run`), and LLMLingua's on the
    first `llmlingua_turns` turns when `llmlingua` (a local model path or cached name) is given."""
    from tiered_context.evals import bench_compress
    from tiered_context.evals.datasets import load_locomo

    ours = bench_compress.run(locomo_path, qmsum_path, repeats=1)
    rows = [{"bench": "compress", "system": "tiered SelfInformationCompressor (2x)", **ours}]
    if llmlingua is None:
        rows.append({"bench": "compress", "system": "llmlingua", "skipped": "no model given (pass llmlingua=PATH)"})
        return rows
    from tiered_context.llmlingua import LLMLinguaCompressor

    texts = [t.text for c in load_locomo(locomo_path) for t in c.turns][:llmlingua_turns]
    version = 2 if "llmlingua-2" in str(llmlingua) else 1
    compressor = LLMLinguaCompressor(llmlingua, version=version, min_tokens=0)
    compressor.compress_text(texts[0], ratio=0.5)  # load the model
    started = time.perf_counter()
    for text in texts:
        compressor.compress_text(text, ratio=0.5)
    seconds = time.perf_counter() - started
    tokens = sum(_cl100k().count_many(texts))
    rate = tokens / seconds
    rows.append({"bench": "compress", "system": f"llmlingua {Path(str(llmlingua)).name} (2x)", "turns": len(texts),
                 "tokens": tokens, "compressor_tokens_per_s_warm": round(rate),
                 "ratio_tiered_over_this": _sig(rate / ours["compressor_tokens_per_s_warm"])})
    return rows


def run_bench(locomo: Sequence[Conversation], extra: Sequence[Conversation] = (), *, sizes: Sequence[int] = (1000, 10000),
              ingest_turns: int = 600, progress: bool = True, frameworks: bool = True, framework_queries: int = 20,
              locomo_path: Path | None = None, qmsum_path: Path | None = None,
              llmlingua: str | None = None, long_histories: Sequence[Sequence[Turn]] = (),
              long_tokens: int = 115_000, only_ingest: bool = False) -> list[dict[str, Any]]:
    """Every benchmark of this module in one run; the rows `write_bench` renders.

    The long-history ingest rows use `long_histories` (e.g. LongMemEval histories: one to
    warm up, three timed) or, when none are given, histories of ~`long_tokens` tokens made
    of the given conversations' turns.

    `only_ingest=True` stops after tiered-context's ingest rows (to iterate on the put path).
    `frameworks=False` leaves the LangChain / LlamaIndex rows out. Compression rows need
    the data paths (`locomo_path`, optionally `qmsum_path`), since `bench_compress`
    reads them itself; `llmlingua` adds LLMLingua's throughput beside ours.
    """
    turns = [t for c in locomo for t in c.turns][:ingest_turns]
    pool = [t for c in (*locomo, *extra) for t in c.turns]
    questions = [q.text for c in locomo for q in c.questions][:200]
    rows = bench_ingest(turns)
    rows += bench_long_ingest(long_histories or _long_histories((*locomo, *extra), long_tokens, 4))
    if only_ingest:
        return rows
    assemble = bench_assemble(pool, questions, sizes, progress=progress)
    rows += assemble
    if frameworks:
        ours = next(r["seconds_median"] for r in rows if r["bench"] == "ingest" and "seconds_median" in r)
        rows += bench_framework_ingest(turns, ours)
        rows += bench_framework_assemble(pool, sizes, {r["items"]: r["p50_ms"] for r in assemble},
                                         queries=framework_queries)
    if locomo_path is not None:
        rows += bench_compression(locomo_path, qmsum_path, llmlingua=llmlingua)
    return rows


def write_bench(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``bench.json`` (the rows) and ``bench.md`` (one table per benchmark, the
    frameworks beside tiered-context) into `out_dir`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "bench.json", out / "bench.md"
    json_path.write_text(json.dumps(list(rows), indent=2), encoding="utf-8")
    md_path.write_text(render_bench(rows), encoding="utf-8")
    return json_path, md_path


def _ratio(row: Mapping[str, Any]) -> str:
    return f"{row['ratio_tiered_over_this']}" if "ratio_tiered_over_this" in row else ""


def render_bench(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown tables of `write_bench`; skipped and capped rows say why."""
    by = {kind: [r for r in rows if r["bench"] == kind] for kind in ("ingest", "assemble", "compress")}
    lines = ["## Ingest (one call per turn; tiered-context embeds and indexes, the others only store)", "",
             "| system | turns | seconds (median) | turns/s | model load s | tiered / this (time) |",
             "|---|---|---|---|---|---|"]
    for r in by["ingest"]:
        name = f"tiered-context, {r['embedder']}" if "embedder" in r else r["system"]
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |  |  |  |  |")
            continue
        lines.append(f"| {name} | {r['turns']} | {r['seconds_median']} | {r['turns_per_s']} | "
                     f"{r.get('model_load_s', '')} | {_ratio(r)} |")
    long = [r for r in rows if r["bench"] == "ingest_long" and "skipped" not in r]
    if long:
        lines += ["", f"## Ingest of a long history ({long[0]['turns']} turns, {long[0]['tokens']} cl100k tokens, "
                  f"median of {long[0]['histories']} histories the process had not seen; default embedder, "
                  "compressed forms and ladder included, then flush)", "",
                  "| mode | seconds (median) | CPU seconds | tokens/s (wall) | tokens per CPU second |",
                  "|---|---|---|---|---|"]
        for r in long:
            lines.append(f"| {r['mode']} | {r['seconds_median']} | {r['cpu_seconds_median']} | "
                         f"{r['tokens_per_s']} | {r['tokens_per_cpu_s']} |")
    if by["assemble"]:
        budget = next((r["budget"] for r in by["assemble"] if "budget" in r), 2000)
        lines += ["", f"## Context for one query, budget {budget} (tiered-context retrieves by the question; "
                  "the frameworks keep the most recent messages)", "",
                  "| items | system | queries | p50 ms | p95 ms | max ms | tiered / this (p50) |",
                  "|---|---|---|---|---|---|---|"]
    for r in sorted(by["assemble"], key=lambda r: r["items"]):
        name = r.get("system", "tiered-context assemble")
        if "skipped" in r:
            lines.append(f"| {r['items']} | {name} | not measured: {r['skipped']} |  |  |  |  |")
            continue
        lines.append(f"| {r['items']} | {name} | {r['queries']} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['max_ms']} | {_ratio(r)} |")
    if by["compress"]:
        lines += ["", "## Compression throughput (cl100k tokens of input per second)", "",
                  "| system | tokens | tokens/s (cold) | tokens/s (warm) | achieved ratio | tiered / this (time) |",
                  "|---|---|---|---|---|---|"]
        for r in by["compress"]:
            if "skipped" in r:
                lines.append(f"| {r['system']} | skipped: {r['skipped']} |  |  |  |  |")
                continue
            lines.append(f"| {r['system']} | {r['tokens']} | {r.get('compressor_tokens_per_s_cold', '')} | "
                         f"{r['compressor_tokens_per_s_warm']} | {r.get('compressor_achieved_ratio', '')} | {_ratio(r)} |")
            if "summarizer_tokens_per_s" in r:
                lines.append(f"| tiered ExtractiveSummarizer ({r['summarizer_batches']} batches of 100 turns) | "
                             f"{r['summarizer_tokens']} |  | {r['summarizer_tokens_per_s']} | "
                             f"{r['summarizer_ratio']} |  |")
    return "\n".join(lines) + "\n"
