"""Exact resume: a reopened memory assembles what it assembled before close, whichever
batches (inline or background) compaction took, from the checkpoint `flush` archives."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tiered_context import (
    Budget,
    ContextItem,
    ExtractiveSummarizer,
    Kind,
    LocalColdStore,
    Namespace,
    SummaryConfig,
    TieredContext,
)
from tiered_context.core._compaction import Ladder
from tiered_context.testing import HashEmbedder

T0 = 1_714_000_000
QUERY = "Lisbon office budget"


class Counting(ExtractiveSummarizer):
    """The offline summarizer, counting its calls (a resumed memory must not re-ask)."""

    calls = 0

    def summarize(self, items: Sequence[ContextItem], previous: ContextItem | None = None) -> ContextItem:
        self.calls += 1
        return super().summarize(items, previous)


def message(i: int) -> str:
    return f"Message {i}: the team discussed the quarterly roadmap and the Lisbon office budget of {i * 100} euros."


def open_ctx(compaction: str, *, path=None, store=None, store_kind=None) -> TieredContext:
    embedder = HashEmbedder()
    return TieredContext(session_id="s", path=path, store=store, store_kind=store_kind, embedder=embedder,
                         compaction=compaction,
                         budget=Budget(max_tokens=100), summarizer=Counting(embedder=embedder),
                         summary=SummaryConfig(min_batch_tokens=64))


def state(ctx: TieredContext) -> tuple[list, list, list, str]:
    """What a reopened memory must reproduce: the working set (ids and tiers), the live
    summaries, and the assembled context for a query (ids and text)."""
    out = ctx.assemble(QUERY, budget=300)
    return ([(w.id, w.tier) for w in ctx.working_set], [s.id for s in ctx.summaries],
            [i.id for i in out.items], out.text)


def fill(ctx: TieredContext, start: int, stop: int) -> None:
    for i in range(start, stop):
        ctx.put(message(i), timestamp=T0 + 3600 * i, metadata={"speaker": "Ana"})


@pytest.mark.parametrize("compaction", ["inline", "background"])
@pytest.mark.parametrize("kind", ["qdrant", "journal"])
def test_reopen_assembles_exactly_what_it_did_before_close(tmp_path, compaction: str, kind: str) -> None:
    def reopen() -> TieredContext:
        return open_ctx(compaction, path=tmp_path, store_kind=kind)

    ctx = reopen()
    fill(ctx, 0, 150)
    ctx.flush()
    before = state(ctx)
    assert before[1] and any(t.value == "L2" for _, t in before[0])  # summaries and L2 forms exist
    ctx.close()

    reopened = reopen()
    try:
        assert reopened.summarizer.calls == 0  # nothing re-made: taken from the archive
        assert state(reopened) == before
        assert reopened.put("one more turn").seq == 150
    finally:
        reopened.close()


@pytest.mark.parametrize("compaction", ["inline", "background"])
def test_resuming_twice_is_idempotent(tmp_path, compaction: str) -> None:
    ctx = open_ctx(compaction, path=tmp_path)
    fill(ctx, 0, 120)
    ctx.close()
    first = open_ctx(compaction, path=tmp_path)
    once = state(first)
    checkpoints = len(first.store.items(Namespace(session="s", kind=Kind.CHECKPOINTS).key))
    first.close()  # nothing moved: no new checkpoint

    second = open_ctx(compaction, path=tmp_path)
    try:
        assert state(second) == once
        assert len(second.store.items(Namespace(session="s", kind=Kind.CHECKPOINTS).key)) == checkpoints == 1
    finally:
        second.close()


def test_puts_after_the_last_checkpoint_are_replayed() -> None:
    """A process that stopped without close: the checkpoint, then the later originals
    through the ladder (inline compaction takes the same steps the live memory took)."""
    store = LocalColdStore()
    live = open_ctx("inline", store=store)
    fill(live, 0, 100)
    live.flush()
    fill(live, 100, 140)  # compacted and summarized, never checkpointed
    reopened = open_ctx("inline", store=store)
    assert state(reopened) == state(live)


def test_an_archive_without_checkpoints_resumes_by_replay(tmp_path, monkeypatch) -> None:
    """Archives written before checkpoints existed replay their history; their next close
    writes the first checkpoint."""
    with monkeypatch.context() as m:
        m.setattr(Ladder, "checkpoint", lambda self: None)
        old = open_ctx("inline", path=tmp_path)
        fill(old, 0, 120)
        before = state(old)
        old.close()

    reopened = open_ctx("inline", path=tmp_path)
    assert reopened.store.items(Namespace(session="s", kind=Kind.CHECKPOINTS).key) == []
    assert state(reopened) == before
    reopened.close()
    again = open_ctx("inline", path=tmp_path)
    try:
        assert len(again.store.items(Namespace(session="s", kind=Kind.CHECKPOINTS).key)) == 1
        assert state(again) == before
    finally:
        again.close()


def test_a_checkpoint_naming_missing_summaries_falls_back_to_replay(monkeypatch) -> None:
    """A checkpoint the archive cannot honour (here: its summaries are gone) costs exactness,
    never history: the memory replays, and its next flush writes a checkpoint that wins."""
    store = LocalColdStore()
    live = open_ctx("inline", store=store)
    fill(live, 0, 120)
    live.flush()
    monkeypatch.setattr(store, "get", lambda tenant, ids, get=store.get: [] if tenant == Namespace(session="s", kind=Kind.SUMMARIES).key
                        else get(tenant, ids))
    reopened = open_ctx("inline", store=store)
    monkeypatch.undo()
    assert reopened.working_set[-1].id == live.working_set[-1].id and len(reopened) == 120
    reopened.flush()
    records = store.items(Namespace(session="s", kind=Kind.CHECKPOINTS).key)
    assert len(records) == 2 and max(r.metadata["checkpoint"] for r in records) == 2
