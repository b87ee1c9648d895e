"""Assembly through `TieredContext.assemble`: budget, order, retrieval, report, provenance."""

from __future__ import annotations

import asyncio

import pytest

from tiered_context import (
    AssembledContext,
    Budget,
    BudgetError,
    ConfigError,
    InputError,
    Tier,
    TieredContext,
    TokenCounter,
    WordLlamaEmbedder,
)
from tiered_context.testing import HashEmbedder

COUNTER = TokenCounter()
T0 = 1_714_000_000  # 2024-04-24
NEEDLE = "We moved the Lisbon launch to 3 May, after the security review."
PARTS = {"relevance", "bm25", "dense", "recency", "importance", "preference", "total"}


def fill(ctx: TieredContext, n: int = 300) -> None:
    ctx.put("You are a helpful assistant.", role="system", pinned=True, timestamp=T0, metadata={"dia_id": "D0:0"})
    ctx.put(NEEDLE, role="user", timestamp=T0 + 60, metadata={"dia_id": "D1:1", "speaker": "Ana"})
    for i in range(n):
        ctx.put(
            f"Filler turn {i} about the weather, lunch plans and coffee.",
            role="user" if i % 2 else "assistant",
            timestamp=T0 + 3600 + 600 * i,
            metadata={"dia_id": f"D2:{i}"},
        )


@pytest.fixture
def filled(hash_ctx: TieredContext) -> TieredContext:
    fill(hash_ctx)
    return hash_ctx


def origins_of(out: AssembledContext) -> list[str]:
    return [o for item in out.items for o in item.origin_ids]


@pytest.mark.parametrize("budget", [30, 64, 200, 1000, 5000])
def test_tokens_within_budget_and_exact(filled: TieredContext, budget: int) -> None:
    out = filled.assemble("When is the Lisbon launch?", budget=budget)
    assert out.tokens <= budget
    assert out.tokens == COUNTER.count(out.text) == out.report.tokens
    assert out.report.budget == budget


def test_items_are_rendered_in_chronological_order(filled: TieredContext) -> None:
    out = filled.assemble("Lisbon launch coffee lunch", budget=400)
    keys = [(i.timestamp, i.seq) for i in out.items]
    assert keys == sorted(keys)
    positions = [out.text.index(i.text) for i in out.items]
    assert positions == sorted(positions)
    assert len(out.items) > 3


def test_day_headers_are_rendered(filled: TieredContext) -> None:
    out = filled.assemble("Lisbon launch", budget=400)
    assert "[24 April 2024]" in out.text
    assert "Ana: " + NEEDLE in out.text  # the speaker from metadata, not the role


def test_old_relevant_item_is_found_far_beyond_the_recent_window(filled: TieredContext) -> None:
    needle = filled.store.get_by_seq(filled.session_id, [1])[0]
    assert needle.text == NEEDLE
    assert needle.id not in {w.origin_ids[0] for w in filled.working_set[-50:]}
    out = filled.assemble("When is the Lisbon launch?", budget=150)
    assert needle.id in origins_of(out)
    assert "3 May" in out.text


def test_report_has_score_parts_for_candidates(filled: TieredContext) -> None:
    out = filled.assemble("When is the Lisbon launch?", budget=200)
    report = out.report
    assert report.candidates == len(report.scores) >= len(out.items)
    assert report.dropped == report.candidates - len(out.items)
    for origin, parts in report.scores.items():
        assert PARTS <= set(parts), origin
        assert 0.0 <= parts["relevance"] <= 1.0 and 0.0 <= parts["recency"] <= 1.0
    needle = filled.store.get_by_seq(filled.session_id, [1])[0]
    assert report.scores[needle.id]["relevance"] == 1.0  # the best match of the query
    assert report.scores[needle.id]["bm25"] > 0
    for item in out.items:
        assert item.origin_ids[0] in report.scores
    assert sum(report.tokens_per_tier.values()) > 0 and set(report.tokens_per_tier) == {t.value for t in Tier}
    assert report.seconds >= 0 and report.compression_ratio >= 1.0


