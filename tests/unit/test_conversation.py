"""The conversation contract (core/conversation.py), framework-free: unit and property tests."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiered_context.core import Turn, current_exchange, enforce
from tiered_context.core._conversation import check


def cut(turn: Turn, n: int) -> Turn:
    return replace(turn, tokens=n, payload=("cut", turn.payload))


def tokens(turns):
    return sum(t.tokens for t in turns)


def test_the_request_survives_a_huge_tool_result():
    """Issue 14's repro, framework-free: 100 earlier messages, a request, a ~10k tool result."""
    history = [Turn("user" if i % 2 == 0 else "assistant", 20, payload=i) for i in range(100)]
    turns = [Turn("system", 10, payload="sys"), *history, Turn("user", 15, payload="request"),
             Turn("assistant", 10, tool_call_ids=("c1",), payload="call"), Turn("tool", 10_000, tool_call_id="c1", payload="result")]
    out = enforce(turns, budget=1500, cut=cut)
    assert [t.payload for t in out][:3] == ["sys", "request", "call"]
    assert out[3].payload == ("cut", "result") and tokens(out) <= 1500
    assert check(out, budget=1500, source=turns) == []


def test_current_exchange():
    u, a, t = Turn("user", 1), Turn("assistant", 1, tool_call_ids=("x",)), Turn("tool", 1, tool_call_id="x")
    assert current_exchange([u, Turn("assistant", 1), u, a, t]) == 2
    assert current_exchange([Turn("assistant", 1), a, t]) == 1
    assert current_exchange([]) == 0
    # No user turn: only the last round of a tool loop is live (found by a property test:
    # five rounds of calls alone outgrew a 300-token budget, which could then not hold them)
    b, r1, r2 = Turn("assistant", 1, tool_call_ids=("y", "z")), Turn("tool", 1, tool_call_id="y"), Turn("tool", 1, tool_call_id="z")
    assert current_exchange([a, t, a, t, b, r1, r2]) == 4
    assert current_exchange([a, t, b]) == 2  # calls not answered yet


def test_orphans_are_dropped_and_results_moved_next_to_their_call():
    turns = [Turn("tool", 5, tool_call_id="ghost", payload="orphan"), Turn("user", 5, payload="u0"),
             Turn("assistant", 5, tool_call_ids=("a", "b"), payload="calls"), Turn("tool", 5, tool_call_id="b", payload="rb"),
             Turn("assistant", 5, payload="interleaved"), Turn("tool", 5, tool_call_id="a", payload="ra"),
             Turn("assistant", 5, tool_call_ids=("never",), payload="unanswered"),
             Turn("user", 5, payload="now")]
    out = enforce(turns, budget=1000)
    assert [t.payload for t in out] == ["u0", "calls", "ra", "rb", "interleaved", "now"]
    assert check(out) == []


def test_first_non_system_turn_is_the_users():
    turns = [Turn("system", 5), Turn("assistant", 5, payload="greeting"), Turn("user", 5, payload="q"),
             Turn("assistant", 5, payload="a"), Turn("user", 5, payload="q2")]
    out = enforce(turns, budget=1000)
    assert [t.payload for t in out if t.role != "system"] == ["q", "a", "q2"]


def test_alternate_merges_runs_of_one_role():
    turns = [Turn("user", 5, payload=1), Turn("user", 5, payload=2), Turn("assistant", 5, payload=3),
             Turn("assistant", 5, payload=4), Turn("user", 5, payload=5)]
    out = enforce(turns, budget=1000, alternate=True)
    assert [t.role for t in out] == ["user", "assistant", "user"]
    assert out[0].payload == (1, 2) and out[1].payload == (3, 4)
    assert check(out, alternate=True) == []


def test_lead_turn_is_kept_and_counts():
    lead = Turn("user", 50, payload="context")
    turns = [Turn("user", 40, payload="old"), Turn("assistant", 40, payload="old-a"), Turn("user", 10, payload="q")]
    out = enforce(turns, budget=100, lead=[lead])
    # 40 tokens of room: the old answer fits, its question does not; a user lead makes it valid
    assert [t.payload for t in out] == ["context", "old-a", "q"] and tokens(out) <= 100
    out = enforce(turns, budget=1000, lead=[lead], alternate=True)
    assert [t.role for t in out] == ["user", "assistant", "user"] and out[0].payload == ("context", "old")


def test_overrun_only_when_required_turns_alone_exceed():
    turns = [Turn("system", 80), Turn("user", 50, payload="q")]
    out = enforce(turns, budget=100, cut=cut)
    assert [t.payload for t in out][-1] == "q"  # never dropped
    assert any("budget" in p for p in check(out, budget=100))


