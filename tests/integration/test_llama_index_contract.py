"""What `TieredMemory` and `TieredMemoryBlock` hand the model is a valid, honest
conversation (issue 14): the conversation contract over random histories (property
tests), recalled history as one labelled block, the issue's reproductions."""

from __future__ import annotations

import asyncio
import itertools

import pytest

pytest.importorskip("llama_index.core")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock, ToolCallBlock  # noqa: E402

from tiered_context import LocalColdStore  # noqa: E402
from tiered_context.core import Turn  # noqa: E402
from tiered_context.core._conversation import check  # noqa: E402
from tiered_context.llama_index._convert import tool_call_ids, tool_result_id  # noqa: E402
from tiered_context.core import OPENER_NOTE, RECALL_NOTE, RECALL_TAG  # noqa: E402
from tiered_context.llama_index._select import turn_role  # noqa: E402
from tiered_context.llama_index import TieredMemory  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
       b"\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82")
WORDS = "launch Lisbon budget review coffee weather Paris invoice deadline team office agenda venue".split()
STORE = LocalColdStore()  # shared by the property examples (each uses its own session)
EMBEDDER = HashEmbedder()
SESSIONS = itertools.count()


def make(limit: int, **kwargs) -> TieredMemory:
    kwargs.setdefault("embedder", EMBEDDER)
    kwargs.setdefault("compaction", "inline")
    return TieredMemory.from_defaults(token_limit=limit, **kwargs)


def turns_of(memory: TieredMemory, messages: list[ChatMessage]) -> list[Turn]:
    out = []
    for m in messages:
        role = turn_role(m)
        out.append(Turn(role, memory.count_tokens([m]), tool_call_ids=tuple(tool_call_ids(m)) if role == "assistant" else (),
                        tool_call_id=tool_result_id(m) if role == "tool" else None, payload=m))
    return out


@st.composite
def histories(draw):
    """Chat histories with system prompts, tool loops (some results huge), images, runs
    of one role, and sometimes a trailing tool loop in progress."""
    messages: list[ChatMessage] = []
    if draw(st.booleans()):
        messages.append(ChatMessage(role="system", content="You are a careful assistant."))
    calls = 0
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["user", "user", "assistant", "assistant", "tool_loop", "image", "system"]))
        text = " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=30)))
        if kind == "tool_loop":
            n = draw(st.integers(1, 3))
            ids = [f"c{calls + k}" for k in range(n)]
            calls += n
            messages.append(ChatMessage(role="assistant", blocks=[
                ToolCallBlock(tool_call_id=i, tool_name="lookup", tool_kwargs={"q": text[:20]}) for i in ids]))
            for i in ids:
                size = draw(st.sampled_from([1, 1, 5, 400]))
                messages.append(ChatMessage(role="tool", content=(text + " ") * size, additional_kwargs={"tool_call_id": i}))
            if draw(st.booleans()):
                messages.append(ChatMessage(role="assistant", content=text))
        elif kind == "image":
            messages.append(ChatMessage(role="user", blocks=[TextBlock(text=text), ImageBlock(image=PNG)]))
        elif kind == "system":
            messages.append(ChatMessage(role="system", content="Note: " + text))
        else:
            messages.append(ChatMessage(role=kind, content=text))
    return messages


def live_user(messages: list[ChatMessage]) -> ChatMessage | None:
    for m in reversed(messages):
        if m.role == MessageRole.USER:
            return m
    return None


