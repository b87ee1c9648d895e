"""Summarizers: the extractive default, the LLM summarizer with fake LlamaIndex and
LangChain models, rejection of bad summaries, retries, timeouts and the async twins."""

from __future__ import annotations

import asyncio
import time

import pytest

from tiered_context import (
    ContextItem,
    ExtractiveSummarizer,
    LLMSummarizer,
    Summarizer,
    SummaryConfig,
    SummaryError,
    SummaryRejected,
    TokenCounter,
)
from tiered_context.core._summarize import make_summary, summary_id
from tiered_context.errors import ConfigError
from tiered_context.testing import HashEmbedder

COUNTER = TokenCounter()
DAY = 86_400
T0 = 1_683_547_200  # 8 May 2023, 12:00 UTC
CHAT = [
    ("Caroline", "Hey Mel! Good to see you! How have you been?"),
    ("Melanie", "Wow, that's awesome, Caroline!"),
    ("Caroline", "I went to a LGBTQ support group yesterday and it was so powerful."),
    ("Melanie", "Thanks! I painted a lake sunrise last year for my kids, it hangs in the hallway."),
    ("Caroline", "Haha, so cool!"),
    ("Melanie", "We are going camping at Lake Tahoe on 20 July with the 3 kids."),
    ("Caroline", "I am researching adoption agencies because I want to give kids a loving home."),
    ("Melanie", "Yeah, totally, me too!"),
]


def turns(n: int = len(CHAT), start: int = 0) -> list[ContextItem]:
    out = []
    for k in range(start, start + n):
        speaker, text = CHAT[k % len(CHAT)]
        item = ContextItem.create(f"{text}" if k < len(CHAT) else f"{text} (turn {k})", id=f"t{k}",
                                  timestamp=T0 + k * DAY // 4, metadata={"speaker": speaker, "dia_id": f"D1:{k}"})
        out.append(item.evolve(tokens=COUNTER.count(item.text), seq=k, importance=0.5))
    return out


@pytest.fixture
def extractive() -> ExtractiveSummarizer:
    return ExtractiveSummarizer(counter=COUNTER, embedder=HashEmbedder(), ratio=0.5)


# -- the summary item -----------------------------------------------------------------------
def test_make_summary_validates_and_keeps_provenance() -> None:
    items = turns(4)
    summary = make_summary("Caroline went to a support group; Melanie painted a sunrise.", items, None,
                           counter=COUNTER, method="test")
    assert summary.role == "summary" and summary.is_derived
    assert summary.source_ids == tuple(i.id for i in items)
    assert summary.id == summary_id(items, None) and summary.id.startswith("sum_")
    assert summary.metadata["summary_level"] == 1 and summary.metadata["first_seq"] == 0
    assert summary.metadata["last_seq"] == 3 and summary.tokens == COUNTER.count(summary.text)
    with pytest.raises(SummaryRejected, match="empty"):
        make_summary("   ", items, None, counter=COUNTER, method="test")
    longer = " ".join(i.text for i in items) + " and more"
    with pytest.raises(SummaryRejected, match="not shorter"):
        make_summary(longer, items, None, counter=COUNTER, method="test")
    assert issubclass(SummaryRejected, SummaryError)


def test_summary_config_is_validated() -> None:
    assert SummaryConfig().capacity(1) == 256 and SummaryConfig(chain_items=10, fanout=3).capacity(3) == 90
    for bad in ({"fanout": 1}, {"chain_items": 1}, {"fact_threshold": 2.0}, {"max_fact_items": -1}):
        with pytest.raises(ConfigError):
            SummaryConfig(**bad)


# -- extractive -------------------------------------------------------------------------------
def test_extractive_keeps_informative_sentences_with_attribution(extractive: ExtractiveSummarizer) -> None:
    assert isinstance(extractive, Summarizer)
    items = turns()
    summary = extractive.summarize(items)
    assert summary.tokens < sum(i.tokens for i in items)
    assert summary.metadata["method"] == "extractive"
    lines = summary.text.split("\n")
    assert lines[0] == "[9 May 2023]"  # who said it, and when
    assert all(line.startswith(("Caroline: ", "Melanie: ", "[")) for line in lines)
    assert "Melanie: We are going camping at Lake Tahoe on 20 July with the 3 kids." in lines
    assert "Haha, so cool" not in summary.text and "totally, me too" not in summary.text  # chit-chat goes
    assert set(summary.source_ids) == {i.id for i in items}


def test_extractive_is_incremental(extractive: ExtractiveSummarizer) -> None:
    first = extractive.summarize(turns(8))
    new = turns(8, start=8)
    second = extractive.summarize(new, previous=first)
    assert second.id != first.id and second.metadata["previous"] == first.id
    assert list(second.source_ids) == [i.id for i in turns(16)]
    assert second.metadata["summary_level"] == 1
    assert second.tokens < first.tokens + sum(i.tokens for i in new)


def test_extractive_summaries_of_summaries(extractive: ExtractiveSummarizer) -> None:
    parts = [extractive.summarize(turns(8, start=8 * k)) for k in range(3)]
    top = extractive.summarize(parts)
    assert top.metadata["summary_level"] == 2 and top.metadata["children"] == [p.id for p in parts]
    assert list(top.source_ids) == [i.id for i in turns(24)]  # down to the originals
    assert top.tokens < sum(p.tokens for p in parts)


def test_extractive_throughput() -> None:
    """A loose floor; `python -m tiered_context.evals.bench_compress` measures the real figure."""
    summarizer = ExtractiveSummarizer(counter=COUNTER, embedder=HashEmbedder())
    items = turns(400)
    total = sum(i.tokens for i in items)
    started = time.perf_counter()
    summarizer.summarize(items)
    assert total / (time.perf_counter() - started) > 2_000


def test_extractive_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="ratio"):
        ExtractiveSummarizer(ratio=1.5)
    with pytest.raises(ConfigError, match="max_tokens"):
        ExtractiveSummarizer(max_tokens=3)


