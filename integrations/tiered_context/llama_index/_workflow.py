"""Per-agent scopes for LlamaIndex `AgentWorkflow`: each agent gets a child of one shared scope.

`AgentWorkflow` gives every agent the one shared memory, so each agent's prompt carries
every other agent's turns. `WorkflowScopes` forks one child `ContextScope` per agent
from a shared parent; `ScopedAgentWorkflow` (an `AgentWorkflow`) tells the memory which
agent is running, and the memory answers for that agent: the current turn verbatim
(user message, tool calls and results, handoffs) plus the context assembled from that
agent's scope (parent's shared blocks + its own) under `token_limit`::

    from tiered_context.scopes._scope import ContextScope
    from tiered_context.llama_index._workflow import ScopedAgentWorkflow, WorkflowScopes

    scopes = WorkflowScopes(ContextScope.root(tenant="acme"),
                            {"planner": "plan the launch", "writer": "write the announcement"},
                            token_limit=1500)
    workflow = ScopedAgentWorkflow(agents=[planner, writer], root_agent="planner", scopes=scopes)
    await workflow.run(user_msg="...", memory=scopes.memory)
    scopes.merge_all()          # each agent's diff into the parent

When a turn ends (the next user message, or `merge_all`), the user message goes to the
parent (every agent sees it) and each agent's messages go to its own scope.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, List, Optional

from tiered_context.errors import missing_extra

try:
    from llama_index.core.agent.workflow import AgentWorkflow
    from llama_index.core.agent.workflow.workflow_events import AgentInput, AgentSetup
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
    from llama_index.core.memory.types import BaseMemory
    from llama_index.core.workflow import Context, step
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.scopes import ContextScope, MergeResult, OnConflict
from tiered_context.errors import ConfigError
from tiered_context.llama_index._convert import MediaTokens, message_tokens

__all__ = ["WorkflowScopes", "ScopedWorkflowMemory", "ScopedAgentWorkflow"]

CONTEXT_HEADER = "Context from the shared memory (assembled for this agent):\n"


class WorkflowScopes:
    """One child scope per agent of a shared `parent`, and the memory that serves them."""

    def __init__(self, parent: ContextScope, agents: Mapping[str, str], *, token_limit: int = 2000) -> None:
        if not agents:
            raise ConfigError("agents must map each agent name to its task, e.g. {'planner': 'plan the launch'}")
        self.parent = parent
        self._scopes = {name: parent.fork(name, task=task or name) for name, task in agents.items()}
        self.current: str = next(iter(agents))
        self.memory = ScopedWorkflowMemory(token_limit=token_limit)
        self.memory._scopes = self

    def scope(self, agent: str) -> ContextScope:
        """The child scope of `agent`."""
        try:
            return self._scopes[agent]
        except KeyError:
            raise ConfigError(f"no scope for agent {agent!r}; known agents: {sorted(self._scopes)}") from None

    def merge_all(self, *, on_conflict: OnConflict | str = OnConflict.RAISE) -> dict[str, MergeResult]:
        """End the current turn, then merge every agent's diff into the parent (in agent
        order) and rebase the agents on the result."""
        self.memory.end_turn()
        results = {name: self.parent.merge(scope.diff(), on_conflict=on_conflict) for name, scope in self._scopes.items()}
        for scope in self._scopes.values():
            scope.rebase()
        return results

    def __repr__(self) -> str:
        return f"WorkflowScopes(parent={self.parent.name!r}, agents={sorted(self._scopes)}, current={self.current!r})"


class ScopedWorkflowMemory(BaseMemory):
    """The workflow's memory: answers `get` for the running agent (see module docstring).

    Build it through `WorkflowScopes(...).memory`. `get_all()` is every message of the
    workflow; `last_tokens` is the size of the last `get`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    token_limit: int = Field(default=2000, gt=0)
    last_tokens: int = 0
    _scopes: Any = PrivateAttr(default=None)
    _history: List[ChatMessage] = PrivateAttr(default_factory=list)
    _authors: List[Optional[str]] = PrivateAttr(default_factory=list)  # agent that put each message
    _turn: int = PrivateAttr(default=0)  # index of the current turn's first message
    _lock: Any = PrivateAttr(default_factory=threading.RLock)

    @classmethod
    def class_name(cls) -> str:
        return "ScopedWorkflowMemory"

    @classmethod
    def from_defaults(cls, **kwargs: Any) -> "ScopedWorkflowMemory":  # type: ignore[override]
        raise ConfigError("build it with WorkflowScopes(parent, {agent: task}).memory")

    def _tokens(self, messages: List[ChatMessage]) -> int:
        return sum(message_tokens(m, self._scopes.parent.counter, MediaTokens()) for m in messages)

    def end_turn(self) -> None:
        """Write the current turn out: user messages to the parent (then every agent
        rebases to see them), each agent's messages to its own scope."""
        with self._lock:
            pending = list(zip(self._history[self._turn:], self._authors[self._turn:]))
            self._turn = len(self._history)
        wrote_shared = False
        for message, author in pending:
            text = (message.content or "").strip()
            if not text:
                continue
            if message.role == MessageRole.USER or author is None:
                self._scopes.parent.add(text, role=message.role.value)
                wrote_shared = True
            else:
                self._scopes.scope(author).add(text, role=message.role.value, metadata={"agent": author})
        if wrote_shared:
            for name in self._scopes._scopes:
                self._scopes.scope(name).rebase()

    def put(self, message: ChatMessage) -> None:
        if message.role == MessageRole.USER:
            self.end_turn()
        with self._lock:
            self._history.append(message)
            self._authors.append(None if message.role == MessageRole.USER else self._scopes.current)

    async def aput(self, message: ChatMessage) -> None:
        self.put(message)

    def get(self, input: Optional[str] = None, **kwargs: Any) -> List[ChatMessage]:
        """The running agent's prompt history: assembled scope context + the current turn."""
        with self._lock:
            tail = list(self._history[self._turn:])
        query = input if isinstance(input, str) and input else next(
            (m.content or "" for m in reversed(tail) if m.role == MessageRole.USER), "")
        room = self.token_limit - self._tokens(tail)
        out: List[ChatMessage] = []
        if room > 32 and query:
            context = self._scopes.scope(self._scopes.current).assemble(query, budget=room - 16)
            if context.items:
                out.append(ChatMessage(role=MessageRole.SYSTEM, content=CONTEXT_HEADER + context.text))
        out.extend(tail)
        self.last_tokens = self._tokens(out)
        return out

    async def aget(self, input: Optional[str] = None, **kwargs: Any) -> List[ChatMessage]:
        import asyncio

        return await asyncio.to_thread(self.get, input)

    def get_all(self) -> List[ChatMessage]:
        with self._lock:
            return list(self._history)

    def set(self, messages: List[ChatMessage]) -> None:
        """Replace the workflow history (earlier turns stay in the scopes)."""
        self.end_turn()
        with self._lock:
            self._history, self._authors, self._turn = [], [], 0
        for message in messages:
            self.put(message)

    def reset(self) -> None:
        self.set([])

    def __repr__(self) -> str:
        current = self._scopes.current if self._scopes is not None else None
        return f"ScopedWorkflowMemory(token_limit={self.token_limit}, messages={len(self._history)}, agent={current!r})"


class ScopedAgentWorkflow(AgentWorkflow):
    """An `AgentWorkflow` whose agents each read their own scope (see module docstring).

    Takes `AgentWorkflow`'s arguments plus `scopes`; run it with
    ``memory=scopes.memory``. Before each agent step the memory switches to that agent
    and its input is rebuilt from the agent's scope instead of the shared history.
    """

    def __init__(self, *args: Any, scopes: WorkflowScopes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        missing = set(self.agents) - set(scopes._scopes)
        if missing:
            raise ConfigError(f"WorkflowScopes has no task for agents {sorted(missing)}; add them to its agents mapping")
        self._tiered_scopes = scopes
        scopes.current = self.root_agent

    @step
    async def setup_agent(self, ctx: Context, ev: AgentInput) -> AgentSetup:
        scopes = self._tiered_scopes
        scopes.current = ev.current_agent_name
        scoped = await scopes.memory.aget()
        return await super().setup_agent(ctx, AgentInput(input=scoped, current_agent_name=ev.current_agent_name))