@settings(max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(history=histories(), limit=st.sampled_from([120, 300, 900]), alternate=st.booleans(), in_place=st.booleans())
def test_get_keeps_the_contract_and_the_budget(history, limit, alternate, in_place):
    memory = make(limit, store=STORE, session_id=f"prop-{next(SESSIONS)}", alternate=alternate, in_place=in_place)
    memory.put_messages(history)
    out = memory.get()
    turns = turns_of(memory, out)
    problems = check(turns, alternate=alternate)
    user = live_user(history)
    assert problems == [], problems
    body = [m for m in out if m.role not in (MessageRole.SYSTEM, MessageRole.DEVELOPER)]
    if user is None and body:  # no user message was ever put (an agent started by a tool loop):
        # a labelled context message says so and leads; no request is invented
        assert body[0].role == MessageRole.USER and body[0].content == OPENER_NOTE
        assert sum(m.content == OPENER_NOTE for m in out) == 1
    total = memory.count_tokens(out)
    # what the contract may never drop: system messages and the live exchange (its tool
    # results cut to a marker)
    system = [m for m in out if m.role in (MessageRole.SYSTEM, MessageRole.DEVELOPER)]
    live = history[max(i for i, m in enumerate(history) if m.role == MessageRole.USER):] if user is not None else []
    floor = memory.count_tokens(system) + sum(memory.count_tokens([m]) if m.role != MessageRole.TOOL else 40 for m in live
                                              if m.role not in (MessageRole.SYSTEM, MessageRole.DEVELOPER))
    assert total <= max(limit, floor), (total, limit, floor)
    if user is not None:  # the current user turn, verbatim, is the last user message sent
        sent = [m for m in out if m.role == MessageRole.USER]
        assert sent
        if alternate:  # may be merged with the user messages right before it
            assert (sent[-1].content or "").endswith(user.content or "")
        else:
            assert sent[-1] == user
    # recalled history only ever as the labelled block, in a system message
    for m in out:
        if m.role != MessageRole.SYSTEM:
            assert f"<{RECALL_TAG}>" not in (m.content or "")


def test_the_request_survives_a_huge_tool_result_in_the_loop():
    """Issue 14's repro through TieredMemory: 100 earlier messages, a request, a tool
    returning ~10k tokens: the request stays, the result is cut with a marker."""
    memory = make(1500)
    memory.put(ChatMessage(role="system", content="You fetch pages."))
    for i in range(50):
        memory.put(ChatMessage(role="user", content=f"question {i} about the {WORDS[i % len(WORDS)]}"))
        memory.put(ChatMessage(role="assistant", content=f"answer {i}"))
    request = ChatMessage(role="user", content="Summarise https://example.com/report for me.")
    memory.put(request)
    memory.put(ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="f1", tool_name="fetch", tool_kwargs={"url": "x"})]))
    memory.put(ChatMessage(role="tool", content="page text " * 5000, additional_kwargs={"tool_call_id": "f1"}))
    out = memory.get()
    assert memory.count_tokens(out) <= 1500
    roles = [m.role for m in out]
    assert roles[0] == MessageRole.SYSTEM and out[-3:][0] == request
    assert roles[-2:] == [MessageRole.ASSISTANT, MessageRole.TOOL]
    assert "cut to fit" in out[-1].content and tool_result_id(out[-1]) == "f1"
    assert check(turns_of(memory, out)) == []


def test_recalled_history_is_one_labelled_dated_block_not_rewritten_turns():
    memory = make(260, working_set_tokens=300)
    memory.put(ChatMessage(role="system", content="You are a travel assistant."))
    memory.put(ChatMessage(role="user", content="We moved the Lisbon launch to 3 May, after the security review."))
    for i in range(40):
        memory.put(ChatMessage(role="user", content=f"Turn {i}: the offsite venue, the vegetarian catering, a shorter agenda."))
        memory.put(ChatMessage(role="assistant", content=f"Answer {i}: noted, we will decide about the venue later on."))
    memory.put(ChatMessage(role="user", content="When is the Lisbon launch?"))
    view = memory.select()
    out = view.messages
    originals = {m.content for m in memory.get_all()}
    block = out[0].content
    assert out[0].role == MessageRole.SYSTEM and f"<{RECALL_TAG}>" in block and "3 May" in block
    inner = block.split(f"<{RECALL_TAG}>", 1)[1].split(f"</{RECALL_TAG}>", 1)[0].strip().splitlines()
    assert inner[0].startswith(RECALL_NOTE)  # one short label (the core's format, as LangChain's block)
    lines = inner[1:]
    assert lines[0].startswith("[") and lines[0].endswith("]")  # a day header dates the lines
    assert all(line.startswith(("[", "user", "assistant", "system", "tool", "summary:")) for line in lines)
    assert any(line.split(":", 1)[0].endswith("*") for line in lines), "the working set was compacted: compressed lines marked"
    assert "Name* = compressed" in inner[0]  # ... and the label explains the mark only then
    for m in out[1:]:  # every real turn is verbatim
        assert m.content in originals
    assert view.recalled and 1 in view.recalled