def test_check_finds_violations():
    bad = [Turn("assistant", 1), Turn("system", 1), Turn("tool", 1, tool_call_id="z"), Turn("user", 1), Turn("user", 1)]
    problems = check(bad, alternate=True, budget=2)
    assert any("first non-system" in p for p in problems)
    assert any("system turn after" in p for p in problems)
    assert any("does not directly follow" in p for p in problems)
    assert any("in a row" in p for p in problems)
    assert any("budget" in p for p in problems)


def test_invalid_input():
    with pytest.raises(ValueError):
        Turn("robot", 1)
    with pytest.raises(ValueError):
        enforce([], budget=0)


# -- property tests: random histories with tool loops, huge results, system prompts ----------
@st.composite
def histories(draw):
    turns: list[Turn] = []
    n_calls = 0
    if draw(st.booleans()):
        turns.append(Turn("system", draw(st.integers(1, 80)), payload="sys"))
    for k in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["user", "assistant", "loop", "orphan", "system"]))
        if kind == "loop":
            ids = tuple(f"c{n_calls + j}" for j in range(draw(st.integers(1, 3))))
            n_calls += len(ids)
            turns.append(Turn("assistant", draw(st.integers(1, 50)), tool_call_ids=ids, payload=f"call{k}"))
            for c in ids:
                turns.append(Turn("tool", draw(st.sampled_from([5, 40, 300, 5000])), tool_call_id=c, payload=f"res{c}"))
        elif kind == "orphan":
            turns.append(Turn("tool", 10, tool_call_id="ghost", payload=f"orphan{k}"))
        elif kind == "system":
            turns.append(Turn("system", draw(st.integers(1, 20)), payload=f"sys{k}"))
        else:
            turns.append(Turn(kind, draw(st.integers(1, 200)), payload=f"{kind}{k}"))
    # the current exchange: a request, maybe an in-progress tool loop with huge results
    turns.append(Turn("user", draw(st.integers(1, 60)), payload="request"))
    for r in range(draw(st.integers(0, 3))):
        ids = tuple(f"live{r}_{j}" for j in range(draw(st.integers(1, 2))))
        turns.append(Turn("assistant", draw(st.integers(1, 30)), tool_call_ids=ids, payload=f"livecall{r}"))
        for c in ids:
            turns.append(Turn("tool", draw(st.sampled_from([3, 100, 2000, 12000])), tool_call_id=c, payload=f"res{c}"))
    return turns


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(200, 4000), st.booleans(), st.booleans())
def test_contract_holds_on_random_histories(turns, budget, alternate, with_lead):
    lead = [Turn("user", 30, payload="context")] if with_lead else []
    out = enforce(turns, budget=budget, cut=cut, alternate=alternate, lead=lead)
    rest = [t for t in turns if t.role != "system"]
    live = rest[current_exchange(rest):]
    required = tokens(t for t in turns if t.role == "system") + tokens(lead) + tokens(t for t in live if t.role != "tool")
    # the budget holds unless what the contract must keep (system, lead, live turns but tool results) exceeds it
    problems = check(out, alternate=alternate, budget=budget if required <= budget else None, source=turns)
    assert problems == [], problems
    flat = [p for t in out for p in (t.payload if isinstance(t.payload, tuple) and t.payload[:1] != ("cut",) else (t.payload,))]
    assert "request" in flat
    assert (not with_lead) or "context" in flat


# -- a history with no user turn (a loop started by a tool call) ----------------------------
def opener(text: str) -> Turn:
    return Turn("user", 25, payload=("opener", text))


def test_a_history_without_a_user_turn_leads_with_a_labelled_opener():
    from tiered_context.core import OPENER_NOTE

    turns = [Turn("system", 10, payload="sys"), Turn("assistant", 5, tool_call_ids=("c1",), payload="call"),
             Turn("tool", 40, tool_call_id="c1", payload="res")]
    out = enforce(turns, budget=200, cut=cut, opener=opener)
    assert [t.role for t in out] == ["system", "user", "assistant", "tool"]
    assert out[1].payload == ("opener", OPENER_NOTE) and "No user message" in OPENER_NOTE
    assert check(out) == []
    # never when a user turn exists (in the history or the lead), nor without the callback
    assert all(t.payload[0] != "opener" for t in enforce([Turn("user", 5, payload="u"), *turns[1:]], budget=200,
                                                                opener=opener) if isinstance(t.payload, tuple))
    assert enforce(turns, budget=200, lead=[Turn("user", 5, payload="ctx")], opener=opener)[1].payload == "ctx"
    assert [t.role for t in enforce(turns, budget=200)] == ["system", "assistant", "tool"]
    # the opener counts against the budget: the loop's results are cut to make room
    tight = enforce(turns, budget=60, cut=cut, opener=opener)
    assert tokens(tight) <= 60 and tight[1].payload[0] == "opener"
    with pytest.raises(ValueError, match="user turn"):
        enforce(turns, budget=200, opener=lambda text: Turn("assistant", 1))


