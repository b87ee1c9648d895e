"""`TieredMemoryBlock` and `TieredFactBlock` inside LlamaIndex's own `Memory`."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock  # noqa: E402
from llama_index.core.memory import Memory  # noqa: E402

from tiered_context import LocalColdStore  # noqa: E402
from tiered_context.llama_index import TieredFactBlock, TieredMemoryBlock  # noqa: E402
from tiered_context.llama_index._blocks import extract_facts  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

NEEDLE = "We moved the Lisbon launch to 3 May, after the security review."


def run(coro):
    return asyncio.run(coro)


def filler(i: int) -> list[ChatMessage]:
    return [
        ChatMessage(role="user", content=f"Filler {i}: the cafeteria served soup and the printer jammed again on floor two."),
        ChatMessage(role="assistant", content=f"Reply {i}: sorry to hear that, the facilities team has been told."),
    ]


def memory_with(*blocks, session_id: str = "u1", token_limit: int = 400) -> Memory:
    return Memory.from_defaults(session_id=session_id, token_limit=token_limit, token_flush_size=100,
                                chat_history_token_ratio=0.5, memory_blocks=list(blocks))


def test_tiered_block_receives_flushed_messages_and_serves_relevant_ones():
    block = TieredMemoryBlock(token_limit=120, embedder=HashEmbedder())
    memory = memory_with(block)

    async def chat():
        await memory.aput(ChatMessage(role="user", content=NEEDLE))
        await memory.aput(ChatMessage(role="assistant", content="Noted."))
        for i in range(12):
            await memory.aput_messages(filler(i))
        await memory.aput(ChatMessage(role="user", content="When is the Lisbon launch?"))
        return await memory.aget()

    messages = run(chat())
    assert len(block.context("u1")) > 0, "Memory flushed into the block"
    system = messages[0]
    assert system.role == "system" and "<TieredMemory>" in system.content
    assert "Lisbon launch to 3 May" in system.content
    assert block.counter.count(system.content) < 200


def test_tiered_block_sessions_are_isolated():
    store = LocalColdStore()
    block = TieredMemoryBlock(token_limit=200, embedder=HashEmbedder(), store=store)

    async def go():
        await block.aput([ChatMessage(role="user", content="My locker code is 4471.")], session_id="alice")
        await block.aput([ChatMessage(role="user", content="I like green tea.")], session_id="bob")
        bob = await block.aget([ChatMessage(role="user", content="What is my locker code?")], session_id="bob")
        alice = await block.aget([ChatMessage(role="user", content="What is my locker code?")], session_id="alice")
        return alice, bob

    alice, bob = run(go())
    assert "4471" in alice and "4471" not in bob


def test_tiered_block_keeps_tool_bundles_and_truncates_by_reassembling():
    block = TieredMemoryBlock(token_limit=300, embedder=HashEmbedder())
    call = ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="weather", tool_kwargs={"city": "Lisbon"})])
    result = ChatMessage(role="tool", content="Lisbon: sunny, 24 degrees.", additional_kwargs={"tool_call_id": "c1"})

    async def go():
        await block.aput([ChatMessage(role="user", content=NEEDLE)] + sum((filler(i) for i in range(10)), []) + [call, result], session_id="s")
        content = await block.aget([ChatMessage(role="user", content="Lisbon weather and launch?")], session_id="s")
        smaller = await block.atruncate(content, block.counter.count(content) // 2)
        nothing = await block.atruncate(content, block.counter.count(content) + 1)
        return content, smaller, nothing

    content, smaller, nothing = run(go())
    assert "[call weather" in content and "sunny" in content
    assert smaller is not None and block.counter.count(smaller) <= block.counter.count(content) // 2 + 1
    assert "Lisbon" in smaller
    assert nothing is None


def test_memory_truncates_the_tiered_block_under_pressure():
    block = TieredMemoryBlock(token_limit=400, embedder=HashEmbedder(), priority=1)
    memory = memory_with(block, token_limit=200)

    async def chat():
        for i in range(10):
            await memory.aput_messages(filler(i))
        await memory.aput(ChatMessage(role="user", content="What did the cafeteria serve?"))
        return await memory.aget()

    messages = run(chat())
    assert memory._estimate_token_count(messages) <= 260  # Memory's own accounting, with truncation


def test_fact_block_extracts_per_session_and_ranks_by_relevance():
    facts = TieredFactBlock(token_limit=60)
    alice = memory_with(facts, session_id="alice")
    bob = memory_with(facts, session_id="bob")

    async def chat():
        await alice.aput(ChatMessage(role="user", content="I moved to Lisbon in 2021. My budget is 3000 EUR. ok thanks"))
        await bob.aput(ChatMessage(role="user", content="My dog is called Biscuit."))
        for i in range(10):
            await alice.aput_messages(filler(i))
            await bob.aput_messages(filler(i))
        await alice.aput(ChatMessage(role="user", content="What is my budget?"))
        await bob.aput(ChatMessage(role="user", content="What is my dog called?"))
        return await alice.aget(), await bob.aget()

    alice_messages, bob_messages = run(chat())
    assert "My budget is 3000 EUR." in facts.facts("alice")
    assert "Biscuit" not in " ".join(facts.facts("alice"))
    assert "Biscuit" in bob_messages[0].content and "3000" not in bob_messages[0].content
    text = alice_messages[0].content
    assert text.index("3000 EUR") < text.index("Lisbon") if "Lisbon" in text else "3000 EUR" in text


def test_fact_extraction_offline():
    found = extract_facts("haha thanks! I moved to Lisbon in 2021. What time is it? My sister Ana works at Siemens.")
    assert found == ["I moved to Lisbon in 2021.", "My sister Ana works at Siemens."]


def test_fact_block_truncates_least_relevant_first():
    block = TieredFactBlock(token_limit=500, extractor=lambda text: [s.strip() for s in text.split(";")])

    async def go():
        await block.aput([ChatMessage(role="user", content="budget is 3000 EUR; flight on 3 May; hotel in Alfama")], session_id="s")
        content = await block.aget([ChatMessage(role="user", content="what is the budget?")], session_id="s")
        return content, await block.atruncate(content, 6)

    content, truncated = run(go())
    assert content.splitlines()[0] == "- budget is 3000 EUR"
    assert truncated is not None and truncated.splitlines()[0] == "- budget is 3000 EUR"
    assert len(truncated.splitlines()) < len(content.splitlines())