def test_provenance_maps_every_included_item_to_stored_originals(filled: TieredContext) -> None:
    out = filled.assemble("When is the Lisbon launch?", budget=300)
    assert set(out.report.provenance) == {i.id for i in out.items}
    for item in out.items:
        origins = out.report.provenance[item.id]
        assert origins == item.origin_ids
        stored = filled.store.get(filled.session_id, origins)
        assert [s.id for s in stored] == list(origins) and not any(s.is_derived for s in stored)


def test_covered_reports_metadata_of_included_originals(filled: TieredContext) -> None:
    out = filled.assemble("When is the Lisbon launch?", budget=200)
    covered = out.covered("dia_id")
    assert {"D0:0", "D1:1"} <= covered
    assert covered == {i.metadata["dia_id"] for i in out.items if len(i.origin_ids) == 1}
    assert out.covered("no_such_key") == set()


def test_repr_summarises(filled: TieredContext) -> None:
    out = filled.assemble("Lisbon", budget=200)
    assert "/200 tokens" in repr(out) and "items" in repr(out)


def test_oversized_item_is_truncated_and_the_original_kept(hash_ctx: TieredContext) -> None:
    hash_ctx.put("A short opening line about the gazebo.", timestamp=T0)
    big_text = "The gazebo inspection report says " + "the beam is sound and the paint is fresh; " * 400
    big = hash_ctx.put(big_text, timestamp=T0 + 10)
    assert big.tokens > 1000
    out = hash_ctx.assemble("gazebo inspection beam", budget=200)
    assert out.tokens <= 200
    cut = [i for i in out.items if big.id in i.origin_ids]
    assert len(cut) == 1 and cut[0].id != big.id
    assert "truncated" in cut[0].text and "truncated" in out.text
    assert cut[0].source_ids == (big.id,)
    (original,) = hash_ctx.store.get(hash_ctx.session_id, [big.id])
    assert original.text == big_text  # intact in the store


def test_pinned_system_item_is_always_included(filled: TieredContext) -> None:
    for budget, query in [(30, "Lisbon launch"), (100, ""), (500, "coffee")]:
        out = filled.assemble(query, budget=budget)
        assert "system: You are a helpful assistant." in out.text
        assert any(i.pinned for i in out.items)


def test_pinned_items_larger_than_the_budget_are_a_budget_error(hash_ctx: TieredContext) -> None:
    hash_ctx.put("Rule: always cite the source document. " * 40, role="system", pinned=True)
    hash_ctx.put("hello")
    with pytest.raises(BudgetError, match="budget") as err:
        hash_ctx.assemble("hello", budget=50)
    assert isinstance(err.value, ConfigError)
    assert hash_ctx.assemble("hello", budget=2000).tokens <= 2000


def test_empty_query_is_recency_driven(hash_ctx: TieredContext) -> None:
    for i in range(100):
        hash_ctx.put(f"Turn number {i} of a long chat.", timestamp=T0 + i)
    for query in ("", "   "):
        out = hash_ctx.assemble(query, budget=60)
        assert out.items and out.tokens <= 60
        seqs = [i.seq for i in out.items]
        assert max(seqs) == 99 and min(seqs) > 80  # only the most recent turns


def test_empty_memory_assembles_to_nothing(hash_ctx: TieredContext) -> None:
    out = hash_ctx.assemble("anything", budget=100)
    assert out.text == "" and out.tokens == 0 and out.items == ()


def test_default_budget_comes_from_budget_settings() -> None:
    ctx = TieredContext(session_id="b", embedder=HashEmbedder(), compaction="inline", budget=40)
    assert ctx.budget == Budget(max_tokens=40)
    for i in range(50):
        ctx.put(f"Turn {i}: the quick brown fox jumps over the lazy dog again.")
    out = ctx.assemble("fox")
    assert out.report.budget == 40 and out.tokens <= 40


@pytest.mark.parametrize("budget", [0, -1, 1.5, "100", 100.0])
def test_invalid_budget_is_config_error(hash_ctx: TieredContext, budget: object) -> None:
    hash_ctx.put("hello")
    with pytest.raises(ConfigError, match="budget"):
        hash_ctx.assemble("hello", budget=budget)  # type: ignore[arg-type]


def test_bool_budget_is_config_error(hash_ctx: TieredContext) -> None:
    hash_ctx.put("hello")
    with pytest.raises(ConfigError):
        hash_ctx.assemble("hello", budget=True)