@st.composite
def userless(draw):
    turns: list[Turn] = [Turn("system", draw(st.integers(1, 40)), payload="sys")] if draw(st.booleans()) else []
    for k in range(draw(st.integers(1, 6))):
        ids = tuple(f"c{k}_{j}" for j in range(draw(st.integers(1, 2))))
        turns.append(Turn("assistant", draw(st.integers(1, 30)), tool_call_ids=ids, payload=f"call{k}"))
        turns += [Turn("tool", draw(st.sampled_from([3, 100, 3000])), tool_call_id=c, payload=f"res{c}") for c in ids]
        if draw(st.booleans()):
            turns.append(Turn("assistant", draw(st.integers(1, 50)), payload=f"say{k}"))
    return turns


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(userless(), st.integers(120, 3000), st.booleans())
def test_userless_histories_keep_the_contract_with_an_opener(turns, budget, alternate):
    out = enforce(turns, budget=budget, cut=cut, alternate=alternate, opener=opener)
    assert check(out, alternate=alternate) == []
    body = [t for t in out if t.role != "system"]
    assert body and body[0].payload[0] == "opener"


# -- the one recalled-block format (both adapters) -------------------------------------------
def _item(text, *, ts=1_683_554_400.0, **meta):
    from tiered_context.core import ContextItem

    return ContextItem(id=f"i{abs(hash((text, ts)))}", text=text, role="user", timestamp=ts, metadata=meta)


def test_recalled_block_is_dated_attributed_and_its_label_short():
    from tiered_context.core import RECALL_NOTE, RECALL_TAG, recalled_block

    plain = recalled_block([_item("We moved the launch to 3 May.", speaker="Caroline")])
    assert plain.splitlines() == [f"<{RECALL_TAG}>", RECALL_NOTE, "[8 May 2023]",
                                  "Caroline: We moved the launch to 3 May.", f"</{RECALL_TAG}>"]
    original = _item("We moved the launch to 3 May.", speaker="Caroline")
    short = original.evolve(id="x~L2", text="moved launch 3 May", source_ids=(original.id,))
    summary = original.evolve(id="s", text="they planned the launch", role="summary", source_ids=("a", "b"))
    lines = recalled_block([original, short, summary]).splitlines()
    assert "Name* = compressed" in lines[1]  # the mark is explained only when a line has it
    assert lines[3:6] == ["Caroline: We moved the launch to 3 May.", "Caroline*: moved launch 3 May",
                          "summary: they planned the launch"]
    assert recalled_block([]) == ""


def test_recalled_block_dates_position_timestamps_by_created_at():
    from tiered_context.core import recalled_block

    block = recalled_block([_item("hello", ts=3.0, created_at=1_683_554_400.0)])
    assert "[8 May 2023]" in block and "user: hello" in block
    assert "[" not in recalled_block([_item("hello", ts=3.0)]).split("\n", 2)[2]  # no date to show: none invented


@pytest.mark.parametrize(("text", "meta", "line"), [
    ("[2023-05-08] Caroline: I went.", {}, "Caroline: I went."),  # the header dates it, the name is the speaker
    ("[2023-05-08] Caroline: I went.", {"speaker": "Caroline"}, "Caroline: I went."),
    ("[8 May 2023] Caroline: I went.", {}, "Caroline: I went."),
    ("[2023-05-08] Bob: I went.", {"speaker": "Caroline"}, "Caroline: Bob: I went."),  # a quote: kept
    ("[2023-05-09] Caroline: I went.", {}, "user: [2023-05-09] Caroline: I went."),  # another day: kept
    ("[10:42] Caroline: I went.", {}, "user: [10:42] Caroline: I went."),  # a time of day: kept
    ("Update: the venue changed.", {}, "user: Update: the venue changed."),  # a bare "Word:" is no speaker
    ("Caroline: I went.", {"speaker": "Caroline"}, "Caroline: I went."),
    ("[2023-05-08] Caroline:", {}, "user: [2023-05-08] Caroline:"),  # nothing but the prefix: whole
])
def test_a_prefix_that_repeats_the_header_or_speaker_is_not_paid_twice(text, meta, line):
    from tiered_context.core._render import line as render_line

    assert render_line(_item(text, **meta)) == line
