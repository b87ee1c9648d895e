"""`TieredChatMessageHistory` with a real `RunnableWithMessageHistory`, and the classic
`TieredSummaryMemory` in a real `ConversationChain`; fake chat models."""

from __future__ import annotations

import asyncio
import warnings

import pytest

pytest.importorskip("langchain_core")
pytestmark = pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder  # noqa: E402
from langchain_core.runnables import RunnablePassthrough  # noqa: E402
from langchain_core.runnables.history import RunnableWithMessageHistory  # noqa: E402

from tiered_context import TieredContext, TokenCounter  # noqa: E402
from tiered_context.langchain._convert import MessageCounter  # noqa: E402
from tiered_context.langchain import TieredChatMessageHistory, budgeted_history  # noqa: E402
from tiered_context.langchain.testing import RecordingChatModel, tool_sequence_errors  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402


def _history(session="s", max_tokens=250, **kw):
    return TieredChatMessageHistory(session, max_tokens=max_tokens, embedder=HashEmbedder(), compaction="inline", **kw)


def _fill(history, n=40, fact_at=7):
    for i in range(n):
        text = "My badge number is 88231." if i == fact_at else f"Filler {i}: trams, pastries and the hotel breakfast."
        history.add_messages([HumanMessage(text), AIMessage(f"Noted {i}.")])


def test_all_messages_is_the_full_history_in_order():
    h = _history()
    _fill(h, 30)
    msgs = h.all_messages
    assert len(msgs) == 60
    assert [m.text for m in msgs[:2]] == ["Filler 0: trams, pastries and the hotel breakfast.", "Noted 0."]
    assert all(m.id for m in msgs)


def test_budgeted_view_fits_and_keeps_the_fact():
    h = _history()
    _fill(h, 60)
    view = h.budgeted_messages("What is my badge number?")
    mc = MessageCounter(TokenCounter())
    assert sum(mc.message(m) for m in view) <= 250
    assert any("88231" in m.text for m in view)
    assert len(view) < len(h.all_messages)
    order = [m.id for m in h.all_messages]
    positions = [order.index(m.id) for m in view if m.id in order]
    assert positions == sorted(positions)
    # what is not the verbatim recent tail comes as ONE labelled context message first
    assert view[0].additional_kwargs.get("lc_source") == "tiered_context" and "<recalled_context>" in view[0].text
    assert sum("<recalled_context>" in m.text for m in view) == 1


def test_tool_calls_come_back_with_their_results():
    h = _history(max_tokens=200)
    _fill(h, 20, fact_at=-1)
    h.add_messages([
        HumanMessage("What's the weather in Porto?"),
        AIMessage(content="", tool_calls=[{"name": "weather", "args": {"city": "Porto"}, "id": "w1"}]),
        ToolMessage(content="Porto: rain, 14 degrees.", tool_call_id="w1"),
        AIMessage("It rains in Porto."),
    ])
    _fill(h, 20, fact_at=-1)
    for query in ("weather in Porto", "rain 14 degrees", "What's the weather"):
        view = h.budgeted_messages(query)
        assert tool_sequence_errors(view) == []
    assert "14 degrees" in "\n".join(m.text for m in h.budgeted_messages("Porto rain 14 degrees weather"))


def test_runnable_with_message_history_sees_the_budgeted_view():
    store: dict[str, TieredChatMessageHistory] = {}

    def get_history(session_id: str) -> TieredChatMessageHistory:
        return store.setdefault(session_id, _history(session_id, max_tokens=200))

    model = RecordingChatModel(responses=["Noted."])
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")])
    chain = RunnablePassthrough.assign(history=budgeted_history(query_key="question")) | prompt | model
    bot = RunnableWithMessageHistory(chain, get_history, input_messages_key="question", history_messages_key="history")
    cfg = {"configurable": {"session_id": "u1"}}
    for i in range(40):
        text = "My badge number is 88231." if i == 5 else f"Filler {i}: trams, pastries and the hotel breakfast."
        bot.invoke({"question": text}, cfg)
    bot.invoke({"question": "What is my badge number?"}, cfg)
    assert "88231" in model.last_text
    assert len(store["u1"].all_messages) == 82  # every turn stored, question and answer
    history_part = model.calls[-1][1:-1]
    mc = MessageCounter(TokenCounter())
    assert sum(mc.message(m) for m in history_part) <= 200
    # other sessions are other tenants
    bot.invoke({"question": "What is my badge number?"}, {"configurable": {"session_id": "u2"}})
    assert "88231" not in model.last_text