@pytest.mark.parametrize("query", [None, 42, b"bytes", ["list"]])
def test_non_str_query_is_input_error(hash_ctx: TieredContext, query: object) -> None:
    with pytest.raises(InputError, match="query must be str"):
        hash_ctx.assemble(query, budget=100)  # type: ignore[arg-type]


def test_tool_call_and_its_result_are_packed_together(hash_ctx: TieredContext) -> None:
    for i in range(20):
        hash_ctx.put(f"Chit chat {i} about nothing much at all.", timestamp=T0 + i)
    hash_ctx.put("Calling get_weather(city='Paris')", role="assistant", timestamp=T0 + 100,
                 metadata={"tool_call_ids": ["call_1"]})
    hash_ctx.put("Paris: 22C and sunny", role="tool", timestamp=T0 + 101, metadata={"tool_call_id": "call_1"})
    for i in range(20):
        hash_ctx.put(f"More chit chat {i} about nothing much.", timestamp=T0 + 200 + i)
    for budget in (40, 80, 300):
        out = hash_ctx.assemble("weather in Paris sunny", budget=budget)
        roles = {i.role for i in out.items if i.metadata.get("tool_call_id") or i.metadata.get("tool_call_ids")}
        assert roles in (set(), {"assistant", "tool"}), (budget, out.text)
    assert roles == {"assistant", "tool"}


def put_weather_pair(ctx: TieredContext, *, pin_result: bool = False) -> None:
    ctx.put("Calling get_weather for Paris", role="assistant", timestamp=1_600_000_000,
            metadata={"tool_call_ids": ["c1"]})
    ctx.put("Paris: 22C and sunny", role="tool", timestamp=1_600_000_001, pinned=pin_result,
            metadata={"tool_call_id": "c1"})


def test_tool_call_pair_that_fits_is_packed(hash_ctx: TieredContext) -> None:
    put_weather_pair(hash_ctx)
    out = hash_ctx.assemble("weather in Paris", budget=30)
    assert len(out.items) == 2 and out.tokens <= 30


def test_pinned_tool_result_does_not_raise_when_it_fits(hash_ctx: TieredContext) -> None:
    # found by test_packer_properties (shrunk example)
    for n, pin in ((1, False), (2, True), (7, False)):
        hash_ctx.put(" ".join(["Lisbon"] * n), role="user", pinned=pin, timestamp=1_600_000_000,
                     metadata={"tool_call_id": "c1"})
    out = hash_ctx.assemble("", budget=42)
    assert "user: Lisbon Lisbon\n" in out.text + "\n" and out.tokens <= 42


def test_async_put_and_assemble() -> None:
    async def main() -> tuple[AssembledContext, list]:
        ctx = TieredContext(session_id="async", embedder=HashEmbedder(), compaction="inline")
        await ctx.aput("We moved the Lisbon launch to 3 May.")
        stored = await ctx.aput_many(["Other turn one.", {"role": "assistant", "content": "Noted."}])
        await ctx.aflush()
        return await ctx.aassemble("When is the Lisbon launch?", budget=100), stored

    out, stored = asyncio.run(main())
    assert "3 May" in out.text and out.tokens <= 100
    assert [s.role for s in stored] == ["user", "assistant"]


def test_concurrent_async_assembles() -> None:
    async def main() -> list[AssembledContext]:
        ctx = TieredContext(session_id="async2", embedder=HashEmbedder(), compaction="inline")
        await asyncio.gather(*(ctx.aput(f"Fact {i}: item {i} costs {i * 7} euros.") for i in range(20)))
        return await asyncio.gather(*(ctx.aassemble(f"What does item {i} cost?", budget=80) for i in range(5)))

    outs = asyncio.run(main())
    assert all(o.tokens <= 80 for o in outs)
    assert all(f"item {i} costs" in o.text for i, o in enumerate(outs))


