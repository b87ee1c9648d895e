"""The frameworks' own memories as eval baselines: real LangChain `trim_messages`, real
LlamaIndex `ChatMemoryBuffer` and `Memory` (with a `VectorMemoryBlock`), on a synthetic
conversation and a LoCoMo slice, under the same budget and counter as the runner."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from tiered_context.evals.baselines import (  # noqa: E402
    FRAMEWORK_BASELINES,
    ChatMemoryBufferStrategy,
    LLMLinguaStrategy,
    LlamaIndexMemoryStrategy,
    StrategyUnavailable,
    TrimMessagesStrategy,
    llmlingua_factory,
)
from tiered_context.evals.datasets import Conversation, Question, Turn, load_locomo  # noqa: E402
from tiered_context.evals.retention import Assembly, run_eval  # noqa: E402
from tiered_context.evals.strategies import STRATEGIES, counter  # noqa: E402

LOCOMO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "locomo" / "locomo_dev5.json"
FILLER = ["We talked about the weather again today.", "The bus was late, as usual.",
          "I made pasta for dinner.", "Work was busy but fine.", "The cat slept all afternoon."]


def _synthetic(n: int = 60) -> Conversation:
    """An old, distinctive fact (turn t0) buried under `n` filler turns; two speakers."""
    turns = [Turn(id="t0", speaker="Ana", text="My passport number for the Lisbon trip is PX-4417.",
                  timestamp=0.0, session=1)]
    for i in range(1, n + 1):
        turns.append(Turn(id=f"t{i}", speaker="Bo" if i % 2 else "Ana",
                          text=f"{FILLER[i % len(FILLER)]} (day {i})", timestamp=float(i), session=1 + i // 20))
    questions = [Question(id="q0", text="What is the passport number for the Lisbon trip?",
                          evidence=("t0",), category="lookup", answer="PX-4417"),
                 Question(id="q1", text="What happened on the last day?", evidence=(f"t{n}",),
                          category="recent", answer=None)]
    return Conversation(id="synthetic", dataset="t", turns=turns, questions=questions, speakers=("Ana", "Bo"))


@pytest.fixture(scope="module")
def locomo_slice() -> Conversation:
    if not LOCOMO.is_file():
        pytest.skip(f"LoCoMo data not found at {LOCOMO}")
    conv = load_locomo(LOCOMO)[0]
    return replace(conv, questions=conv.questions[:8])


def test_registered_as_strategies() -> None:
    for name, factory in FRAMEWORK_BASELINES.items():
        assert STRATEGIES[name] is factory and factory().name == name


@pytest.mark.parametrize("name", list(FRAMEWORK_BASELINES))
def test_budget_is_never_crossed(name: str, locomo_slice: Conversation) -> None:
    strategy = STRATEGIES[name]()
    strategy.ingest(locomo_slice)
    ids = {t.id for t in locomo_slice.turns}
    for budget in (60, 500, 2000):
        for q in locomo_slice.questions:
            packed = strategy.context(q, budget)
            assert packed.tokens == counter().count(packed.text) <= budget
            assert packed.covered <= ids
            if budget >= 500:
                assert packed.covered, f"{name} kept nothing at {budget} tokens"


@pytest.mark.parametrize("factory", [TrimMessagesStrategy, ChatMemoryBufferStrategy])
def test_recency_memories_keep_the_latest_turns(factory: Any) -> None:
    conv = _synthetic()
    strategy = factory()
    strategy.ingest(conv)
    recent, old = conv.questions[1], conv.questions[0]
    packed = strategy.context(recent, 150)
    assert "t60" in packed.covered and "t0" not in packed.covered
    assert packed.text.endswith(f"Ana: {conv.turns[-1].text}")
    # every covered turn's line is in the text, in order, one per line
    lines = packed.text.split("\n")
    assert lines == [f"{t.speaker}: {t.text}" for t in conv.turns if t.id in packed.covered]
    assert strategy.context(old, 150).covered == packed.covered  # question-agnostic


def test_trim_messages_uses_the_whole_budget_when_all_fits() -> None:
    conv = _synthetic(6)
    strategy = TrimMessagesStrategy()
    strategy.ingest(conv)
    packed = strategy.context(conv.questions[0], 10_000)
    assert packed.covered == {t.id for t in conv.turns}


def test_memory_retrieves_an_old_turn_through_its_vector_block() -> None:
    conv = _synthetic()
    strategy = LlamaIndexMemoryStrategy()
    strategy.ingest(conv)
    packed = strategy.context(conv.questions[0], 400)
    assert packed.tokens <= 400
    assert "t0" in packed.covered, "the VectorMemoryBlock should bring back the passport turn"
    assert "<memory>" in packed.text and "PX-4417" in packed.text
    assert "t60" in packed.covered  # short-term memory holds the latest turns


def test_run_eval_drives_the_frameworks(locomo_slice: Conversation) -> None:
    seen: list[Assembly] = []
    conv = replace(locomo_slice, questions=locomo_slice.questions[:3])
    rows = run_eval({"locomo": [conv]}, list(FRAMEWORK_BASELINES), [300, 1200], progress=False,
                    on_assembly=seen.append)
    assert len(seen) == len(FRAMEWORK_BASELINES) * 2 * len(conv.questions)
    assert all(a.tokens <= a.budget and a.report is None for a in seen)
    overall = {(r["strategy"], r["budget"]) for r in rows if r["category"] == "all"}
    assert overall == {(n, b) for n in FRAMEWORK_BASELINES for b in (300, 1200)}


class _HalfCompressor:
    """Stands in for the LLMLingua model (a model, not an LLM API, but far too heavy for a
    unit run): keeps the first half of the words."""

    def compress_text(self, text: str, ratio: float) -> str:
        words = text.split()
        return " ".join(words[: max(1, int(len(words) * ratio))])


def test_llmlingua_strategy_packs_compressed_recent_turns() -> None:
    conv = _synthetic(20)
    strategy = LLMLinguaStrategy("unused", compressor=_HalfCompressor())
    strategy.ingest(conv)
    packed = strategy.context(conv.questions[1], 80)
    assert packed.tokens <= 80 and "t20" in packed.covered
    assert packed.compression_ratio is not None and packed.compression_ratio > 1.2
    assert "(day 20)" not in packed.text  # the second half of each turn is gone


def test_llmlingua_without_a_model_says_which_flag() -> None:
    with pytest.raises(StrategyUnavailable, match="--llmlingua-model"):
        llmlingua_factory(None)()


def test_summarizing_baselines_need_an_llm() -> None:
    from tiered_context.evals.summary_baselines import SUMMARY_BASELINES, summary_factories

    for name, factory in summary_factories(None).items():
        assert name in SUMMARY_BASELINES and name in STRATEGIES
        with pytest.raises(StrategyUnavailable, match="--summarizer"):
            factory()


def test_llama_index_summary_memory_with_a_mock_llm() -> None:
    from llama_index.core.llms import MockLLM

    from tiered_context.evals.summary_baselines import summary_factories

    factories = summary_factories(MockLLM(max_tokens=20))
    with pytest.raises(StrategyUnavailable, match="LangChain chat model"):
        factories["langchain_summarization"]()
    conv = _synthetic()
    strategy = factories["llama_index_summary_memory"]()
    strategy.ingest(conv)
    packed = strategy.context(conv.questions[1], 200)
    assert packed.tokens <= 200 and "t60" in packed.covered and "t0" not in packed.covered


def test_langchain_summarization_with_a_fake_chat_model() -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from tiered_context.evals.summary_baselines import summary_factories

    model = FakeListChatModel(responses=["Ana and Bo chatted about daily life."])
    strategy = summary_factories(model)["langchain_summarization"]()
    conv = _synthetic()
    strategy.ingest(conv)
    packed = strategy.context(conv.questions[1], 200)
    assert packed.tokens <= 200 and "chatted about daily life" in packed.text
    assert "t60" in packed.covered and "t0" not in packed.covered
