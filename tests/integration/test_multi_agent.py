"""Multi-agent wiring: LangGraph sub-agents and LlamaIndex AgentWorkflow agents in child scopes."""

from __future__ import annotations

import asyncio

import pytest

from tiered_context.scopes import ContextScope
from tiered_context.testing import HashEmbedder

FACT = "The Lisbon launch moved to 3 May at the riverside venue."


def _long_history(tenant: str = "acme", n: int = 150) -> ContextScope:
    root = ContextScope.root(tenant=tenant, embedder=HashEmbedder())
    for k in range(n):
        root.add(f"Status note {k}: the catering vendor confirmed menus, parking permits and badge printing.",
                 key=f"n{k}", role="user" if k % 2 else "assistant")
        if k == n // 2:
            root.add(FACT, key="launch")
    return root


# -- LangGraph / create_agent --------------------------------------------------------------
def test_langgraph_subagent_gets_a_child_scope_and_hands_back_a_diff() -> None:
    pytest.importorskip("langgraph")
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, SystemMessage

    from tiered_context.langchain import ScopedSubagent
    from tiered_context.langchain.testing import RecordingChatModel

    root = _long_history()
    worker_model = RecordingChatModel(responses=["The launch is on 3 May; book the riverside venue."])
    worker = ScopedSubagent(create_agent(worker_model, tools=[]), parent=root, name="researcher", max_tokens=300)
    call = {"name": "researcher", "args": {"request": "When is the Lisbon launch?"}, "id": "c1", "type": "tool_call"}
    boss_model = RecordingChatModel(responses=[AIMessage(content="", tool_calls=[call]), "It is on 3 May."])
    supervisor = create_agent(boss_model, tools=[worker.as_tool(description="Finds facts in the shared memory.")])

    state = supervisor.invoke({"messages": [("user", "Find the launch date.")]})

    assert state["messages"][-1].content == "It is on 3 May."
    prompt = worker_model.calls[0]
    assert isinstance(prompt[0], SystemMessage) and FACT in prompt[0].content  # assembled, not copied
    result = worker.last
    assert result is not None and result.output.startswith("The launch is on 3 May")
    assert result.prompt_tokens <= 300 and root.tokens > 5 * result.prompt_tokens
    assert [b.content for b in result.diff.added] == [result.output] and result.merge is not None
    merged = root.get(result.diff.added[0].key)
    assert merged is not None and merged.metadata["merged_from"] == "researcher-1"
    assert "ScopedSubagent('researcher'" in repr(worker)


def test_langgraph_subagents_conflicting_diffs_are_reported() -> None:
    pytest.importorskip("langgraph")
    from langchain.agents import create_agent

    from tiered_context.errors import MergeConflict
    from tiered_context.langchain import ScopedSubagent
    from tiered_context.langchain.testing import RecordingChatModel

    root = _long_history(n=10)
    a = ScopedSubagent(create_agent(RecordingChatModel(responses=["A"]), tools=[]), parent=root, name="a", merge=False)
    b = ScopedSubagent(create_agent(RecordingChatModel(responses=["B"]), tools=[]), parent=root, name="b", merge=False)
    ra = asyncio.run(a.ainvoke("status?"))
    rb = b.invoke("status?")
    scope_a, scope_b = root.open(ra.scope, tenant="acme"), root.open(rb.scope, tenant="acme")
    scope_a.update("launch", "Launch on 5 May.")
    scope_b.update("launch", "Launch on 9 May.")
    root.merge(scope_a.diff())
    with pytest.raises(MergeConflict, match="launch"):
        root.merge(scope_b.diff())


