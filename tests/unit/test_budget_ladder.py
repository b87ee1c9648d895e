"""`Budget` validation, thresholds and presets; the soft-limit ladder inside `TieredContext`.

The ladder runs on the working set (L1 + L2) against `Budget.working_limit`
(2 x max_tokens by default): 1.5x alert, 2.0x batched compression, 2.5x synchronous prune.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tiered_context import (
    Budget,
    ConfigError,
    ContextItem,
    LadderEvent,
    LadderLevel,
    ModelSize,
    SelfInformationCompressor,
    Tier,
    TieredContext,
    TokenCounter,
)
from tiered_context.core._compaction import RETRY_AFTER_ITEMS
from tiered_context.testing import FailingCompressor, HashEmbedder


# -- Budget ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -5, 1.5, "100", None])
def test_max_tokens_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        Budget(max_tokens=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alert_at": 2.0, "compress_at": 1.5},
        {"compress_at": 3.0, "prune_at": 2.5},
        {"alert_at": 0.5},
        {"alert_at": 1.6, "compress_at": 1.7, "prune_at": 1.65},
    ],
)
def test_ladder_out_of_order_is_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="alert_at <= compress_at <= prune_at"):
        Budget(**kwargs)


@pytest.mark.parametrize("ratio", [0.0, 0.04, 1.01, 2.0, -0.5])
def test_compression_ratio_out_of_range_is_config_error(ratio: float) -> None:
    with pytest.raises(ConfigError, match="compression_ratio"):
        Budget(compression_ratio=ratio)


def test_other_settings_are_validated_and_named() -> None:
    with pytest.raises(ConfigError, match="working_set_tokens"):
        Budget(working_set_tokens=0)
    with pytest.raises(ConfigError, match="recent_items"):
        Budget(recent_items=-1)


def test_budget_is_frozen_and_keyword_only() -> None:
    import dataclasses

    budget = Budget(max_tokens=100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.max_tokens = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Budget(100)  # type: ignore[misc]
    assert budget.with_max_tokens(50).max_tokens == 50 and budget.max_tokens == 100


def test_working_limit_defaults_to_twice_max_tokens() -> None:
    assert Budget(max_tokens=100).working_limit == 200
    assert Budget(max_tokens=100, working_set_tokens=1000).working_limit == 1000


@pytest.mark.parametrize(
    "tokens, level",
    [
        (0, None),
        (299, None),
        (300, LadderLevel.ALERT),  # exactly 1.5x
        (399, LadderLevel.ALERT),
        (400, LadderLevel.COMPRESS),  # exactly 2.0x
        (499, LadderLevel.COMPRESS),
        (500, LadderLevel.PRUNE),  # exactly 2.5x
        (10_000, LadderLevel.PRUNE),
    ],
)
def test_level_thresholds(tokens: int, level: LadderLevel | None) -> None:
    assert Budget(max_tokens=100).level(tokens) is level


def test_level_thresholds_follow_custom_ladder() -> None:
    budget = Budget(max_tokens=100, working_set_tokens=1000, alert_at=1.2, compress_at=1.4, prune_at=3.0)
    assert budget.level(1199) is None
    assert budget.level(1200) is LadderLevel.ALERT
    assert budget.level(1400) is LadderLevel.COMPRESS
    assert budget.level(2999) is LadderLevel.COMPRESS
    assert budget.level(3000) is LadderLevel.PRUNE


@pytest.mark.parametrize(
    "window, max_tokens, ratio",
    [
        (8_192, 2_048, 0.35),
        (32_768, 8_192, 0.35),
        (131_072, 26_214, 0.5),
        (1_000_000, 150_000, 0.7),
    ],
)
def test_presets_for_context_windows(window: int, max_tokens: int, ratio: float) -> None:
    budget = Budget.for_context_window(window)
    assert budget.max_tokens == max_tokens
    assert budget.compression_ratio == ratio


def test_small_windows_compress_more_aggressively() -> None:
    ratios = [Budget.for_context_window(w).compression_ratio for w in (8_192, 32_768, 131_072, 1_048_576)]
    assert ratios == sorted(ratios)
    assert ratios[0] < ratios[-1]


@pytest.mark.parametrize("window", [0, 512, 1023])
def test_tiny_window_is_config_error(window: int) -> None:
    with pytest.raises(ConfigError, match="too small"):
        Budget.for_context_window(window)


def test_for_model_size() -> None:
    assert Budget.for_model_size("small", max_tokens=1000).compression_ratio == 0.35
    assert Budget.for_model_size(ModelSize.LARGE, max_tokens=1000).compression_ratio == 0.7
    assert Budget.for_model_size("medium", max_tokens=1234).max_tokens == 1234


def test_unknown_model_size_is_config_error() -> None:
    with pytest.raises(ConfigError):
        Budget.for_model_size("huge", max_tokens=1000)  # type: ignore[arg-type]


def test_bool_max_tokens_is_config_error() -> None:
    with pytest.raises(ConfigError):
        Budget(max_tokens=True)


# -- the ladder in TieredContext ------------------------------------------------------
def message(i: int) -> str:
    """~21 cl100k tokens, long enough for the self-information compressor to shrink."""
    return f"Message {i}: the team discussed the quarterly roadmap, hiring plans and the Lisbon office budget in detail."


class CountingCompressor:
    """Delegates to the real compressor and records every batch it is given."""

    def __init__(self, inner=None) -> None:
        self.inner = inner or SelfInformationCompressor(TokenCounter())
        self.batches: list[int] = []

    @property
    def calls(self) -> int:
        return len(self.batches)

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        self.batches.append(len(items))
        return self.inner.compress(items, ratio)

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        return self.compress(items, ratio)


class SameSizeCompressor:
    """Returns well-formed L2 items that are no smaller than the originals."""

    def __init__(self) -> None:
        self.calls = 0

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        self.calls += 1
        return [i.evolve(id=f"{i.id}~same", tier=Tier.L2, source_ids=i.origin_ids) for i in items]

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        return self.compress(items, ratio)


def make_ctx(compressor=None, *, compaction: str = "inline", events: list | None = None, on_event=None) -> TieredContext:
    return TieredContext(
        session_id="ladder", embedder=HashEmbedder(), compaction=compaction, budget=Budget(max_tokens=100),
        compressor=compressor, on_event=on_event or (None if events is None else events.append),
    )


def levels(events: Sequence[LadderEvent]) -> list[LadderLevel]:
    return [e.level for e in events]


def test_alert_fires_once_on_crossing_and_reaches_the_next_report() -> None:
    events: list[LadderEvent] = []
    ctx = make_ctx(events=events)
    limit = ctx.budget.working_limit
    crossed_at = None
    for i in range(40):
        ctx.put(message(i))
        if crossed_at is None and ctx.working_tokens >= 1.5 * limit:
            crossed_at = i
            assert levels(events) == [LadderLevel.ALERT]  # fired by this very put
        if ctx.working_tokens >= 1.9 * limit:
            break
    assert crossed_at is not None
    alert = events[0]
    assert alert.limit_tokens == limit
    assert 1.5 * limit <= alert.working_tokens < 1.5 * limit + 30
    assert "1.5" in alert.detail
    assert levels(events) == [LadderLevel.ALERT]  # not repeated while the level holds

    out = ctx.assemble("roadmap", budget=100)
    assert out.report.events == (alert,)
    assert ctx.assemble("roadmap", budget=100).report.events == ()  # drained


def test_no_event_below_the_alert() -> None:
    events: list[LadderEvent] = []
    ctx = make_ctx(events=events)
    for i in range(10):
        ctx.put(message(i))
    assert ctx.working_tokens < 1.5 * ctx.budget.working_limit
    assert events == []


def test_a_failing_callback_does_not_break_ingestion() -> None:
    def boom(event: LadderEvent) -> None:
        raise RuntimeError("callback bug")

    ctx = make_ctx(on_event=boom)
    for i in range(30):
        ctx.put(message(i))
    assert len(ctx) == 30
    assert any(w.tier == Tier.L2 for w in ctx.working_set)  # the ladder kept working


def test_compression_is_one_batch_with_provenance() -> None:
    events: list[LadderEvent] = []
    compressor = CountingCompressor()
    ctx = make_ctx(compressor, events=events)
    limit = ctx.budget.working_limit
    originals: dict[str, ContextItem] = {}
    i = 0
    while compressor.calls == 0:
        peak = ctx.working_tokens
        item = ctx.put(message(i))
        originals[item.id] = item
        i += 1
        assert i < 60, "compression never started"
    # it started on the put that crossed 2.0x, and only then
    assert peak + originals[item.id].tokens >= 2.0 * limit > peak
    assert compressor.batches[0] > 1  # one batch, not one call per put
    compress_events = [e for e in events if e.level == LadderLevel.COMPRESS]
    assert len(compress_events) == 1 and len(compress_events[0].item_ids) == compressor.batches[0]

    l2 = [w for w in ctx.working_set if w.tier == Tier.L2]
    assert len(l2) == compressor.batches[0]
    for form in l2:
        assert form.is_derived and len(form.source_ids) == 1
        (original,) = ctx.store.get(ctx.session_id, form.source_ids)
        assert original.text == originals[original.id].text  # the original is intact in L3
        assert not original.is_derived and original.tier == Tier.L1
        assert form.tokens < original.tokens
        assert form.seq == original.seq
    assert ctx.working_tokens < 2.0 * limit
    assert len(ctx) == i

    calls = compressor.calls  # a few more puts below 2.0x: no further compression
    for j in range(3):
        ctx.put(message(100 + j))
    assert ctx.working_tokens < 2.0 * limit and compressor.calls == calls


def test_pinned_items_are_never_compressed_or_pruned() -> None:
    for compressor in (CountingCompressor(), FailingCompressor(), SameSizeCompressor()):
        ctx = make_ctx(compressor)
        system = ctx.put("You are a careful assistant for the Lisbon office. " * 3, role="system", pinned=True)
        for i in range(80):
            ctx.put(message(i))
            current = {w.origin_ids[0]: w for w in ctx.working_set}
            assert current[system.id] is not None and current[system.id].tier == Tier.L1
            assert current[system.id].text == system.text
        assert compressor.calls > 0
        out = ctx.assemble("hiring plans", budget=200)
        assert system.id in {i.id for i in out.items}
        assert system.text in out.text


@pytest.mark.parametrize("compressor_cls", [FailingCompressor, SameSizeCompressor])
def test_emergency_prune_is_synchronous_and_loses_nothing(compressor_cls) -> None:
    events: list[LadderEvent] = []
    ctx = make_ctx(compressor_cls(), events=events)
    limit = ctx.budget.working_limit
    ids = []
    for i in range(60):
        ids.append(ctx.put(message(i)).id)
        assert ctx.working_tokens < 2.5 * limit  # pruned within the put that crossed
    prunes = [e for e in events if e.level == LadderLevel.PRUNE]
    assert prunes, levels(events)
    for event in prunes:
        assert event.item_ids and event.working_tokens < 2.0 * limit
    pruned = {i for e in prunes for i in e.item_ids}
    working = {w.origin_ids[0] for w in ctx.working_set}
    assert not pruned & working
    # every original is still archived and retrievable
    assert len(ctx) == 60
    stored = ctx.store.get(ctx.session_id, ids)
    assert [s.id for s in stored] == ids
    assert all(s.text == message(n) for n, s in enumerate(stored))
    # a pruned item is still found by a query that needs it
    victim = sorted(pruned)[0]
    (original,) = ctx.store.get(ctx.session_id, [victim])
    out = ctx.assemble(original.text, budget=100)
    assert victim in {o for i in out.items for o in i.origin_ids}


def test_recent_items_are_never_pruned() -> None:
    ctx = make_ctx(FailingCompressor())
    for i in range(60):
        item = ctx.put(message(i))
        assert item.id in {w.id for w in ctx.working_set}


def test_failing_compressor_leaves_history_intact_and_reports_it() -> None:
    events: list[LadderEvent] = []
    compressor = FailingCompressor()
    ctx = make_ctx(compressor, events=events)
    limit = ctx.budget.working_limit
    i = 0
    while compressor.calls == 0:
        ctx.put(message(i))
        i += 1
    assert ctx.working_tokens >= 2.0 * limit
    working = ctx.working_set
    assert len(working) == i and all(w.tier == Tier.L1 and not w.is_derived for w in working)
    assert [w.text for w in working] == [message(n) for n in range(i)]
    failed = [e for e in events if e.level == LadderLevel.COMPRESS]
    assert len(failed) == 1 and "compression failed" in failed[0].detail

    out = ctx.assemble("roadmap", budget=200)
    details = [e.detail for e in out.report.events]
    assert any("compression failed" in d for d in details), details
    assert len(ctx) == i


def test_failed_compression_is_retried_only_after_more_puts() -> None:
    compressor = FailingCompressor()
    ctx = make_ctx(compressor)
    i = 0
    while compressor.calls == 0:
        ctx.put(message(i))
        i += 1
    for j in range(RETRY_AFTER_ITEMS - 1):
        ctx.put(message(i + j))
    assert compressor.calls == 1
    for j in range(3):
        ctx.put(message(1000 + j))
    assert compressor.calls == 2


def run_to_steady_state(compaction: str, n: int = 150) -> TieredContext:
    ctx = make_ctx(CountingCompressor(), compaction=compaction)
    for i in range(n):
        ctx.put(message(i))
        assert ctx.working_tokens < 2.5 * ctx.budget.working_limit
    ctx.flush()
    return ctx


def test_background_compaction_with_flush_reaches_the_same_bound() -> None:
    inline = run_to_steady_state("inline")
    background = run_to_steady_state("background")
    try:
        for ctx in (inline, background):
            limit = ctx.budget.working_limit
            assert ctx.working_tokens < 2.0 * limit
            assert ctx.budget.level(ctx.working_tokens) not in (LadderLevel.COMPRESS, LadderLevel.PRUNE)
            assert any(w.tier == Tier.L2 for w in ctx.working_set)
            assert len(ctx) == 150
            for form in ctx.working_set:
                assert len(ctx.store.get(ctx.session_id, form.origin_ids)) == len(form.origin_ids)
    finally:
        background.close()
        inline.close()


def test_background_compaction_runs_off_the_calling_thread() -> None:
    import threading

    seen: list[str] = []

    class ThreadRecorder(CountingCompressor):
        def compress(self, items, ratio):
            seen.append(threading.current_thread().name)
            return super().compress(items, ratio)

    ctx = make_ctx(ThreadRecorder(), compaction="background")
    try:
        for i in range(40):
            ctx.put(message(i))
        ctx.flush()
        assert seen and all(name.startswith("tiered-compaction") for name in seen)
    finally:
        ctx.close()


def test_compression_that_cannot_shrink_is_not_retried_on_every_put() -> None:
    compressor = CountingCompressor()
    ctx = make_ctx(compressor)
    for i in range(200):
        ctx.put(f"short turn {i} ok")  # < 12 tokens: kept verbatim by the compressor
    assert compressor.calls <= 200 // RETRY_AFTER_ITEMS + 2, compressor.batches[:10]


def test_a_ladder_behind_its_puts_folds_the_pruned_items_before_it_compresses_again() -> None:
    """Background: items pruned at 2.5x wait to be folded when puts outpace the ladder. The
    next job folds them and compresses no L1 item (puts going on would prune most of them
    before their forms land); `flush` then compresses what is left, to the same bound."""
    events: list[LadderEvent] = []
    compressor = CountingCompressor()
    ctx = make_ctx(compressor, compaction="background", events=events)
    ladder = ctx._ladder
    limit = ctx.budget.working_limit
    try:
        ladder._retry_at = 10**9  # no job until the flush: the puts run ahead and prune
        for i in range(200):
            ctx.put(message(i))
            if ladder._pruned and ctx.working_tokens >= 2.0 * limit:
                break
        assert ladder._pruned and ctx.working_tokens >= 2.0 * limit
        ctx.flush()
        jobs = [e for e in events if e.level == LadderLevel.COMPRESS]
        assert jobs[0].item_ids == () and jobs[1].item_ids  # folded first, compressed after
        assert compressor.calls and not ladder._pruned and ctx.working_tokens < 2.0 * limit
        assert any(w.tier == Tier.L2 for w in ctx.working_set)
    finally:
        ctx.close()


@pytest.mark.parametrize("compaction", ["inline", "background"])
def test_items_pruned_by_one_large_put_are_folded_by_flush(compaction: str) -> None:
    """A `put_many` past 2.5x prunes to just under 2x, where no compression is due: the
    pruned items are still folded into a summary (they used to wait for the next put that
    crossed 2x, which a bulk load never makes), and nothing else changes below 2x."""
    ctx = make_ctx(compaction=compaction)
    ladder = ctx._ladder
    try:
        ctx.put_many([message(i) for i in range(40)])
        ctx.flush()
        assert ctx.working_tokens < 2.0 * ctx.budget.working_limit
        assert not ladder._pruned and ladder._frontier  # folded into a live summary
        assert all(w.tier == Tier.L1 for w in ctx.working_set)  # below 2x: folded, not compressed
    finally:
        ctx.close()
