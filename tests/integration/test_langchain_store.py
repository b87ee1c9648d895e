"""`TieredContextMiddleware` with the agent's LangGraph store, and side by side with
`SummarizationMiddleware` on what LangChain users complain about (real `create_agent`
graphs with a checkpointer; fake chat models and summarizers)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langgraph")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import SummarizationMiddleware  # noqa: E402
from langchain_core.messages import HumanMessage  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.store.memory import InMemoryStore  # noqa: E402

from tiered_context import Budget, LocalColdStore, TieredContext  # noqa: E402
from tiered_context import Kind  # noqa: E402
from tiered_context import ExtractiveSummarizer  # noqa: E402
from tiered_context.errors import ConfigError, DuplicateItemError, StoreError  # noqa: E402
from tiered_context.langchain import GraphStoreColdStore  # noqa: E402
from tiered_context.langchain import TieredContextMiddleware  # noqa: E402
from tiered_context.langchain.testing import RecordingChatModel  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

BADGE = "For the record, my badge number is 88231."


@dataclass
class UserContext:
    user_id: str


def _filler(i: int) -> str:
    return f"Filler {i}: museums, trams, pastries and the hotel breakfast menu were discussed at length."


def _middleware(**kw) -> TieredContextMiddleware:
    kw.setdefault("embedder", HashEmbedder())
    return TieredContextMiddleware(max_tokens=300, working_set_tokens=150, compaction="inline", **kw)


def _chat(agent, cfg, turns: int, **kw) -> None:
    for i in range(turns):
        agent.invoke({"messages": [HumanMessage(BADGE if i == 3 else _filler(i))]}, cfg, **kw)


def test_the_runtime_store_holds_the_archive_per_tenant_namespace():
    store, model = InMemoryStore(), RecordingChatModel(responses=["Noted."] * 200)
    mw = _middleware()
    agent = create_agent(model, tools=[], middleware=[mw], store=store, checkpointer=InMemorySaver(),
                         context_schema=UserContext)
    _chat(agent, {"configurable": {"thread_id": "trip.1"}}, 30, context=UserContext("alice"))
    for text in ("hi", "how are you?"):  # the current turn is archived on the next call
        agent.invoke({"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": "t2"}}, context=UserContext("bob"))
    assert (mw.last_call.user, mw.last_call.thread) == ("bob", "t2")  # the user id comes from the runtime context
    spaces = set(store.list_namespaces(prefix=("tiered_context",)))
    ctx, bob = mw.context_for("trip.1", user_id="alice"), mw.context_for("t2", user_id="bob")
    graph = ctx.store.inner
    assert isinstance(graph, GraphStoreColdStore) and ctx.summaries
    # user and thread are separate namespace fields; the store gets the injective key of each
    alice_ns, bob_ns = graph.namespace(ctx.namespace.key), graph.namespace(bob.namespace.key)
    assert {alice_ns, graph.namespace(ctx.namespace.with_kind(Kind.SUMMARIES).key), bob_ns} <= spaces
    stored = {r.key for r in store.search(alice_ns, limit=1000)}
    assert {i.id for i in ctx.store.items(ctx.namespace.key)} == stored  # every record is in the store
    assert not any("88231" in r.value["item"]["text"] for r in store.search(bob_ns, limit=100))


def test_a_resumed_thread_keeps_its_summaries(caplog):
    """A new process (new middleware and agent) with the same store and checkpointer
    replays the archived summaries instead of summarizing again."""
    store, saver = InMemoryStore(), InMemorySaver()
    cfg = {"configurable": {"thread_id": "resume"}}
    model = RecordingChatModel(responses=["Noted."] * 200)
    first = _middleware()
    _chat(create_agent(model, tools=[], middleware=[first], store=store, checkpointer=saver), cfg, 40)
    before = [s.id for s in first.context_for("resume").summaries]
    assert before
    second = _middleware()
    agent = create_agent(model, tools=[], middleware=[second], store=store, checkpointer=saver)
    with caplog.at_level(logging.WARNING, logger="tiered_context"):
        agent.invoke({"messages": [HumanMessage("What is my badge number?")]}, cfg)
    assert [s.id for s in second.context_for("resume").summaries] == before
    assert not [r for r in caplog.records if "summar" in r.getMessage()]
    assert "88231" in model.last_text


def test_async_agents_archive_into_the_runtime_store():
    store, model = InMemoryStore(), RecordingChatModel(responses=["Noted."] * 20)
    agent = create_agent(model, tools=[], middleware=[_middleware()], store=store, checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "a"}}

    async def chat():
        for text in (BADGE, "hello", "What is my badge number?"):
            await agent.ainvoke({"messages": [HumanMessage(text)]}, cfg)

    asyncio.run(chat())
    assert "88231" in model.last_text
    assert any("88231" in r.value["item"]["text"] for r in store.search(("tiered_context", "a"), limit=100))  # a plain id is its own key


def test_an_explicit_store_or_path_wins_over_the_runtime_store():
    graph_store = InMemoryStore()
    mw = _middleware(store=LocalColdStore())
    agent = create_agent(RecordingChatModel(responses=["ok"]), tools=[], middleware=[mw], store=graph_store,
                         checkpointer=InMemorySaver())
    agent.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "x"}})
    assert list(graph_store.list_namespaces()) == []
    off = _middleware(use_runtime_store=False)
    agent = create_agent(RecordingChatModel(responses=["ok"]), tools=[], middleware=[off], store=graph_store,
                         checkpointer=InMemorySaver())
    agent.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "x"}})
    assert list(graph_store.list_namespaces()) == []


def test_one_middleware_is_not_shared_by_agents_with_different_stores():
    mw = _middleware()
    model = RecordingChatModel(responses=["ok"] * 4)
    a = create_agent(model, tools=[], middleware=[mw], store=InMemoryStore(), checkpointer=InMemorySaver())
    b = create_agent(model, tools=[], middleware=[mw], store=InMemoryStore(), checkpointer=InMemorySaver())
    a.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "x"}})
    with pytest.raises(ConfigError, match="its own TieredContextMiddleware"):
        b.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "y"}})


def test_graph_store_cold_store_contract():
    store = GraphStoreColdStore(InMemoryStore())
    ctx = TieredContext(session_id="s.1", store=store, embedder=HashEmbedder(), budget=Budget(max_tokens=500))
    ctx.put_many(["The launch moved to 3 May.", "Lunch is at noon."])
    again = GraphStoreColdStore(store.store)  # a new process on the same BaseStore
    assert [i.text for i in again.items("s.1")] == ["The launch moved to 3 May.", "Lunch is at noon."]
    assert again.count("s.1") == 2 and again.items("other") == []
    item = again.items("s.1")[0]
    vec = HashEmbedder().embed([item.text])
    again.add("s.1", [item], vec)  # idempotent
    with pytest.raises(DuplicateItemError):
        again.add("s.1", [item.evolve(text="changed")], vec)
    with pytest.raises(StoreError, match="prefix"):
        GraphStoreColdStore(InMemoryStore(), prefix="a.b")
    hits = again.search("s.1", "launch", vec[0], limit=5).hits
    assert hits and hits[0].item.text.startswith("The launch")


# -- side by side with SummarizationMiddleware ------------------------------------------------
def _lossy_summarizer(calls: list[int]):
    """A stand-in for a model that keeps only the last message it is shown."""
    def summarize(messages):
        calls.append(len(messages))
        return messages[-1].text
    return summarize


def test_a_previous_summary_is_never_silently_dropped():
    calls: list[int] = []
    model = RecordingChatModel(responses=["Noted."] * 200)
    summ = SummarizationMiddleware(model, trigger=("messages", 8), keep=("messages", 2),
                                   summarizer=_lossy_summarizer(calls))
    base = create_agent(model, tools=[], middleware=[summ], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "b"}}
    _chat(base, cfg, 20)
    base.invoke({"messages": [HumanMessage("What is my badge number?")]}, cfg)
    assert len(calls) >= 2  # the first summary was itself re-summarized...
    state = base.get_state(cfg).values["messages"]
    assert not any("88231" in m.text for m in state) and "88231" not in model.last_text  # ...and the fact is gone

    model = RecordingChatModel(responses=["Noted."] * 200)
    agent = create_agent(model, tools=[], middleware=[_middleware()], checkpointer=InMemorySaver())
    _chat(agent, cfg, 20)
    agent.invoke({"messages": [HumanMessage("What is my badge number?")]}, cfg)
    assert "88231" in model.last_text
    assert any(BADGE == m.text for m in agent.get_state(cfg).values["messages"])  # state never rewritten


def test_no_summarization_on_every_turn():
    """When the kept messages alone pass the trigger, SummarizationMiddleware summarizes
    on every model call. Here summaries are folded in batches, never per call."""
    calls: list[int] = []
    model = RecordingChatModel(responses=["Noted."] * 200)
    summ = SummarizationMiddleware(model, trigger=("tokens", 120), keep=("messages", 6),
                                   summarizer=_lossy_summarizer(calls))
    base = create_agent(model, tools=[], middleware=[summ], checkpointer=InMemorySaver())
    _chat(base, {"configurable": {"thread_id": "b"}}, 40)
    assert len(calls) >= 35  # once per turn after the first few

    folds: list[int] = []

    class Counting(ExtractiveSummarizer):
        def summarize(self, items, previous=None):
            folds.append(len(items))
            return super().summarize(items, previous)

    store = LocalColdStore()
    mw = TieredContextMiddleware(max_tokens=300, compaction="inline", context_factory=lambda session, user: TieredContext(
        session_id=session, store=store, embedder=HashEmbedder(), summarizer=Counting(),
        budget=Budget(max_tokens=300, working_set_tokens=150), compaction="inline"))
    model = RecordingChatModel(responses=["Noted."] * 200)
    agent = create_agent(model, tools=[], middleware=[mw], checkpointer=InMemorySaver())
    _chat(agent, {"configurable": {"thread_id": "t"}}, 40)
    assert len(model.calls) == 40  # one model call per turn, none for summaries
    assert 1 <= len(folds) <= 5 and min(folds) > 1  # a few batched folds of many messages each