def test_in_place_rewriting_is_an_option():
    memory = make(260, working_set_tokens=300, in_place=True)
    memory.put(ChatMessage(role="user", content="We moved the Lisbon launch to 3 May, after the security review."))
    for i in range(40):
        memory.put(ChatMessage(role="user", content=f"Turn {i}: the offsite venue, the vegetarian catering, a shorter agenda."))
        memory.put(ChatMessage(role="assistant", content=f"Answer {i}: noted, we will decide about the venue later on."))
    memory.put(ChatMessage(role="user", content="When is the Lisbon launch?"))
    out = memory.get()
    assert not any(f"<{RECALL_TAG}>" in (m.content or "") for m in out)
    assert any("Lisbon" in (m.content or "") and m.role == MessageRole.USER for m in out[:-1])


def test_alternate_merges_runs_of_one_role():
    memory = make(2000, alternate=True, recent_messages=20)
    for i in range(8):
        memory.put(ChatMessage(role="user", content=f"part {i} of my question"))
    memory.put(ChatMessage(role="assistant", content="ok"))
    memory.put(ChatMessage(role="assistant", content="anything else?"))
    memory.put(ChatMessage(role="user", content="yes: the budget"))
    out = memory.get()
    assert [m.role for m in out] == [MessageRole.USER, MessageRole.ASSISTANT, MessageRole.USER]
    assert "part 0" in out[0].content and "part 7" in out[0].content
    assert check(turns_of(memory, out), alternate=True) == []


def test_async_select_agrees_with_sync():
    memory = make(200)
    for i in range(30):
        memory.put(ChatMessage(role="user", content=f"question {i} about the {WORDS[i % len(WORDS)]}"))
        memory.put(ChatMessage(role="assistant", content=f"answer {i}"))
    memory.put(ChatMessage(role="user", content="what about the invoice?"))
    view = asyncio.run(memory.aselect())
    assert view.messages == memory.get()


def test_memory_block_renders_a_labelled_dated_attributed_block():
    from llama_index.core.memory import Memory

    from tiered_context.llama_index import TieredMemoryBlock

    block = TieredMemoryBlock(token_limit=300, embedder=EMBEDDER)
    memory = Memory.from_defaults(session_id="u1", token_limit=400, chat_history_token_ratio=0.02,
                                  token_flush_size=50, memory_blocks=[block])

    async def run():
        await memory.aput(ChatMessage(role="user", content="[2023-05-08] Caroline: We moved the Lisbon launch to 3 May."))
        for i in range(20):
            await memory.aput(ChatMessage(role="user", content=f"Turn {i} about the venue and the agenda."))
            await memory.aput(ChatMessage(role="assistant", content=f"Answer {i}."))
        await memory.aput(ChatMessage(role="user", content="When is the Lisbon launch?"))
        return await memory.aget()

    out = asyncio.run(run())
    system = out[0]
    assert system.role == MessageRole.SYSTEM and "<TieredMemory>" in system.content
    assert f"<{RECALL_TAG}>" in system.content and "Caroline: We moved the Lisbon launch" in system.content


def test_memory_block_sessions_with_hostile_ids_stay_apart():
    from tiered_context.llama_index import TieredMemoryBlock

    block = TieredMemoryBlock(token_limit=300, embedder=EMBEDDER)

    async def run():
        await block.aput([ChatMessage(role="user", content="the victim's Lisbon launch is on 3 May",
                                      additional_kwargs={"session_id": "victim"})])
        for sid in ("victim~1", "victim#summaries", "victim/x", "victim\x00"):
            await block.aput([ChatMessage(role="user", content=f"other {sid!r} Lisbon", additional_kwargs={"session_id": sid})])
            assert "3 May" not in await block.aget([ChatMessage(role="user", content="Lisbon launch?")], session_id=sid)
        assert "3 May" in await block.aget([ChatMessage(role="user", content="Lisbon launch?")], session_id="victim")
        assert block.context("victim").config is block.context("victim~1").config  # one MemoryConfig

    asyncio.run(run())
