"""Properties of the packer over random histories and budgets (hypothesis).

For any history (unicode, emoji, near-empty words, long turns, small pins, tool-call
pairs, real dates or orderings) and any budget in 20..2000:

* the assembled context never exceeds the budget, and its token count is exact
  (pins are kept small enough to fit, so a `BudgetError` is never legitimate here);
* every included item stands for stored originals (`origin_ids` resolve in the store);
* no original appears twice; pinned items are always in; the order is chronological.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiered_context import Budget, TieredContext, TokenCounter
from tiered_context.core._render import line
from tiered_context.testing import HashEmbedder

COUNTER = TokenCounter()
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))

WORD = st.one_of(
    st.sampled_from(
        ["Lisbon", "launch", "May", "3", "2024", "the", "a", "of", "😀", "🚀🚀", "👩‍👩‍👧", "日本語", "naïve",
         "—", "...", "x", "", " ", "\t", "\u200b", "e\u0301", "{\"k\": 1}", "<|endoftext|>"]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12),
)
TEXT = st.lists(WORD, min_size=1, max_size=300).map(" ".join).filter(lambda t: bool(t.strip()))
ROLE = st.sampled_from(["user", "assistant", "tool", "document", "system"])
TURN = st.fixed_dictionaries(
    {
        "text": TEXT,
        "role": ROLE,
        "pin": st.booleans(),
        "ts": st.integers(0, 10**9),
        "call": st.sampled_from([None, None, "c1", "c2"]),
    }
)
QUERY = st.one_of(st.just(""), TEXT, st.sampled_from(["Lisbon launch", "😀", "when?"]))


def build(turns: list[dict], budget: int, *, small_working_set: bool, dated: bool) -> TieredContext:
    ctx = TieredContext(
        session_id="prop", embedder=HashEmbedder(), compaction="inline",
        budget=Budget(max_tokens=50) if small_working_set else Budget(),
    )
    pinned_cost = 0
    for n, turn in enumerate(turns):
        cost = COUNTER.count(f"{turn['role']}: {turn['text']}") + 1
        pin = turn["pin"] and pinned_cost + cost + 16 <= budget // 2  # pins small enough to fit
        pinned_cost += cost if pin else 0
        meta = {}
        # a pinned tool-call partner drags its whole bundle into the pinned set: that is a
        # known bug with its own xfail test (test_assembler.py), so pins carry no call ids here
        if turn["call"] and not pin:
            meta = {"tool_call_ids": [turn["call"]]} if turn["role"] == "assistant" else {"tool_call_id": turn["call"]}
        ctx.put(
            turn["text"], role=turn["role"], pinned=pin, metadata=meta,
            timestamp=(1_600_000_000 + turn["ts"]) if dated else float(n),
        )
    return ctx


def check(ctx: TieredContext, query: str, budget: int) -> None:
    out = ctx.assemble(query, budget=budget)
    # 1. the hard budget, exactly counted
    assert out.tokens <= budget
    assert out.tokens == COUNTER.count(out.text)
    # 2. every included item resolves to stored originals
    origins = [o for item in out.items for o in item.origin_ids]
    stored = ctx.store.get(ctx.session_id, origins)
    assert [s.id for s in stored] == origins
    assert not any(s.is_derived for s in stored)
    for item in out.items:
        if not item.is_derived:
            assert item in stored
    # 3. no original twice
    assert len(origins) == len(set(origins))
    # pinned items are always in, verbatim; order is chronological; text is what was paid for
    pinned = {w.id for w in ctx.working_set if w.pinned}
    assert pinned <= {i.id for i in out.items}
    keys = [(i.timestamp, i.seq) for i in out.items]
    assert keys == sorted(keys)
    for item in out.items:
        assert line(item) in out.text


@SETTINGS
@given(
    turns=st.lists(TURN, min_size=0, max_size=25),
    budget=st.integers(20, 2000),
    query=QUERY,
    small_working_set=st.booleans(),
    dated=st.booleans(),
)
def test_assembled_context_respects_budget_and_provenance(turns, budget, query, small_working_set, dated) -> None:
    ctx = build(turns, budget, small_working_set=small_working_set, dated=dated)
    check(ctx, query, budget)
    assert len(ctx) == len({(t["role"], t["text"]) for t in turns}) or len(ctx) <= len(turns)


@SETTINGS
@given(
    turns=st.lists(TURN, min_size=1, max_size=20),
    budgets=st.lists(st.integers(20, 2000), min_size=2, max_size=4),
    query=QUERY,
)
def test_repeated_assembles_on_one_memory(turns, budgets, query) -> None:
    """The per-item cost cache must not let a later call (other budget) overshoot."""
    ctx = build(turns, min(budgets), small_working_set=True, dated=True)
    for budget in budgets:
        check(ctx, query, budget)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(30, 120), budget=st.integers(20, 600), query=QUERY)
def test_after_compaction_and_pruning(n: int, budget: int, query: str) -> None:
    """Working sets full of L2 forms (and pruned items) still pack within the budget."""
    ctx = TieredContext(session_id="prop", embedder=HashEmbedder(), compaction="inline", budget=Budget(max_tokens=60))
    for i in range(n):
        ctx.put(f"Turn {i}: the committee reviewed invoice {i * 37} for the Lisbon office and approved it.")
    assert any(w.is_derived for w in ctx.working_set)
    check(ctx, query, budget)