# -- the real default embedder, offline ---------------------------------------------------
def test_default_embedder_is_wordllama_and_works_offline() -> None:
    ctx = TieredContext(session_id="real", compaction="inline")  # network is blocked by conftest
    try:
        assert isinstance(ctx.embedder, WordLlamaEmbedder) and ctx.embedder.dim == 256
        fill(ctx, n=200)
        out = ctx.assemble("When is the Lisbon launch?", budget=150)
        assert out.tokens <= 150
        assert "3 May" in out.text
        assert out.report.scores[ctx.store.get_by_seq("real", [1])[0].id]["dense"] > 0
    finally:
        ctx.close()


def test_wordllama_embeddings_are_normalised_and_semantic() -> None:
    import numpy as np

    emb = WordLlamaEmbedder()
    vecs = emb.embed(["the launch date moved", "the release was rescheduled", "my cat likes fish"])
    assert vecs.shape == (3, 256)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2])
    assert emb.embed([]).shape == (0, 256)
    assert asyncio.run(emb.aembed(["x"])).shape == (1, 256)


# -- real data smoke test (skipped when the shared data is absent) --------------------------
def test_locomo_evidence_survives_far_better_than_recency(shared_data) -> None:
    import json

    path = shared_data / "locomo" / "locomo_dev5.json"
    if not path.is_file():
        pytest.skip(f"LoCoMo not found at {path}")
    sample = json.loads(path.read_text(encoding="utf-8"))[0]
    conv = sample["conversation"]
    turns, n = [], 1
    while f"session_{n}" in conv:
        turns += conv[f"session_{n}"]
        n += 1
    ctx = TieredContext(session_id="locomo", embedder=HashEmbedder(), compaction="inline")
    ctx.put_many(
        {"content": t["text"], "metadata": {"dia_id": t["dia_id"], "speaker": t["speaker"]}, "timestamp": float(i)}
        for i, t in enumerate(turns)
    )
    assert len(ctx) == len(turns) > 300
    budget = 2000
    # recency baseline: the newest turns that fit in the same budget
    recent, used = set(), 0
    for t in reversed(turns):
        used += COUNTER.count(f"{t['speaker']}: {t['text']}") + 1
        if used > budget:
            break
        recent.add(t["dia_id"])
    questions = [q for q in sample["qa"] if q.get("evidence") and q.get("category") != 5][:40]
    kept = baseline = 0
    for q in questions:
        out = ctx.assemble(q["question"], budget=budget)
        assert out.tokens <= budget
        kept += set(q["evidence"]) <= out.covered("dia_id")
        baseline += set(q["evidence"]) <= recent
    assert kept / len(questions) >= 0.45
    assert kept >= baseline + 0.3 * len(questions)


def test_the_region_of_short_utterances_around_a_strong_hit_is_taken() -> None:
    from tiered_context import ScoringConfig

    preset = ScoringConfig.for_transcripts(recency_weight=0.0)
    assert (preset.neighbour_window, preset.neighbour_decay, preset.recency_weight) == (10, 0.95, 0.0)
    with pytest.raises(ConfigError):
        ScoringConfig.for_transcripts(neighbour_decay=1.0)

    def region_turns(scoring: ScoringConfig | None) -> int:
        ctx = TieredContext(session_id="m", embedder=HashEmbedder(), compaction="inline",
                            **({"scoring": scoring} if scoring else {}))
        with ctx:
            for i in range(200):
                if i == 100:
                    text = "Let us go through the quarterly budget review for the remote control project."
                elif 100 < i <= 108:
                    text = f"Yeah, point {i - 100} on that: costs went up and we cut the rubber buttons."
                else:
                    text = f"Filler {i}: the weather, the coffee machine and lunch plans."
                ctx.put(text, timestamp=T0 + 60 * i, metadata={"dia_id": str(i)})
            out = ctx.assemble("What did the group say in the quarterly budget review?", budget=260)
            return len({str(i) for i in range(100, 109)} & out.covered("dia_id"))

    # Distance is content: short utterances are a fraction of a step each, so the default
    # reaches the whole region, as the transcript preset does; counted in turns it did not.
    by_turns = region_turns(ScoringConfig(neighbour_tokens=None, neighbour_window=3))
    assert region_turns(None) == region_turns(ScoringConfig.for_transcripts()) == 9 > by_turns
    with pytest.raises(ConfigError, match="neighbour_tokens"):
        ScoringConfig(neighbour_tokens=0)