# -- LlamaIndex AgentWorkflow --------------------------------------------------------------------
def test_agent_workflow_agents_each_get_a_child_scope() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent
    from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
    from llama_index.core.llms import MockFunctionCallingLLM

    from tiered_context.llama_index import ScopedAgentWorkflow, WorkflowScopes

    seen: dict[str, list[list[ChatMessage]]] = {"planner": [], "writer": []}

    def planner(messages, **kwargs):
        seen["planner"].append(list(messages))
        return ChatMessage(role="assistant", blocks=[ToolCallBlock(
            tool_call_id=f"h{len(seen['planner'])}", tool_name="handoff",
            tool_kwargs={"to_agent": "writer", "reason": "write it up"})])

    def writer(messages, **kwargs):
        seen["writer"].append(list(messages))
        return ChatMessage(role="assistant", content="Announcement: the launch is on 3 May.")

    root = _long_history()
    scopes = WorkflowScopes(root, {"planner": "plan the launch dates", "writer": "write the announcement"},
                            token_limit=400)
    agents = [
        FunctionAgent(name="planner", description="Plans.", can_handoff_to=["writer"], tools=[],
                      llm=MockFunctionCallingLLM(response_generator=planner, is_chat_model=True)),
        FunctionAgent(name="writer", description="Writes.", tools=[],
                      llm=MockFunctionCallingLLM(response_generator=writer, is_chat_model=True)),
    ]
    workflow = ScopedAgentWorkflow(agents=agents, root_agent="planner", scopes=scopes)
    assert isinstance(workflow, AgentWorkflow)

    async def run():
        return await workflow.run(user_msg="When is the Lisbon launch?", memory=scopes.memory)

    response = asyncio.run(run())

    assert "3 May" in str(response)
    for name in ("planner", "writer"):
        prompt = "\n".join(m.content or "" for m in seen[name][0])
        assert FACT in prompt and "When is the Lisbon launch?" in prompt, name
    assert scopes.memory.last_tokens <= 400 < root.tokens // 5
    results = scopes.merge_all()
    assert results["writer"].applied  # the writer's answer came back as a diff
    answer = [b for b in root.blocks() if b.metadata.get("agent") == "writer"]
    assert answer and answer[0].content.startswith("Announcement") and answer[0].metadata["merged_from"] == "writer"
    assert root.get(results["writer"].applied[0]) is not None
    assert any(m.role == MessageRole.USER for m in scopes.memory.get_all())
    assert "WorkflowScopes(parent='root'" in repr(scopes)


# -- the multi-agent eval ---------------------------------------------------------------------------
def test_run_multi_agent_reports_tokens_and_recall_per_method() -> None:
    from tiered_context.evals.datasets import Conversation, Question, Turn
    from tiered_context.evals.multi_agent import render_table, run_multi_agent

    texts = [f"Note {k}: vendors confirmed menus and parking for the hall." for k in range(60)]
    texts[10] = "Maria adopted a beagle named Pixel in March."
    texts[40] = "Tom's sister moved to Oslo to study architecture."
    turns = [Turn(id=f"D1:{k}", speaker="A" if k % 2 else "B", text=t, timestamp=1.7e9 + 60 * k, session=1)
             for k, t in enumerate(texts)]
    questions = [Question(id="q1", text="What is the name of Maria's beagle?", evidence=("D1:10",), category="4",
                          answer="Pixel"),
                 Question(id="q2", text="Where did Tom's sister move to study?", evidence=("D1:40",), category="2",
                          answer="Oslo")]
    conv = Conversation(id="c1", dataset="synthetic", turns=turns, questions=questions, speakers=("A", "B"))
    rows = run_multi_agent([conv], budgets=[120], embedder=HashEmbedder())
    by = {r["method"]: r for r in rows}
    assert set(by) == {"full", "shared", "scoped"} and all(r["questions"] == 2 for r in rows)
    assert by["scoped"]["tokens"] <= 120 and by["full"]["tokens"] >= 3 * by["scoped"]["tokens"]
    assert by["scoped"]["recall"] == 1.0 and by["scoped"]["routing_recall"] == 1.0
    assert by["scoped"]["scope_tokens"] < by["full"]["tokens"]  # each worker holds its own task's turns
    assert "| 120 | scoped | 2 |" in render_table(rows)
