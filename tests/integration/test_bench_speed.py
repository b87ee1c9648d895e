"""Speed benchmarks side by side: every system runs through its public API and lands in
the rows and the Markdown with a ratio; capped sizes say why. Behaviour, not timings."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from tiered_context.evals.bench_speed import FRAMEWORK_CAPS, render_bench, run_bench, write_bench
from tiered_context.evals.datasets import Conversation, Question, Turn

SYSTEMS = {"langchain trim_messages", "llama_index ChatMemoryBuffer.get", "llama_index Memory.get",
           "llama_index Memory.aget"}


def _conversation(n: int = 40) -> Conversation:
    topics = ["the Lisbon launch", "the budget review", "the hiring plan", "the office move"]
    turns = [Turn(id=f"t{i}", speaker="A" if i % 2 == 0 else "B", timestamp=1.7e9 + 60 * i, session=1,
                  text=f"On day {i} we talked about {topics[i % 4]}; item {i * 7 % 101} was agreed.")
             for i in range(n)]
    questions = [Question(id=f"q{k}", text=f"What was agreed on day {k * 3}?", evidence=(f"t{k * 3}",),
                          category="1", answer=None) for k in range(6)]
    return Conversation(id="c", dataset="t", turns=turns, questions=questions, speakers=("A", "B"))


def test_run_bench_puts_frameworks_beside_tiered_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a cap below the biggest size, so the capped row is exercised without a slow run
    monkeypatch.setitem(FRAMEWORK_CAPS, "llama_index ChatMemoryBuffer.get", (30, "quadratic get() (test cap)"))
    rows = run_bench([_conversation()], sizes=(20, 60), ingest_turns=20, progress=False, framework_queries=2)
    ingest = {r.get("system", r.get("embedder")) for r in rows if r["bench"] == "ingest"}
    assert {"langchain InMemoryChatMessageHistory.add_messages", "llama_index ChatMemoryBuffer.put",
            "llama_index Memory.put", "llama_index Memory.aput"} <= ingest
    assemble = [r for r in rows if r["bench"] == "assemble"]
    for n in (20, 60):
        here = {r["system"]: r for r in assemble if r["items"] == n}
        assert "tiered-context assemble" in here and SYSTEMS <= set(here)
    capped = next(r for r in assemble if r["system"] == "llama_index ChatMemoryBuffer.get" and r["items"] == 60)
    assert capped["skipped"].startswith("capped at 30: quadratic")
    measured = [r for r in assemble if r["system"] != "tiered-context assemble" and "skipped" not in r]
    assert measured and all(r["ratio_tiered_over_this"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in measured)

    json_path, md_path = write_bench(rows, tmp_path)
    text = md_path.read_text()
    assert json_path.is_file() and "| 60 | llama_index ChatMemoryBuffer.get | not measured: capped at 30" in text
    assert "| 20 | langchain trim_messages | 2 |" in text and "tiered / this" in text


def test_render_bench_shows_compression_and_a_skipped_llmlingua() -> None:
    rows = [{"bench": "compress", "system": "tiered SelfInformationCompressor (2x)", "tokens": 1000,
             "compressor_tokens_per_s_cold": 100000, "compressor_tokens_per_s_warm": 200000,
             "compressor_achieved_ratio": 1.98, "summarizer_batches": 2, "summarizer_tokens": 500,
             "summarizer_tokens_per_s": 9000, "summarizer_ratio": 8.0},
            {"bench": "compress", "system": "llmlingua", "skipped": "no model given (pass llmlingua=PATH)"}]
    text = render_bench(rows)
    assert "| tiered SelfInformationCompressor (2x) | 1000 | 100000 | 200000 | 1.98 |" in text
    assert "| llmlingua | skipped: no model given" in text
