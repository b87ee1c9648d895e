"""`ScopedSubagent`: a `create_agent` sub-agent that works in a child scope and hands back a diff.

The usual supervisor pattern copies the supervisor's whole history into every worker.
Here a worker gets a child `ContextScope` of the supervisor's scope: its prompt holds the
context assembled for its request under `max_tokens` tokens (not a copy), its messages are
written to its own scope, and what it produced comes back to the parent as a
`ScopeDiff`, merged (by default) when the call ends::

    from langchain.agents import create_agent
    from tiered_context.scopes._scope import ContextScope
    from tiered_context.langchain._subagents import ScopedSubagent

    memory = ContextScope.root(tenant="acme")          # the supervisor's scope
    researcher = ScopedSubagent(create_agent(model, tools=[search]), parent=memory,
                                name="researcher", max_tokens=1500)
    supervisor = create_agent(model, tools=[researcher.as_tool(description="Looks things up.")])
    supervisor.invoke({"messages": [("user", "...")]})
    result = researcher.invoke("Who launches first?")   # a SubagentResult: its own, never shared
    result.diff, result.prompt_tokens                    # what came back, what it cost
"""

from __future__ import annotations

import itertools
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_core.tools import BaseTool, StructuredTool
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain", "langchain") from exc

from tiered_context.core import AssembledContext
from tiered_context.scopes import ContextScope, MergeResult, OnConflict, ScopeDiff
from tiered_context.errors import ConfigError, positive_int

__all__ = ["ScopedSubagent", "SubagentResult"]

CONTEXT_HEADER = "Context from the shared memory (assembled for this request):\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class SubagentResult:
    """One sub-agent call: its answer, its scope, the diff it handed back, and the merge."""

    output: str
    scope: str
    diff: ScopeDiff
    merge: MergeResult | None
    prompt_tokens: int  # tokens of the context the sub-agent was given (<= max_tokens)
    assembled: AssembledContext
    messages: tuple[BaseMessage, ...]


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)


class ScopedSubagent:
    """Runs a LangGraph agent (e.g. `create_agent(...)`) in a fresh child scope per call.

    Each call: fork ``"<name>-<n>"`` from `parent` (task = the request), assemble the
    parent's shared context for the request under `max_tokens`, invoke the agent with that
    context as a system message and the request as the user message, write the agent's
    new messages (answers, tool calls, tool results) into the child scope, and take its
    `diff()`; with ``merge=True`` the diff is merged into `parent` (`on_conflict` as
    `ContextScope.merge`). `invoke` returns that call's `SubagentResult`; `last` is a
    read-only debugging aid (the latest call, whichever thread made it).
    ``budget=`` is the deprecated name of ``max_tokens`` (removed in the next release).
    """

    def __init__(
        self,
        agent: Any,
        *,
        parent: ContextScope,
        name: str,
        task: str = "",
        max_tokens: int | None = None,
        merge: bool = True,
        on_conflict: OnConflict | str = OnConflict.RAISE,
        budget: int | None = None,
    ) -> None:
        if not hasattr(agent, "invoke"):
            raise TypeError("agent must be a LangGraph graph or runnable with invoke(); pass create_agent(...)")
        if budget is not None:
            if max_tokens is not None:
                raise ConfigError("pass max_tokens= only (budget= is its deprecated name)")
            warnings.warn("ScopedSubagent(budget=) is deprecated; use max_tokens= (the name everywhere in the "
                          "LangChain adapters); budget= will be removed in the next release",
                          DeprecationWarning, stacklevel=2)
            max_tokens = budget
        self.agent, self.parent, self.name, self.task = agent, parent, name, task
        self.max_tokens = positive_int("max_tokens", 1000 if max_tokens is None else max_tokens)
        self.merge, self.on_conflict = merge, OnConflict(on_conflict)
        self._last: SubagentResult | None = None
        self._calls = itertools.count(1)
        self._lock = threading.Lock()

    def _prepare(self, request: str) -> tuple[ContextScope, AssembledContext, list[BaseMessage]]:
        with self._lock:
            scope = self.parent.fork(f"{self.name}-{next(self._calls)}", task=self.task or request)
        context = scope.assemble(request, budget=self.max_tokens)
        messages: list[BaseMessage] = [HumanMessage(request)]
        if context.items:
            messages.insert(0, SystemMessage(CONTEXT_HEADER + context.text))
        return scope, context, messages

    def _finish(self, scope: ContextScope, context: AssembledContext, sent: int, state: Any) -> SubagentResult:
        produced = list(state["messages"][sent:]) if isinstance(state, dict) else []
        for message in produced:
            text = _text(message)
            calls = getattr(message, "tool_calls", None) or []
            if calls:
                text = (text + "\n" if text else "") + "; ".join(f"called {c['name']}({c.get('args')})" for c in calls)
            if not text.strip():
                continue
            role = "tool" if isinstance(message, ToolMessage) else "assistant" if isinstance(message, AIMessage) else "user"
            scope.add(text, role=role, metadata={"agent": self.name, "lc_id": message.id})
        answer = next((_text(m) for m in reversed(produced) if isinstance(m, AIMessage) and _text(m).strip()), "")
        diff = scope.diff()
        merged = self.parent.merge(diff, on_conflict=self.on_conflict) if self.merge and diff else None
        result = SubagentResult(output=answer, scope=scope.name, diff=diff, merge=merged, prompt_tokens=context.tokens,
                                assembled=context, messages=tuple(produced))
        self._last = result
        return result

    @property
    def last(self) -> SubagentResult | None:
        """The latest call's result (read-only debugging aid; `invoke` returns each call's own)."""
        return self._last

    @property
    def budget(self) -> int:
        """Deprecated name of `max_tokens`."""
        warnings.warn("ScopedSubagent.budget is deprecated; use max_tokens", DeprecationWarning, stacklevel=2)
        return self.max_tokens

    def invoke(self, request: str, config: Any = None) -> SubagentResult:
        """Run the sub-agent on `request` in a new child scope (see the class docstring)."""
        scope, context, messages = self._prepare(request)
        state = self.agent.invoke({"messages": messages}, config)
        return self._finish(scope, context, len(messages), state)

    async def ainvoke(self, request: str, config: Any = None) -> SubagentResult:
        """Async twin of `invoke`."""
        import asyncio

        scope, context, messages = await asyncio.to_thread(self._prepare, request)
        state = await self.agent.ainvoke({"messages": messages}, config)
        return await asyncio.to_thread(self._finish, scope, context, len(messages), state)

    def as_tool(self, name: str | None = None, description: str | None = None) -> BaseTool:
        """A tool a supervisor agent calls with a `request`; it returns the sub-agent's answer."""
        def run(request: str) -> str:
            return self.invoke(request).output

        async def arun(request: str) -> str:
            return (await self.ainvoke(request)).output

        return StructuredTool.from_function(
            func=run, coroutine=arun, name=name or self.name,
            description=description or f"Delegate a request to the {self.name} sub-agent"
                                       + (f" ({self.task})" if self.task else "") + "; returns its answer.",
        )

    def __repr__(self) -> str:
        return (f"ScopedSubagent({self.name!r}, parent={self.parent.name!r}, max_tokens={self.max_tokens}, "
                f"merge={self.merge}, on_conflict={self.on_conflict.value!r})")
