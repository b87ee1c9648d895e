"""Speed benchmarks: ingest rate and assembly latency, on real conversation text.

    tiered-context bench --data-locomo ../shared/data/locomo/locomo_dev5.json \\
        --data-qmsum ../shared/data/qmsum/train --out out/bench

- **ingest**: a 600-turn conversation (LoCoMo turns, in order) put turn by turn through
  the public API, embeddings included, then `flush()`; median of 3 warm runs, plus the
  cold start (model load) separately. For each embedder.
- **assemble**: `assemble(question, budget=2000)` latency with N items stored (LoCoMo and
  QMSum turns cycled to N), over up to 200 LoCoMo questions; p50 and p95.

Numbers are wall-clock seconds on whatever machine runs it; the README quotes a run.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tiered_context.evals.datasets import Conversation, Turn

__all__ = ["bench_ingest", "bench_assemble", "run_bench", "write_bench"]


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
        latencies.sort()
        rows.append({
            "bench": "assemble", "items": n, "budget": budget, "queries": len(latencies),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
            "p95_ms": round(1000 * latencies[int(len(latencies) * 0.95) - 1], 2),
            "max_ms": round(1000 * latencies[-1], 2),
        })
        ctx.close()
    return rows


def run_bench(locomo: Sequence[Conversation], extra: Sequence[Conversation] = (), *, sizes: Sequence[int] = (1000, 10000),
              ingest_turns: int = 600, progress: bool = True) -> list[dict[str, Any]]:
    turns = [t for c in locomo for t in c.turns][:ingest_turns]
    pool = [t for c in (*locomo, *extra) for t in c.turns]
    questions = [q.text for c in locomo for q in c.questions][:200]
    return bench_ingest(turns) + bench_assemble(pool, questions, sizes, progress=progress)


def write_bench(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "bench.json", out / "bench.md"
    json_path.write_text(json.dumps(list(rows), indent=2), encoding="utf-8")
    lines = ["## Ingest (one `put` per turn, embeddings included)", "",
             "| embedder | turns | seconds (median of 3) | turns/s | model load s |", "|---|---|---|---|---|"]
    lines += [f"| {r['embedder']} | {r['turns']} | {r['seconds_median']} | {r['turns_per_s']} | {r['model_load_s']} |"
              for r in rows if r["bench"] == "ingest" and "turns" in r]
    lines += ["", "## Assemble latency (budget 2000, default embedder)", "",
              "| items | queries | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['items']} | {r['queries']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} |"
              for r in rows if r["bench"] == "assemble"]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path
