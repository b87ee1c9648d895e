"""`TieredContextMiddleware` in real `create_agent` graphs with a checkpointer, fake models."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langgraph")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import SummarizationMiddleware  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    HumanMessage,
    ToolMessage,
    convert_to_openai_messages,
)
from langchain_core.tools import tool  # noqa: E402
from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from tiered_context import TokenCounter  # noqa: E402
from tiered_context.errors import BudgetError  # noqa: E402
from tiered_context.langchain import TieredContextMiddleware  # noqa: E402
from tiered_context.langchain.testing import RecordingChatModel, tool_sequence_errors  # noqa: E402
from tiered_context.testing import FailingCompressor, HashEmbedder  # noqa: E402

SYSTEM = "You are a concise travel assistant."
FACTS = {
    4: ("The Lisbon launch moved to 3 May.", "When is the Lisbon launch?", "3 May"),
    19: ("My badge number is 88231.", "What is my badge number?", "88231"),
    37: ("Maria's flight lands at 14:05 in Porto.", "When does Maria's flight land?", "14:05"),
}


@tool
def lookup_weather(city: str) -> str:
    """Current weather for a city."""
    return f"It is sunny in {city}, 21 degrees, light wind from the north-west."


def _responder():
    counter = iter(range(10_000))

    def respond(messages):
        last = messages[-1]
        if isinstance(last, HumanMessage) and "weather" in last.text.lower():
            n = next(counter)
            return AIMessage(content="", tool_calls=[{"name": "lookup_weather", "args": {"city": f"City{n}"}, "id": f"call_{n}"}])
        return "Noted."

    return respond


def _turn_text(turn: int) -> str:
    if turn in FACTS:
        return FACTS[turn][0]
    if turn % 6 == 0:
        return f"What's the weather like for stop {turn}?"
    return f"Filler message {turn}: we chatted about museums, trams, pastries and the hotel breakfast menu."


def _prompt_tokens(counter: TokenCounter, messages, tools) -> int:
    """An independent count of what the model received: messages + tool schemas."""
    msgs = [convert_to_openai_messages(m) for m in messages]
    schemas = sum(counter.count(json.dumps(convert_to_openai_tool(t), ensure_ascii=False, default=str)) + 3 for t in tools)
    return counter.count_messages(msgs) + schemas


def _agent(middleware, model, **kw):
    return create_agent(model, tools=[lookup_weather], system_prompt=SYSTEM, middleware=[middleware],
                        checkpointer=InMemorySaver(), **kw)


@pytest.fixture(scope="module")
def long_run():
    model = RecordingChatModel(respond=_responder())
    mw = TieredContextMiddleware(max_tokens=450, embedder=HashEmbedder(), compaction="inline")
    agent = _agent(mw, model)
    cfg = {"configurable": {"thread_id": "trip"}}
    for turn in range(48):
        agent.invoke({"messages": [HumanMessage(_turn_text(turn))]}, cfg)
    return agent, model, mw, cfg


def test_every_call_fits_the_budget_and_the_state_keeps_everything(long_run):
    agent, model, mw, cfg = long_run
    counter = TokenCounter()
    assert len(model.calls) > 48  # tool rounds add calls
    for call in model.calls:
        assert _prompt_tokens(counter, call, [lookup_weather]) <= 450
    assert mw.last_call.tokens <= 450
    state = agent.get_state(cfg).values["messages"]
    texts = [m.text for m in state]
    assert all(FACTS[t][0] in texts for t in FACTS)  # the graph state was never rewritten
    assert len(state) > mw.last_call.messages_out  # ...while the model saw a budgeted view
    assert sum(_prompt_tokens(counter, [m], []) for m in state) > 3 * 450


def test_facts_from_early_turns_reach_the_model(long_run):
    agent, model, _, cfg = long_run
    for _, question, answer in FACTS.values():
        agent.invoke({"messages": [HumanMessage(question)]}, cfg)
        assert answer in model.last_text, question


def test_tool_pairs_are_never_split(long_run):
    _, model, _, _ = long_run
    with_tools = 0
    for call in model.calls:
        assert tool_sequence_errors(call) == []
        with_tools += any(isinstance(m, ToolMessage) for m in call)
    assert with_tools > 5


def test_system_prompt_and_tools_count_against_the_budget():
    model = RecordingChatModel(responses=["ok"])
    mw = TieredContextMiddleware(max_tokens=60, embedder=HashEmbedder())
    agent = create_agent(model, tools=[lookup_weather], system_prompt="word " * 80, middleware=[mw])
    with pytest.raises(BudgetError, match="system prompt"):
        agent.invoke({"messages": [HumanMessage("hi")]})


def test_an_oversized_tool_result_is_truncated_with_its_pair_intact():
    @tool
    def fetch_report(name: str) -> str:
        """A very long report."""
        return "Quarterly numbers. " + "Revenue rose in every region and the hiring plan held. " * 200

    model = RecordingChatModel(responses=[
        AIMessage(content="", tool_calls=[{"name": "fetch_report", "args": {"name": "q3"}, "id": "big_1"}]), "Done."])
    mw = TieredContextMiddleware(max_tokens=300, embedder=HashEmbedder())
    agent = create_agent(model, tools=[fetch_report], middleware=[mw], checkpointer=InMemorySaver())
    agent.invoke({"messages": [HumanMessage("Summarise the q3 report")]}, {"configurable": {"thread_id": "r"}})
    last = model.calls[-1]
    assert tool_sequence_errors(last) == []
    assert _prompt_tokens(TokenCounter(), last, [fetch_report]) <= 300
    assert mw.last_call.truncated_tool_results == 1
    tool_msg = next(m for m in last if isinstance(m, ToolMessage))
    assert tool_msg.content.endswith("archived]")
    state = agent.get_state({"configurable": {"thread_id": "r"}}).values["messages"]
    assert len(next(m for m in state if isinstance(m, ToolMessage)).content) > 5000  # state untouched


def test_threads_and_users_are_separate_tenants():
    model = RecordingChatModel(responses=["ok"])
    mw = TieredContextMiddleware(max_tokens=400, embedder=HashEmbedder(), compaction="inline")
    agent = _agent(mw, model)
    a = {"configurable": {"thread_id": "1", "user_id": "alice"}}
    b = {"configurable": {"thread_id": "2", "user_id": "bob"}}
    agent.invoke({"messages": [HumanMessage("My locker code is 4471.")]}, a)
    for i in range(5):
        agent.invoke({"messages": [HumanMessage(f"bob small talk {i}")]}, b)
    agent.invoke({"messages": [HumanMessage("What is my locker code?")]}, b)
    assert "4471" not in model.last_text
    assert (mw.last_call.user, mw.last_call.thread) == ("bob", "2")
    assert mw.last_call.recalled_items == 0
    agent.invoke({"messages": [HumanMessage("What is my locker code?")]}, a)
    assert "4471" in model.last_text and (mw.last_call.user, mw.last_call.thread) == ("alice", "1")


def test_a_failing_compressor_never_costs_history():
    """SummarizationMiddleware propagates a failed summary call (the agent call fails);
    here a failing compressor leaves items verbatim and the agent carries on."""
    model = RecordingChatModel(respond=_responder())
    compressor = FailingCompressor()
    mw = TieredContextMiddleware(max_tokens=300, embedder=HashEmbedder(), compressor=compressor,
                                 working_set_tokens=200, compaction="inline")
    agent = _agent(mw, model)
    cfg = {"configurable": {"thread_id": "f"}}
    for turn in range(30):
        agent.invoke({"messages": [HumanMessage(_turn_text(turn))]}, cfg)
    assert compressor.calls > 0
    agent.invoke({"messages": [HumanMessage("What is my badge number?")]}, cfg)
    assert "88231" in model.last_text
    assert len(agent.get_state(cfg).values["messages"]) >= 62


def test_summarization_middleware_with_a_failing_model_fails_the_call():
    """The baseline's behaviour the test above improves on (documented, not ours)."""
    def broken_summarizer(messages):
        raise RuntimeError("summary model down")

    model = RecordingChatModel(responses=["ok"])
    summ = SummarizationMiddleware(model, trigger=("messages", 6), keep=("messages", 2), summarizer=broken_summarizer)
    agent = create_agent(model, tools=[], middleware=[summ], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "s"}}
    with pytest.raises(RuntimeError, match="summary model down"):
        for turn in range(6):
            agent.invoke({"messages": [HumanMessage(f"turn {turn}")]}, cfg)


