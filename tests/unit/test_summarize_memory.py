"""Progressive summaries inside `TieredContext`: folded from the ladder's retiring items,
archived as derived items, hierarchical, fact-checked, failure-safe and replayed on reopen."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from tiered_context import (
    Budget,
    ContextItem,
    ExtractiveSummarizer,
    Kind,
    LLMSummarizer,
    LadderLevel,
    Namespace,
    SummaryConfig,
    Tier,
    TieredContext,
    TokenCounter,
)
from tiered_context.core._compaction import RETRY_AFTER_ITEMS
from tiered_context.core._summarize import make_summary
from tiered_context.testing import HashEmbedder

T0 = 1_714_000_000
COUNTER = TokenCounter()


def message(i: int) -> str:
    return f"Message {i}: the team discussed the quarterly roadmap, hiring plans and the Lisbon office budget of {i * 100} euros."


class Recording:
    """Wraps a summarizer; records every call and the thread it ran on."""

    def __init__(self, inner=None, *, fail: bool = False) -> None:
        self.inner = inner
        self.fail = fail
        self.calls: list[tuple[int, str | None]] = []
        self.threads: list[str] = []

    def summarize(self, items: Sequence[ContextItem], previous: ContextItem | None = None) -> ContextItem:
        self.calls.append((len(items), previous.id if previous else None))
        self.threads.append(threading.current_thread().name)
        if self.fail:
            raise ConnectionError("summary model down")
        return self.inner.summarize(items, previous)

    async def asummarize(self, items, previous=None):  # pragma: no cover - the memory calls the sync one
        return self.summarize(items, previous)


def make_ctx(summarizer=None, *, summary: SummaryConfig | None = None, compaction: str = "inline", events=None,
             path=None) -> TieredContext:
    embedder = HashEmbedder()
    return TieredContext(
        session_id="sum", embedder=embedder, compaction=compaction, budget=Budget(max_tokens=100), path=path,
        summarizer=summarizer or ExtractiveSummarizer(embedder=embedder),
        summary=summary or SummaryConfig(min_batch_tokens=64),
        on_event=None if events is None else events.append,
    )


def fill(ctx: TieredContext, n: int = 80) -> list[ContextItem]:
    return [ctx.put(message(i), timestamp=T0 + 3600 * i, metadata={"dia_id": f"D1:{i}", "speaker": "Ana"})
            for i in range(n)]


def test_retiring_items_are_folded_into_an_archived_summary() -> None:
    events: list = []
    recorder = Recording(ExtractiveSummarizer(embedder=HashEmbedder()))
    ctx = make_ctx(recorder, events=events)
    items = fill(ctx)
    assert recorder.calls and all(n > 1 for n, _ in recorder.calls)  # batched, never per turn
    assert len(recorder.calls) < 20
    (summary,) = ctx.summaries  # one running level-1 summary (incremental: previous + new items)
    assert summary.role == "summary" and summary.tier == Tier.L3 and summary.is_derived
    assert any(previous is not None for _, previous in recorder.calls)  # incremental: previous + new items
    stored = ctx.store.get(Namespace(session="sum", kind=Kind.SUMMARIES).key, [summary.id])
    assert stored == [summary]  # archived in the store, apart from the originals
    retired = {i.id for i in items} - {w.origin_ids[0] for w in ctx.working_set}
    assert retired and retired <= set(summary.source_ids)
    originals = ctx.store.get("sum", summary.source_ids)
    assert len(originals) == len(summary.source_ids) and not any(o.is_derived for o in originals)
    assert len(ctx) == 80  # originals only; the summary does not count as history
    check = summary.metadata["fact_check"]
    assert check["facts"] > 0 and 0 <= check["retention"] <= 1
    notes = [e.detail for e in events if e.level == LadderLevel.COMPRESS and "summarized" in e.detail]
    assert notes and "facts kept" in notes[-1]


def test_summaries_of_summaries_reach_down_to_the_originals() -> None:
    ctx = make_ctx(summary=SummaryConfig(min_batch_tokens=32, chain_items=6, fanout=2))
    items = fill(ctx, 120)
    levels = [s.metadata["summary_level"] for s in ctx.summaries]
    assert max(levels) >= 2, levels
    top = next(s for s in ctx.summaries if s.metadata["summary_level"] >= 2)
    assert top.metadata["children"]
    children = ctx.store.get(Namespace(session="sum", kind=Kind.SUMMARIES).key, top.metadata["children"])
    assert len(children) == len(top.metadata["children"])
    assert set(top.source_ids) == {o for c in children for o in c.source_ids}
    assert set(top.source_ids) <= {i.id for i in items}
    live = [o for s in ctx.summaries for o in s.source_ids]
    assert len(live) == len(set(live))  # the live summaries never overlap


def test_a_failing_summarizer_leaves_history_exactly_as_it_was() -> None:
    events: list = []
    recorder = Recording(fail=True)
    ctx = make_ctx(recorder, events=events)
    before_failure = []
    i = 0
    while not recorder.calls:
        before_failure = [w.id for w in ctx.working_set]
        ctx.put(message(i), timestamp=T0 + i)
        i += 1
    assert ctx.summaries == []  # no placeholder, no partial summary
    failed = [e for e in events if "summary failed" in e.detail]
    assert len(failed) == 1 and "history unchanged" in failed[0].detail
    working = {w.origin_ids[0] for w in ctx.working_set}
    assert set(i.split("~")[0] for i in before_failure) <= working | {w.id for w in ctx.working_set}
    assert len(ctx) == i
    calls = len(recorder.calls)
    for j in range(RETRY_AFTER_ITEMS - 1):  # retried only after more puts
        ctx.put(message(1000 + j))
    assert len(recorder.calls) == calls
    out = ctx.assemble("roadmap", budget=150)
    assert any("summary failed" in e.detail for e in out.report.events)
    # the model comes back: the waiting items are summarized, nothing was lost
    recorder.fail, recorder.inner = False, ExtractiveSummarizer(embedder=HashEmbedder())
    for j in range(3 * RETRY_AFTER_ITEMS):
        ctx.put(message(2000 + j))
    assert ctx.summaries


def test_an_llm_that_echoes_is_rejected_and_the_originals_stay() -> None:
    MockLLM = pytest.importorskip("llama_index.core.llms").MockLLM

    events: list = []
    ctx = make_ctx(LLMSummarizer(MockLLM(), retries=0), events=events)  # echoes its (longer) prompt
    fill(ctx, 40)
    assert ctx.summaries == []
    assert any("not shorter" in e.detail for e in events)
    assert len(ctx) == 40


def test_llm_summaries_from_a_langchain_model_in_the_background() -> None:
    FakeListChatModel = pytest.importorskip("langchain_core.language_models").FakeListChatModel

    model = FakeListChatModel(responses=["Ana discussed the Lisbon budget and hiring."] * 50)
    recorder = Recording(LLMSummarizer(model, retries=0))
    ctx = make_ctx(recorder, compaction="background")
    try:
        fill(ctx, 60)
        ctx.flush()
        assert ctx.summaries and ctx.summaries[-1].metadata["method"] == "llm:langchain"
        assert all(name.startswith("tiered-compaction") for name in recorder.threads)
    finally:
        ctx.close()


class DropsEverything:
    """A summarizer whose summaries keep no names, numbers or dates."""

    def summarize(self, items, previous=None):
        return make_summary("They talked about work.", items, previous, counter=COUNTER, method="test")

    async def asummarize(self, items, previous=None):  # pragma: no cover
        return self.summarize(items, previous)


def test_high_scoring_missing_facts_stay_verbatim_in_l2() -> None:
    events: list = []
    ctx = make_ctx(DropsEverything(), summary=SummaryConfig(min_batch_tokens=64, fact_threshold=0.0, max_fact_items=2),
                   events=events)
    fill(ctx, 40)
    summary = ctx.summaries[-1]
    assert summary.metadata["fact_check"]["retention"] < 0.5
    assert summary.metadata["kept_in_l2"]
    kept = set(summary.metadata["kept_in_l2"])
    working = {w.origin_ids[0]: w for w in ctx.working_set}
    still = kept & set(working)
    assert still, "items holding the dropped facts stay in the working set"
    for origin in still:
        (original,) = ctx.store.get("sum", [origin])
        digits = [w for w in original.text.split() if any(c.isdigit() for c in w)]
        assert all(d.strip(":.,") in working[origin].text for d in digits)  # the facts, verbatim
    assert any("kept in L2 for their facts" in e.detail for e in events)


def test_summaries_are_assembly_candidates_with_their_fact_check() -> None:
    ctx = make_ctx(summary=SummaryConfig(min_batch_tokens=64))
    items = fill(ctx, 80)
    out = ctx.assemble("", budget=2000)  # recency-driven: old turns are not retrieved verbatim
    summaries = [i for i in out.items if i.role == "summary"]
    assert summaries, out.text
    for s in summaries:
        assert out.report.fact_checks[s.id]["facts"] > 0
        assert not set(s.source_ids) & {o for i in out.items if i is not s for o in i.origin_ids}
    covered = out.covered("dia_id")
    summarized = {i.metadata["dia_id"] for i in items if any(i.id in s.source_ids for s in summaries)}
    assert not covered & summarized  # a summary never counts as covering its sources
    off = TieredContext(session_id="off", embedder=HashEmbedder(), compaction="inline", budget=Budget(max_tokens=100),
                        summary=SummaryConfig(min_batch_tokens=64, candidates=False))
    fill(off, 80)
    assert off.summaries and not [i for i in off.assemble("", budget=2000).items if i.role == "summary"]


def test_disabled_summaries() -> None:
    recorder = Recording(ExtractiveSummarizer(embedder=HashEmbedder()))
    ctx = make_ctx(recorder, summary=SummaryConfig(enabled=False))
    fill(ctx, 60)
    assert recorder.calls == [] and ctx.summaries == []


def test_reopen_replays_summaries_without_asking_again(tmp_path) -> None:
    first = Recording(ExtractiveSummarizer(embedder=HashEmbedder()))
    ctx = make_ctx(first, path=tmp_path)
    fill(ctx, 80)
    summaries = [s.id for s in ctx.summaries]
    working = [(w.id, w.tier) for w in ctx.working_set]
    before = ctx.assemble("Lisbon budget", budget=300).text
    assert first.calls and summaries
    ctx.close()

    second = Recording(ExtractiveSummarizer(embedder=HashEmbedder()))
    reopened = make_ctx(second, path=tmp_path)
    try:
        assert second.calls == []  # taken from the archive
        assert [s.id for s in reopened.summaries] == summaries
        assert [(w.id, w.tier) for w in reopened.working_set] == working
        assert reopened.assemble("Lisbon budget", budget=300).text == before
    finally:
        reopened.close()


@pytest.mark.parametrize("mode", ["off", "working-set", "all"])
def test_compression_modes(mode: str) -> None:
    ctx = TieredContext(session_id="m", embedder=HashEmbedder(), compaction="inline", budget=Budget(max_tokens=100),
                        compression=mode, summary=SummaryConfig(enabled=False))
    fill(ctx, 60)
    has_l2 = any(w.tier == Tier.L2 for w in ctx.working_set)
    assert has_l2 == (mode != "off")
    assert ctx.working_tokens < 2.0 * ctx.budget.working_limit
    out = ctx.assemble("Lisbon office budget of 3000 euros", budget=120)
    compressed_hits = [i for i in out.items if i.is_derived and i.tier == Tier.L2 and i.seq < 40]
    assert bool(compressed_hits) == (mode == "all") or mode == "working-set"


def test_unknown_compression_mode_is_config_error() -> None:
    from tiered_context import ConfigError

    with pytest.raises(ConfigError, match="compression"):
        TieredContext(session_id="x", embedder=HashEmbedder(), compression="zip")