def test_async_runnable_with_message_history():
    store: dict[str, TieredChatMessageHistory] = {}
    model = RecordingChatModel(responses=["ok"])
    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"), ("human", "{question}")])
    chain = RunnablePassthrough.assign(history=budgeted_history(query_key="question", max_tokens=150)) | prompt | model
    bot = RunnableWithMessageHistory(chain, lambda sid: store.setdefault(sid, _history(sid)),
                                     input_messages_key="question", history_messages_key="history")

    async def run():
        cfg = {"configurable": {"session_id": "a"}}
        await bot.ainvoke({"question": "The Lisbon launch moved to 3 May."}, cfg)
        for i in range(30):
            await bot.ainvoke({"question": f"Filler {i} about museums and trams."}, cfg)
        await bot.ainvoke({"question": "When is the Lisbon launch?"}, cfg)

    asyncio.run(run())
    assert "3 May" in model.last_text


def test_as_runnable_and_clear_starts_a_new_generation(tmp_path):
    h = _history(path=tmp_path / "m")
    _fill(h, 10)
    view = h.as_runnable(max_tokens=120).invoke("What is my badge number?")
    assert any("88231" in m.text for m in view)
    h.clear()
    assert h.all_messages == [] and h.budgeted_messages("badge") == []
    h.add_messages([HumanMessage("fresh start")])
    h.context.store.close()
    reopened = TieredChatMessageHistory("s", path=tmp_path / "m", embedder=HashEmbedder())
    assert [m.text for m in reopened.messages] == ["fresh start"]  # the clear survived the reopen
    assert reopened.context.generation == 1
    assert len(reopened.context.store.items("s")) >= 20  # ...and nothing was deleted from the archive


def test_history_over_a_shared_context_and_multimodal_messages():
    ctx = TieredContext(session_id="shared", embedder=HashEmbedder())
    h = TieredChatMessageHistory(context=ctx, max_tokens=300)
    img = HumanMessage(content=[{"type": "text", "text": "Here is the floor plan."},
                                {"type": "image", "url": "https://example.invalid/plan.png"}])
    h.add_messages([img, AIMessage("Nice plan.")])
    ctx.put("A note put directly into the core: the wifi password is tram-42.", role="document")
    assert h.all_messages[0].content == img.content  # restored intact
    view = h.budgeted_messages("floor plan wifi password")
    assert isinstance(view[0], HumanMessage) and "tram-42" in view[0].text  # non-message items: the context block
    assert "document: A note put directly" in view[0].text  # attributed
    assert any(isinstance(m.content, list) for m in view)


def _summarizing_model():
    def respond(messages):
        text = "\n".join(m.text for m in messages)
        if "running summary" in text or "Merge them into one shorter summary" in text:
            return "Bob (badge 88231) chatted about trams, pastries and the hotel breakfast."
        return "Sure."

    return RecordingChatModel(respond=respond)


def test_classic_summary_memory_in_a_conversation_chain():
    """The docstring's recipe: return_messages=True with a chat prompt; the llm writes
    progressive summaries (moving_summary_buffer), the prompt stays within the limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        chains = pytest.importorskip("langchain_classic.chains")
    from tiered_context.langchain import TieredSummaryMemory

    model = _summarizing_model()
    memory = TieredSummaryMemory(llm=model, max_token_limit=150, return_messages=True, embedder=HashEmbedder())
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{input}")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chain = chains.ConversationChain(llm=model, memory=memory, prompt=prompt)
    chain.invoke({"input": "Hi, my name is Bob and my badge number is 88231."})
    for i in range(30):
        chain.invoke({"input": f"Filler {i}: trams, pastries and the hotel breakfast."})
    summary_calls = [c for c in model.calls if "running summary" in "\n".join(m.text for m in c)]
    assert summary_calls  # the llm it was given writes the summaries
    assert "88231" in memory.moving_summary_buffer
    chain.invoke({"input": "What is my badge number?"})
    assert "88231" in model.last_text
    chat_call = model.calls[-1]
    assert all(not m.text.startswith("[") for m in chat_call)  # messages, not Python reprs
    loaded = memory.load_memory_variables({"input": "badge number"})["history"]
    assert all(hasattr(m, "content") for m in loaded)
    assert sum(MessageCounter(TokenCounter()).message(m) for m in loaded) <= 150
    assert isinstance(loaded[0], SystemMessage) and "<recalled_context>" in loaded[0].text
    assert len(memory.chat_memory.all_messages) == 64  # nothing summarized away
    as_text = TieredSummaryMemory(max_token_limit=100, embedder=HashEmbedder(), chat_memory=memory.chat_memory)
    assert "Human:" in as_text.load_memory_variables({"input": "badge"})["history"]


def test_classic_memory_imports_an_existing_history():
    from langchain_core.chat_history import InMemoryChatMessageHistory

    from tiered_context.langchain import TieredSummaryMemory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = InMemoryChatMessageHistory(messages=[HumanMessage("The gate code is 7781."), AIMessage("ok")])
    memory = TieredSummaryMemory(chat_memory=old, max_token_limit=100, embedder=HashEmbedder(), return_messages=True)
    assert [m.text for m in memory.chat_memory.all_messages] == ["The gate code is 7781.", "ok"]
    out = asyncio.run(memory.aload_memory_variables({"input": "gate code"}))
    assert any("7781" in m.text for m in out["history"])