def test_a_previous_summary_in_the_state_is_always_sent():
    model = RecordingChatModel(responses=["ok"])
    mw = TieredContextMiddleware(max_tokens=250, embedder=HashEmbedder(), compaction="inline")
    agent = _agent(mw, model)
    cfg = {"configurable": {"thread_id": "migrated"}}
    summary = HumanMessage("Here is a summary of the conversation to date:\n\nThe user's account id is AC-5521.",
                           additional_kwargs={"lc_source": "summarization"})
    agent.invoke({"messages": [summary, HumanMessage("hello")]}, cfg)
    for i in range(25):
        agent.invoke({"messages": [HumanMessage(f"Unrelated filler about trams and pastries number {i}.")]}, cfg)
        assert "AC-5521" in model.last_text


def test_no_extra_model_calls_per_turn(long_run):
    """One model call per agent step: the middleware never summarises with the model."""
    agent, model, _, cfg = long_run
    before = len(model.calls)
    agent.invoke({"messages": [HumanMessage("Just checking in.")]}, cfg)
    assert len(model.calls) == before + 1


def test_async_agent_uses_awrap_model_call():
    model = RecordingChatModel(respond=_responder())
    mw = TieredContextMiddleware(max_tokens=400, embedder=HashEmbedder(), compaction="inline")
    agent = _agent(mw, model)
    cfg = {"configurable": {"thread_id": "async"}}

    async def run():
        for turn in range(24):
            await agent.ainvoke({"messages": [HumanMessage(_turn_text(turn))]}, cfg)
        await agent.ainvoke({"messages": [HumanMessage("What is my badge number?")]}, cfg)

    asyncio.run(run())
    assert "88231" in model.last_text
    assert all(tool_sequence_errors(c) == [] for c in model.calls)
    assert mw.last_call.tokens <= 400


