"""RAGAS rows from the eval's assemblies: the non-LLM metrics on real strategies, the
sampling, and the judge path with a fake LangChain judge (plumbing, not numbers)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ragas")
pytest.importorskip("rapidfuzz")

from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from langchain_core.messages import BaseMessage  # noqa: E402

from tiered_context.evals.datasets import limit, load_locomo  # noqa: E402
from tiered_context.evals.ragas_eval import RagasCollector, sample_of  # noqa: E402
from tiered_context.evals.retention import ROW_KEYS  # noqa: E402
from tiered_context.evals.strategies import STRATEGIES  # noqa: E402

EVIDENCE = "Caroline: I moved the Lisbon launch to 3 May because the venue flooded."
OTHER = "Melanie: The pottery class on Tuesday was great, I made a blue bowl."


def assembly(**overrides: Any) -> Any:
    """An `evals.retention.Assembly` when it exists, else an object with its fields."""
    values: dict[str, Any] = dict(
        dataset="locomo", conversation_id="c1", question_id="q1", category="4", strategy="bm25",
        budget=100, question="When is the Lisbon launch?", answer="3 May", context=f"{OTHER}\n{EVIDENCE}",
        tokens=40, covered=frozenset({"D1:2"}), evidence=("D1:2",), evidence_texts=(EVIDENCE,), recall=1.0,
        latency_ms=1.0, compression_ratio=None, report=None)
    values.update(overrides)
    try:
        from tiered_context.evals.retention import Assembly  # type: ignore[attr-defined]
    except ImportError:
        return SimpleNamespace(**values)
    return Assembly(**{f.name: values[f.name] for f in fields(Assembly) if f.name in values})


def by_category(rows: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    return {(r["strategy"], r["budget"], r["category"]): r for r in rows}


def test_ragas_is_told_not_to_track():
    assert os.environ["RAGAS_DO_NOT_TRACK"] == "true"


def test_sample_maps_the_assembly_onto_ragas_fields():
    sample = sample_of(assembly())
    assert sample.user_input == "When is the Lisbon launch?"
    assert sample.retrieved_contexts == [OTHER, EVIDENCE]  # one context per line (turn)
    assert sample.reference_contexts == [EVIDENCE] and sample.reference == "3 May"


def test_non_llm_metrics_score_what_the_context_holds():
    collector = RagasCollector()
    collector(assembly())
    collector(assembly(strategy="recency", context=OTHER, recall=0.0, covered=frozenset()))
    collector(assembly(strategy="empty", context="", tokens=0, recall=0.0, covered=frozenset()))
    collector(assembly(strategy="bm25", evidence=(), evidence_texts=()))  # nothing to score against
    rows = collector.rows()
    for row in rows:
        assert set(ROW_KEYS) <= row.keys() and row["category"].startswith("ragas:")
    got = by_category(rows)
    hit, miss = ("bm25", 100), ("recency", 100)
    assert got[(*hit, "ragas:non_llm_context_recall")]["recall"] == 1.0
    assert got[(*miss, "ragas:non_llm_context_recall")]["recall"] == 0.0
    assert got[(*hit, "ragas:non_llm_context_precision_with_reference")]["recall"] == pytest.approx(0.5, abs=1e-6)
    assert got[(*hit, "ragas:string_present")]["recall"] == 1.0
    assert got[(*miss, "ragas:string_present")]["recall"] == 0.0
    assert got[("empty", 100, "ragas:non_llm_context_recall")]["recall"] == 0.0
    assert got[(*hit, "ragas:non_llm_context_recall")]["sampled_from"] == 1  # the no-evidence one was skipped


def test_jobs_score_the_groups_in_workers_with_the_same_rows():
    collector = RagasCollector()
    collector(assembly())
    collector(assembly(strategy="recency", context=OTHER, recall=0.0, covered=frozenset()))
    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(collector.rows(jobs=2)) == strip(collector.rows())


def test_real_strategies_on_locomo(shared_data):
    conv = limit(load_locomo(shared_data / "locomo" / "locomo_dev5.json"), conversations_max=1, questions_max=12)[0]
    turns = {t.id: t for t in conv.turns}
    collector = RagasCollector()
    for name in ("recency", "bm25"):
        strategy = STRATEGIES[name]()
        strategy.ingest(conv)
        for q in conv.questions:
            packed = strategy.context(q, 1000)
            evidence = tuple(e for e in q.evidence if e in turns)
            collector(assembly(strategy=name, budget=1000, question=q.text, answer=q.answer, context=packed.text,
                               tokens=packed.tokens, evidence=evidence,
                               evidence_texts=tuple(turns[e].text for e in evidence)))
    got = by_category(collector.rows())
    bm25 = got[("bm25", 1000, "ragas:non_llm_context_recall")]
    recency = got[("recency", 1000, "ragas:non_llm_context_recall")]
    assert bm25["questions"] == recency["questions"] == 12
    assert bm25["recall"] > recency["recall"]
    assert bm25["ci_low"] <= bm25["recall"] <= bm25["ci_high"] and 0 < bm25["mean_tokens"] <= 1000


def test_sampling_keeps_a_seeded_subset_per_group():
    def run(seed: int) -> list[str]:
        collector = RagasCollector(sample=3, seed=seed)
        for i in range(10):
            collector(assembly(question_id=f"q{i}", question=f"question {i}?"))
        collector(assembly(strategy="recency", budget=200))
        rows = by_category(collector.rows())
        row = rows[("bm25", 100, "ragas:non_llm_context_recall")]
        assert row["questions"] == 3 and row["sampled_from"] == 10
        assert rows[("recency", 200, "ragas:non_llm_context_recall")]["questions"] == 1
        return sorted(s.user_input for s in collector.samples())

    assert run(0) == run(0)
    with pytest.raises(ValueError, match="sample must be"):
        RagasCollector(sample=0)


class RoutingJudge(FakeListChatModel):
    """A fake judge that answers each RAGAS prompt with valid JSON for its schema."""

    prompts: list[str] = []

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        text = "\n".join(str(m.content) for m in messages)
        self.prompts.append(text)
        lower = text.lower()
        if "answer the question using only the context" in lower:
            return "The launch is on 3 May."
        if "faithfulness" in lower and "verdict" in lower:
            verdict = {"statement": "The launch is on 3 May.", "reason": "stated", "verdict": 1}
            return json.dumps({"statements": [verdict]})
        if '"tp"' in lower or "ground truth" in lower and "classif" in lower:
            item = {"statement": "The launch is on 3 May.", "reason": "matches"}
            return json.dumps({"TP": [item], "FP": [], "FN": []})
        if "verdict" in lower and "context" in lower and "useful" in lower:
            return json.dumps({"reason": "it gives the date", "verdict": 1})
        return json.dumps({"statements": ["The launch is on 3 May."]})


def test_judge_path_runs_the_llm_metrics_offline():
    judge = RoutingJudge(responses=["unused"], prompts=[])
    collector = RagasCollector(judge=judge)
    collector(assembly())
    collector(assembly(question_id="q2", answer=None))  # no reference answer: no LLM metric for it
    got = by_category(collector.rows())
    for name in ("faithfulness", "answer_correctness", "llm_context_precision_with_reference"):
        row = got[("bm25", 100, f"ragas:{name}")]
        assert row["questions"] == 1 and 0.0 <= row["recall"] <= 1.0
    assert got[("bm25", 100, "ragas:faithfulness")]["recall"] == 1.0
    assert got[("bm25", 100, "ragas:answer_correctness")]["recall"] == 1.0
    assert got[("bm25", 100, "ragas:non_llm_context_recall")]["questions"] == 2
    assert any("Answer the question using only the context" in p for p in judge.prompts)
    assert len(judge.prompts) >= 5  # answer, statements, NLI, classification, precision


def test_rows_inside_an_event_loop_and_async_twin():
    collector = RagasCollector()
    collector(assembly())

    async def inside() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return collector.rows(), await collector.arows()

    sync_rows, async_rows = asyncio.run(inside())
    assert sync_rows == async_rows or [r["recall"] for r in sync_rows] == [r["recall"] for r in async_rows]


def test_judge_types_are_checked():
    from llama_index.core.llms import MockLLM

    assert RagasCollector(judge=MockLLM()).judge is not None  # LlamaIndex LLMs are wrapped too
    with pytest.raises(TypeError, match="LangChain chat model"):
        RagasCollector(judge="gpt-4o")


class BrokenJudge(RoutingJudge):
    """Answers the question, then never returns JSON RAGAS can parse."""

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        text = super()._call(messages, *args, **kwargs)
        return text if not text.startswith("{") else "I would rather not say."


def test_a_failing_judge_costs_samples_not_the_run():
    collector = RagasCollector(judge=BrokenJudge(responses=["unused"], prompts=[]))
    collector(assembly())
    got = by_category(collector.rows())
    assert got[("bm25", 100, "ragas:non_llm_context_recall")]["recall"] == 1.0  # the LLM-free rows survive
    assert ("bm25", 100, "ragas:faithfulness") not in got  # no sample scored: no row (and a warning)
