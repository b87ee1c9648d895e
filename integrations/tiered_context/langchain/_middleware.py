"""`TieredContextMiddleware`: per-call context assembly for `create_agent`.

```python
from langchain.agents import create_agent
from langgraph.checkpoint.memory import InMemorySaver
from tiered_context.langchain._middleware import TieredContextMiddleware

agent = create_agent(model, tools=[...], middleware=[TieredContextMiddleware(max_tokens=2000)],
                     checkpointer=InMemorySaver())
agent.invoke({"messages": [("user", "When is the Lisbon launch?")]}, {"configurable": {"thread_id": "t1"}})
```
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain", "langchain") from exc

from tiered_context.core import (
    REPLY_PRIMING,
    AssembledContext,
    Budget,
    ColdStore,
    Compaction,
    Compressor,
    Embedder,
    MemoryConfig,
    ScoringConfig,
    TieredContext,
    TokenCounter,
    check_id,
)
from tiered_context.errors import BudgetError, ConfigError, positive_int
from tiered_context.langchain._convert import MessageCounter, is_summary_message
from tiered_context.langchain._embeddings import as_embedder
from tiered_context.langchain._threads import Key, ThreadMemories
from tiered_context.langchain._trace import assembly_run, current_config
from tiered_context.langchain._view import (
    CallReport,
    Placement,
    block_overhead,
    build_view,
    live_start,
    placement,
    turn_query,
)

__all__ = ["CallReport", "TieredContextMiddleware"]

#: Re-assemblies with the room a built view left unused (the core packs under its budget;
#: the tail's message framing is only known once the view exists), when it is at least
#: REFILL_MIN tokens.
REFILLS = 2
REFILL_MIN = 8


def _shown(view: Any) -> set[str]:
    """What a view hands the model: its messages' ids and its recalled lines' origins."""
    return {str(m.id) for m in view.messages} | {o for item in view.recalled for o in item.origin_ids}


class TieredContextMiddleware(AgentMiddleware):
    """Sends the model a budgeted, valid conversation; the graph state keeps the whole history.

    Setup::

        from tiered_context.langchain._middleware import TieredContextMiddleware
        middleware = TieredContextMiddleware(max_tokens=2000)           # in memory, offline
        middleware = TieredContextMiddleware(max_tokens=2000, path="./memdir")  # archived on disk
        middleware = TieredContextMiddleware(max_tokens=2000, config=MemoryConfig(summarizer=LLMSummarizer(llm)))
        agent = create_agent(model, tools, middleware=[middleware], checkpointer=InMemorySaver())

    Use: invoke the agent as usual. On every model call (`wrap_model_call` /
    `awrap_model_call`) the middleware

    1. archives the messages of the thread it has not seen yet (one `put_many` each),
    2. keeps the system prompt and the current exchange verbatim (the last user message
       and the tool loop in progress after it), counting them and the tool schemas
       against ``max_tokens``; when a tool result is too big for the budget it is cut
       with a marker (the state keeps it whole), never the user's request,
    3. fills the rest with the most valuable earlier history for this request
       (`TieredContext.assemble`: relevance, recency, importance, learned preference).
       The newest of it, contiguous up to the current exchange, stays as real messages;
       the rest (older messages, compressed forms, summaries) is ONE labelled
       ``<recalled_context>`` block of dated, speaker-attributed lines, compressed lines
       marked, sent as a leading context message (``context_placement="message"``,
       default) or appended to the system prompt (``"system"``).
       ``rewrite_in_place=True`` sends recalled messages at their place instead,
       compressed ones as shortened copies (the behaviour before the block),
    4. makes it a valid conversation (`tiered_context.core._conversation`): the first
       message after the system prompt is the user's (a thread with no user message at
       all leads with a labelled context message saying so, `core.OPENER_NOTE`; nothing
       is invented), every tool result right after its
       call, and with ``alternate_roles=True`` strictly alternating user / assistant
       (for providers and chat templates that require it),
    5. calls the model with that request. The state (and your checkpointer) is never
       rewritten, and no extra model call is made (unless your `config` has an
       `LLMSummarizer`, which folds retiring history off the hot path).

    Result: every call's prompt is at most ``max_tokens`` (exact counts with the core
    `TokenCounter`). Each call's `CallReport` goes to ``on_call`` (and to any LangChain
    tracer as the outputs of a ``TieredContextAssembly`` run); pass it to
    `feedback(report, used=...)` to teach the memory what answers use. ``last_call`` is
    a read-only debugging aid (the latest call in this process, whatever its thread).

    Tenancy: the user (``user_id`` from the runtime context, the config's configurable
    or metadata) and the thread (``thread_id``) are separate fields of the memory's
    `Namespace`: no user or thread id, whatever characters it holds, reaches another's
    history, and a thread without a user is not the same memory as that thread of a user.
    Threads archived by the release that joined them (``"user/thread"``) are copied into
    the new namespace the first time the thread is opened (the old records stay).

    Where the archive lives: ``path=`` (on disk), ``store=`` (any `ColdStore`), ``config=``
    (a `MemoryConfig`: every setting, the store included, e.g. your summarizer and event
    callback), else the agent's LangGraph store when it has one (``create_agent(...,
    store=InMemoryStore())``: `GraphStoreColdStore`), else memory. Every thread's
    memory is made from one frozen `MemoryConfig`, so all share its settings and store.
    ``use_runtime_store=False`` opts out of the agent's store.
    """

    def __init__(
        self,
        max_tokens: int = 2000,
        *,
        path: str | Path | None = None,
        store: ColdStore | None = None,
        config: MemoryConfig | None = None,
        embedder: Embedder | Any | None = None,
        counter: TokenCounter | None = None,
        compressor: Compressor | None = None,
        scoring: ScoringConfig | None = None,
        working_set_tokens: int | None = None,
        compaction: Compaction | str = Compaction.BACKGROUND,
        context_placement: Placement | str = Placement.MESSAGE,
        rewrite_in_place: bool = False,
        alternate_roles: bool = False,
        on_call: Callable[[CallReport], None] | None = None,
        context_factory: Callable[[str, str | None], TieredContext] | None = None,
        max_sessions: int = 256,
        use_runtime_store: bool = True,
    ) -> None:
        super().__init__()
        positive_int("max_tokens", max_tokens)
        if store is not None and path is not None:
            raise ConfigError("pass either path= (the default store on disk) or store=, not both")
        settings = {k for k, v in (("path", path), ("store", store), ("embedder", embedder), ("counter", counter),
                                   ("compressor", compressor), ("scoring", scoring),
                                   ("working_set_tokens", working_set_tokens)) if v is not None}
        if config is not None and settings:
            raise ConfigError(f"pass config= or settings ({', '.join(sorted(settings))}), not both; "
                              "use config.replace(...) to change a setting")
        if max_sessions < 1:
            raise ConfigError("max_sessions must be >= 1")
        self.max_tokens = max_tokens
        if config is None:
            config = MemoryConfig(
                path=path, store=store, embedder=as_embedder(embedder), counter=counter or TokenCounter(),
                compressor=compressor, scoring=scoring, compaction=compaction,
                budget=Budget(max_tokens=max_tokens, working_set_tokens=working_set_tokens),
            )
        elif config.counter is None:
            config = config.replace(counter=TokenCounter())
        self.counter: TokenCounter = config.counter
        self._messages = MessageCounter(self.counter)
        self._threads = ThreadMemories(config, factory=context_factory, max_sessions=max_sessions,
                                       use_runtime_store=use_runtime_store)
        self.context_placement = placement(context_placement)
        self.rewrite_in_place = bool(rewrite_in_place)
        self.alternate_roles = bool(alternate_roles)
        self._on_call = on_call
        self._last_call: CallReport | None = None

    @property
    def config(self) -> MemoryConfig:
        """The settings every thread's memory is made from (resolved once a thread is open)."""
        return self._threads.config

    @property
    def last_call(self) -> CallReport | None:
        """The report of the latest model call in this process (a debugging aid: with
        concurrent threads it may be another thread's; use ``on_call`` for each call)."""
        return self._last_call

    # -- LangChain hooks ---------------------------------------------------------------
    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        return handler(self._traced(request))

    async def awrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]) -> Any:
        prepared = await asyncio.to_thread(self._traced, request)
        return await handler(prepared)

    # -- public helpers ----------------------------------------------------------------
    def context_for(self, thread: str, user_id: str | None = None) -> TieredContext:
        """The `TieredContext` of a thread (of `user_id`, when given), created on first use:
        inspect or pre-fill it. User and thread are separate namespace fields."""
        key: Key = (check_id(user_id, name="user_id", optional=True), check_id(thread, name="thread_id"))
        return self._threads.open(key)

    def feedback(self, report: CallReport, used: Iterable[str]) -> None:
        """Teach the memory of `report`'s thread which of its assembled items (ids or origin
        ids, e.g. ``"lc:<message id>"``) an answer used. Pass the report of that call (from
        ``on_call``): no shared "last result" is ever consulted."""
        if not isinstance(report, CallReport):
            raise ConfigError(f"feedback takes the CallReport of the call (from on_call=), got {type(report).__name__}")
        if report.assembled is None:
            return
        self.context_for(report.thread, report.user).feedback(report.assembled, used, user_id=report.user)

    def flush(self) -> None:
        """Wait for background compaction in every open thread (tests, shutdown)."""
        self._threads.flush()

    def close(self) -> None:
        """Finish background work, close every thread's memory and the store this middleware opened."""
        self._threads.close()

    # -- the work ----------------------------------------------------------------------
    def _traced(self, request: ModelRequest) -> ModelRequest:
        user, thread = self._tenant(request)
        config = current_config()
        inputs = {"thread": thread, "user": user, "message_count": len(request.messages), "max_tokens": self.max_tokens}
        with assembly_run(config, inputs, {"thread": thread}) as run:
            prepared, report = self._prepare(request, user, thread)
            run.outputs = report.as_dict()
        self._last_call = report
        if self._on_call is not None:
            self._on_call(report)
        return prepared

    def _tenant(self, request: ModelRequest) -> Key:
        runtime = request.runtime
        info = getattr(runtime, "execution_info", None)
        thread = getattr(info, "thread_id", None)
        config = current_config() or {}
        configurable = config.get("configurable") or {}
        metadata = config.get("metadata") or {}
        thread = thread or configurable.get("thread_id") or metadata.get("thread_id")
        context = getattr(runtime, "context", None)
        user = (context.get("user_id") if isinstance(context, Mapping) else getattr(context, "user_id", None)) \
            or configurable.get("user_id") or metadata.get("user_id")
        if thread is None:  # no checkpointer: the conversation is named by its first message
            first = next((m.id for m in request.messages if m.id), None)
            thread = f"anon-{first}" if first else "default"
        # UUIDs and ints are common ids: their str form; anything else is checked by Namespace
        thread = str(thread) if isinstance(thread, (int, uuid.UUID)) else thread
        user = str(user) if isinstance(user, (int, uuid.UUID)) else user
        return check_id(user or None, name="user_id", optional=True), check_id(thread, name="thread_id")

    def _prepare(self, request: ModelRequest, user: str | None, thread: str) -> tuple[ModelRequest, CallReport]:
        messages = list(request.messages)
        system = request.system_message
        mc = self._messages
        system_tokens = mc.message(system) if system is not None else 0
        tool_tokens = mc.tools(request.tools) if request.tools else 0
        if system_tokens + tool_tokens > self.max_tokens:
            raise BudgetError(
                f"the system prompt ({system_tokens} tokens) and {len(request.tools)} tool schemas "
                f"({tool_tokens} tokens) alone exceed max_tokens={self.max_tokens}; raise max_tokens "
                "or shorten the system prompt / tool descriptions"
            )
        lead = [m for m in messages if is_summary_message(m)]  # SummarizationMiddleware's summary: always sent
        body = [m for m in messages if not is_summary_message(m)]
        start = live_start(body, mc)
        history, live = body[:start], body[start:]
        self._threads.bind_store(getattr(request.runtime, "store", None))
        ctx = self.context_for(thread, user)
        self._threads.ingest((user, thread), ctx, history)
        out: AssembledContext | None = None
        room = self.max_tokens - REPLY_PRIMING - system_tokens - tool_tokens - sum(mc.message(m) for m in [*lead, *live])
        overhead = block_overhead(mc, self.context_placement)
        def view_of(assembled: AssembledContext | None) -> Any:
            return build_view(system, history, live, assembled, budget=self.max_tokens, mc=mc, lead=lead,
                              tool_tokens=tool_tokens, where=self.context_placement,
                              rewrite_in_place=self.rewrite_in_place, alternate=self.alternate_roles)

        budget = room - overhead
        if history and budget > 8 and self._threads.has_ingested((user, thread)):
            query = turn_query(body, live)
            out = ctx.assemble(query, budget=budget, user_id=user)
        view = view_of(out)
        for _ in range(REFILLS):  # the exact room left after the view is built goes back to the core
            slack = self.max_tokens - view.tokens
            if out is None or slack < REFILL_MIN:
                break
            budget += slack
            again = ctx.assemble(query, budget=budget, user_id=user)
            fuller = view_of(again)
            if fuller.tokens <= view.tokens or not _shown(view) <= _shown(fuller):
                break  # only ever more of the same: a refill never trades what the view held
            out, view = again, fuller
        prepared = request.override(messages=view.messages, system_message=view.system)
        report = CallReport(
            thread=thread, user=user, tokens=view.tokens, max_tokens=self.max_tokens, messages_in=len(messages),
            messages_out=len(view.messages), system_tokens=system_tokens, tool_tokens=tool_tokens,
            tail_tokens=view.live_tokens, history_tokens=view.history_tokens, context_tokens=view.context_tokens,
            recalled_items=view.recalled_items, truncated_tool_results=view.truncated_tool_results, assembled=out,
            recalled=view.recalled,
        )
        return prepared, report