def test_multimodal_messages_are_counted_and_sent_intact():
    model = RecordingChatModel(responses=["A cat."])
    mw = TieredContextMiddleware(max_tokens=400, embedder=HashEmbedder(), compaction="inline")
    agent = _agent(mw, model)
    cfg = {"configurable": {"thread_id": "img"}}
    image = HumanMessage(content=[{"type": "text", "text": "What animal is in cat.png?"},
                                  {"type": "image", "url": "https://example.invalid/cat.png"}])
    agent.invoke({"messages": [image]}, cfg)
    agent.invoke({"messages": [HumanMessage("And which animal was in the picture I sent?")]}, cfg)
    sent = [m for m in model.calls[-1] if isinstance(m, HumanMessage) and isinstance(m.content, list)]
    assert sent and sent[0].content == image.content
    assert _prompt_tokens(TokenCounter(), model.calls[-1], [lookup_weather]) == mw.last_call.tokens
    assert mw.last_call.tokens >= 85  # the image is counted, not just its placeholder


def test_the_assembly_is_a_traced_run_with_token_counts():
    class Collect(BaseCallbackHandler):
        def __init__(self):
            self.starts, self.ends = {}, {}

        def on_chain_start(self, serialized, inputs, *, run_id, name=None, **kw):
            self.starts[run_id] = name

        def on_chain_end(self, outputs, *, run_id, **kw):
            self.ends[run_id] = outputs

    handler = Collect()
    model = RecordingChatModel(responses=["ok"])
    agent = _agent(TieredContextMiddleware(max_tokens=300, embedder=HashEmbedder()), model)
    cfg = {"configurable": {"thread_id": "traced"}, "callbacks": [handler]}
    agent.invoke({"messages": [HumanMessage("hello")]}, cfg)
    agent.invoke({"messages": [HumanMessage("hello again")]}, cfg)
    runs = [rid for rid, name in handler.starts.items() if name == "TieredContextAssembly"]
    assert len(runs) == 2
    out = handler.ends[runs[-1]]
    assert 0 < out["tokens"] <= out["max_tokens"] == 300
    assert {"system_tokens", "tool_tokens", "tail_tokens", "history_tokens", "messages_out"} <= out.keys()


def test_reopening_the_archive_resumes_a_thread(tmp_path):
    saver = InMemorySaver()
    cfg = {"configurable": {"thread_id": "disk"}}
    model = RecordingChatModel(respond=_responder())
    first = TieredContextMiddleware(max_tokens=400, path=tmp_path / "mem", embedder=HashEmbedder(), compaction="inline")
    agent = create_agent(model, tools=[lookup_weather], middleware=[first], checkpointer=saver)
    for turn in range(22):
        agent.invoke({"messages": [HumanMessage(_turn_text(turn))]}, cfg)
    stored = len(first.context_for("disk"))
    first.close()
    second = TieredContextMiddleware(max_tokens=400, path=tmp_path / "mem", embedder=HashEmbedder(), compaction="inline")
    agent = create_agent(model, tools=[lookup_weather], middleware=[second], checkpointer=saver)
    agent.invoke({"messages": [HumanMessage("What is my badge number?")]}, cfg)
    assert "88231" in model.last_text
    assert len(second.context_for("disk")) <= stored + 2  # re-ingestion is idempotent


def test_without_a_checkpointer_the_first_message_names_the_conversation():
    model = RecordingChatModel(responses=["ok"])
    mw = TieredContextMiddleware(max_tokens=300, embedder=HashEmbedder())
    agent = create_agent(model, tools=[], middleware=[mw])
    out = agent.invoke({"messages": [HumanMessage("first", id="root-1")]})
    agent.invoke({"messages": [*out["messages"], HumanMessage("second")]})
    assert mw.last_call.session == "anon-root-1"
    other = agent.invoke({"messages": [HumanMessage("elsewhere", id="root-2")]})
    assert other and mw.last_call.session == "anon-root-2"


def test_evicted_sessions_are_closed_but_the_shared_store_stays_open():
    model = RecordingChatModel(responses=["ok"])
    mw = TieredContextMiddleware(max_tokens=300, embedder=HashEmbedder(), max_sessions=2)
    agent = _agent(mw, model)
    for thread in ("a", "b", "c", "a"):
        for text in ("The gate code is 7781.", "hello again"):
            agent.invoke({"messages": [HumanMessage(f"{text} ({thread})")]}, {"configurable": {"thread_id": thread}})
    agent.invoke({"messages": [HumanMessage("What is the gate code?")]}, {"configurable": {"thread_id": "a"}})
    assert "7781" in model.last_text and mw.last_call.session == "a"
    mw.close()