# -- LLM summarizer ---------------------------------------------------------------------------
def test_llama_index_llm() -> None:
    MockLLM = pytest.importorskip("llama_index.core.llms").MockLLM

    items = turns()
    summarizer = LLMSummarizer(MockLLM(max_tokens=12), counter=COUNTER, retries=0)
    assert summarizer.kind == "llama_index"
    summary = summarizer.summarize(items)
    assert summary.metadata["method"] == "llm:llama_index" and summary.text.startswith("text")
    assert set(summary.source_ids) == {i.id for i in items}
    again = asyncio.run(summarizer.asummarize(items))
    assert again.text == summary.text and again.id == summary.id


def test_an_echoing_llm_is_rejected() -> None:
    MockLLM = pytest.importorskip("llama_index.core.llms").MockLLM

    summarizer = LLMSummarizer(MockLLM(), counter=COUNTER, retries=0)  # echoes the prompt: longer than the input
    with pytest.raises(SummaryRejected, match="not shorter"):
        summarizer.summarize(turns())


def test_langchain_chat_model_and_prompts() -> None:
    FakeListChatModel = pytest.importorskip("langchain_core.language_models").FakeListChatModel

    model = FakeListChatModel(responses=["Caroline went to an LGBTQ support group on 7 May 2023.",
                                         "Melanie plans camping at Lake Tahoe on 20 July."])
    summarizer = LLMSummarizer(model, counter=COUNTER, retries=0)
    assert summarizer.kind == "langchain"
    first = summarizer.summarize(turns(4))
    assert first.text.startswith("Caroline went") and first.metadata["method"] == "llm:langchain"
    second = asyncio.run(summarizer.asummarize(turns(4, start=4), previous=first))
    assert second.text.startswith("Melanie plans") and second.metadata["previous"] == first.id
    prompt = summarizer.build_prompt(turns(4, start=4), first)
    assert first.text in prompt and "names, number, date" not in prompt
    for wanted in ("name", "number", "date", "decision", "[9 May 2023]", "Caroline: "):
        assert wanted in prompt
    merge = summarizer.build_prompt([first, second], None)
    assert "summaries of consecutive parts" in merge


def test_langchain_content_blocks() -> None:
    GenericFakeChatModel = pytest.importorskip("langchain_core.language_models").GenericFakeChatModel
    from langchain_core.messages import AIMessage

    reply = AIMessage(content=[{"type": "text", "text": "Caroline adopts "}, {"type": "text", "text": "a dog."}])
    summarizer = LLMSummarizer(GenericFakeChatModel(messages=iter([reply])), counter=COUNTER, retries=0)
    assert summarizer.summarize(turns()).text == "Caroline adopts a dog."


def test_failures_are_retried_with_backoff_then_raise() -> None:
    calls: list[float] = []

    def flaky(prompt: str) -> str:
        calls.append(time.perf_counter())
        if len(calls) < 3:
            raise ConnectionError("model down")
        return "Caroline went to a support group."

    summarizer = LLMSummarizer(flaky, counter=COUNTER, retries=2, backoff=0.01, timeout=None)
    assert summarizer.summarize(turns()).text.startswith("Caroline")
    assert len(calls) == 3 and calls[2] - calls[1] >= calls[1] - calls[0]  # exponential backoff

    def down(prompt: str) -> str:
        raise ConnectionError("model down")

    failing = LLMSummarizer(down, counter=COUNTER, retries=1, backoff=0)
    with pytest.raises(SummaryError, match="2 attempts"):
        failing.summarize(turns())
    assert failing.failures == 2
    with pytest.raises(SummaryError):
        asyncio.run(failing.asummarize(turns()))


def test_timeouts_sync_and_async() -> None:
    def slow(prompt: str) -> str:
        time.sleep(0.5)
        return "late"

    with pytest.raises(SummaryError, match="timed out"):
        LLMSummarizer(slow, counter=COUNTER, timeout=0.05, retries=0).summarize(turns())

    async def aslow(prompt: str) -> str:
        await asyncio.sleep(0.5)
        return "late"

    with pytest.raises(SummaryError, match="timed out"):
        asyncio.run(LLMSummarizer(aslow, counter=COUNTER, timeout=0.05, retries=0).asummarize(turns()))


def test_unusable_llm_and_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="LlamaIndex LLM"):
        LLMSummarizer(42)
    with pytest.raises(ConfigError):
        LLMSummarizer(lambda p: p, retries=-1)
