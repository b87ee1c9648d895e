"""Real LlamaIndex agents and chat engines, end to end, with `TieredMemory` (fake LLMs:
LlamaIndex's own `MockLLM` and `MockFunctionCallingLLM` with scripted replies)."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("llama_index.core")
# llama-index-workflows inspects agents with inspect.getmembers (pydantic v1 attributes)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock  # noqa: E402
from llama_index.core.chat_engine import CondensePlusContextChatEngine, SimpleChatEngine  # noqa: E402
from llama_index.core.llms import MockFunctionCallingLLM, MockLLM  # noqa: E402
from llama_index.core.memory import ChatMemoryBuffer  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402

from tiered_context import TieredContext  # noqa: E402
from tiered_context.llama_index._convert import tool_call_ids, tool_result_id  # noqa: E402
from tiered_context.llama_index import TieredMemory  # noqa: E402
from tiered_context.llama_index import TieredRetriever  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

NEEDLE = "We moved the Lisbon launch to 3 May."


def make(token_limit: int = 300, **kwargs) -> TieredMemory:
    return TieredMemory.from_defaults(token_limit=token_limit, embedder=HashEmbedder(), compaction="inline", **kwargs)


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny and 24 degrees in {city}."


class Script:
    """A function-calling fake: calls `get_weather` when asked about weather, answers
    from the tool result, otherwise acknowledges; records what the model saw."""

    def __init__(self) -> None:
        self.seen: list[list[ChatMessage]] = []

    def __call__(self, messages, **kwargs) -> ChatMessage:
        self.seen.append(list(messages))
        last = messages[-1]
        handed_over = last.role == MessageRole.TOOL and "is now handling the request" in (last.content or "")
        if last.role == MessageRole.TOOL and not handed_over:
            return ChatMessage(role="assistant", content=f"Here you go: {last.content}")
        text = last.content or ""
        if "weather" in text.lower():
            n = len(self.seen)
            return ChatMessage(role="assistant", blocks=[
                ToolCallBlock(tool_call_id=f"call-{n}", tool_name="get_weather", tool_kwargs={"city": "Lisbon"})])
        launch = next((m.content for m in messages if m.content and "Lisbon launch to" in m.content), None)
        if "launch" in text.lower() and launch:
            return ChatMessage(role="assistant", content=f"From our history: {launch}")
        return ChatMessage(role="assistant", content=f"Noted ({len(text)} chars).")


def well_formed(messages: list[ChatMessage]) -> bool:
    calls: set[str] = set()
    for m in messages:
        if m.role == MessageRole.TOOL and tool_result_id(m) not in calls:
            return False
        calls.update(tool_call_ids(m))
    return True


def test_function_agent_long_conversation_under_budget():
    script = Script()
    llm = MockFunctionCallingLLM(response_generator=script, is_chat_model=True)
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(get_weather)], llm=llm, system_prompt="Be brief.")
    memory = make(250, session_id="fa")

    async def chat():
        await agent.run(NEEDLE, memory=memory)
        for i in range(25):
            await agent.run(f"Small talk {i}: the cafeteria had soup and the printer jammed again.", memory=memory)
            if i % 6 == 0:
                await agent.run("What is the weather like?", memory=memory)
        return await agent.run("When is the Lisbon launch?", memory=memory)

    response = asyncio.run(chat())
    assert "3 May" in str(response)
    for seen in script.seen:
        history = [m for m in seen if m.role != MessageRole.SYSTEM or m.content != "Be brief."]
        assert memory.count_tokens(history) <= 250 + 200  # memory + the in-flight scratchpad of one step
        assert well_formed(seen)
    calls = [m for m in memory.get_all() if tool_call_ids(m)]
    assert len(calls) == 5 and well_formed(memory.get_all())


def test_function_agent_with_chat_history_uses_aset():
    script = Script()
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(get_weather)], llm=MockFunctionCallingLLM(response_generator=script, is_chat_model=True))
    memory = make(300)
    history = [ChatMessage(role="user", content=NEEDLE), ChatMessage(role="assistant", content="Noted.")]
    async def chat():
        return await agent.run("When is the Lisbon launch?", chat_history=history, memory=memory)

    response = asyncio.run(chat())
    assert "3 May" in str(response)
    assert [m.content for m in memory.get_all()[:2]] == [NEEDLE, "Noted."]


def test_agent_workflow_agents_share_one_memory():
    root_script = Script()

    def root(messages, **kwargs):
        root_script.seen.append(list(messages))
        last = messages[-1]
        if last.role == MessageRole.USER and "weather" in (last.content or "").lower():
            return ChatMessage(role="assistant", blocks=[ToolCallBlock(
                tool_call_id=f"handoff-{len(root_script.seen)}", tool_name="handoff",
                tool_kwargs={"to_agent": "weather", "reason": "weather question"})])
        return ChatMessage(role="assistant", content="Root agent here.")

    weather_script = Script()
    concierge = FunctionAgent(name="concierge", description="Talks to the user.", can_handoff_to=["weather"],
                              llm=MockFunctionCallingLLM(response_generator=root, is_chat_model=True), tools=[])
    weather = FunctionAgent(name="weather", description="Knows the weather.", tools=[FunctionTool.from_defaults(get_weather)],
                            llm=MockFunctionCallingLLM(response_generator=weather_script, is_chat_model=True))
    workflow = AgentWorkflow(agents=[concierge, weather], root_agent="concierge")
    memory = make(400, session_id="wf")

    async def chat():
        await workflow.run(user_msg="Hello there, I am planning a trip.", memory=memory)
        return await workflow.run(user_msg="What is the weather in Lisbon?", memory=memory)

    response = asyncio.run(chat())
    assert "Sunny" in str(response)
    everything = memory.get_all()
    names = {b.tool_name for m in everything for b in m.blocks if isinstance(b, ToolCallBlock)}
    assert names == {"handoff", "get_weather"}
    assert well_formed(everything) and all(well_formed(seen) for seen in weather_script.seen)


def test_react_agent_runs_with_tiered_memory():
    def react(messages, **kwargs):
        last = messages[-1].content or ""
        if "Observation:" in last:
            return ChatMessage(role="assistant", content="Thought: I can answer.\nAnswer: It is sunny in Lisbon.")
        if "weather" in last.lower():
            return ChatMessage(role="assistant", content=(
                'Thought: I need the tool.\nAction: get_weather\nAction Input: {"city": "Lisbon"}'))
        return ChatMessage(role="assistant", content="Thought: I can answer without tools.\nAnswer: Noted.")

    agent = ReActAgent(tools=[FunctionTool.from_defaults(get_weather)], llm=MockFunctionCallingLLM(response_generator=react, is_chat_model=True))
    memory = make(600, session_id="react")

    async def chat():
        await agent.run(NEEDLE, memory=memory)
        return await agent.run("What is the weather in Lisbon?", memory=memory)

    assert "sunny" in str(asyncio.run(chat())).lower()
    assert any(NEEDLE == m.content for m in memory.get_all())


def test_simple_chat_engine_sync_and_async():
    memory = make(200, session_id="simple")
    engine = SimpleChatEngine.from_defaults(llm=MockLLM(), memory=memory, system_prompt="You are terse.")
    engine.chat(NEEDLE)
    for i in range(20):
        engine.chat(f"Unrelated message {i} about the office plants and the coffee machine.")
    response = asyncio.run(engine.achat("When is the Lisbon launch?"))
    assert str(response)  # MockLLM echoes its prompt
    assert len(engine.chat_history) == 2 * 22
    out = memory.get()  # the current exchange (MockLLM's long echo included) is never cut
    assert out[-2].content == "When is the Lisbon launch?"
    assert memory.count_tokens(out) <= max(200, memory.count_tokens(out[-2:]))
    engine.reset()
    assert engine.chat_history == []


def test_condense_plus_context_chat_engine_with_tiered_retriever():
    docs = TieredContext(session_id="kb", embedder=HashEmbedder(), compaction="inline")
    retriever = TieredRetriever(docs, token_limit=200)
    retriever.put_nodes([
        TextNode(text="The Lisbon office opens at 9 am and closes at 6 pm.", id_="n1"),
        TextNode(text="Parking is free for visitors at the Porto office.", id_="n2"),
    ])
    memory = make(300, session_id="cpc")
    engine = CondensePlusContextChatEngine.from_defaults(retriever=retriever, llm=MockLLM(), memory=memory)
    engine.chat("When does the Lisbon office open?")
    response = engine.chat("And when does it close?")
    assert any(n.node.node_id == "n1" for n in response.source_nodes)
    assert len(memory.get_all()) == 4
    asyncio.run(engine.achat("Is parking free?"))
    assert len(memory.get_all()) == 6


def test_side_by_side_with_chat_memory_buffer():
    """Same conversation, same limit: ChatMemoryBuffer keeps only the recent tail, the
    tiered memory keeps the tail and the old relevant turn."""
    messages = [ChatMessage(role="user", content=NEEDLE), ChatMessage(role="assistant", content="Noted.")]
    for i in range(40):
        messages += [ChatMessage(role="user", content=f"Small talk {i} about soup and printers."),
                     ChatMessage(role="assistant", content=f"Reply {i}.")]
    messages.append(ChatMessage(role="user", content="When is the Lisbon launch?"))
    buffer = ChatMemoryBuffer.from_defaults(token_limit=200, chat_history=messages)
    tiered = make(200, chat_history=messages)
    assert NEEDLE not in [m.content for m in buffer.get()]
    got = tiered.get()
    assert any("Lisbon" in (m.content or "") and "3 May" in (m.content or "") for m in got)
    assert tiered.count_tokens(got) <= 200
    assert json.dumps([m.content for m in got])  # plain messages, serialisable
