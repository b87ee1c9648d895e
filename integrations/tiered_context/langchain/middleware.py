"""`TieredContextMiddleware`: per-call context assembly for `create_agent`.

```python
from langchain.agents import create_agent
from langgraph.checkpoint.memory import InMemorySaver
from tiered_context.langchain.middleware import TieredContextMiddleware

agent = create_agent(model, tools=[...], middleware=[TieredContextMiddleware(max_tokens=2000)],
                     checkpointer=InMemorySaver())
agent.invoke({"messages": [("user", "When is the Lisbon launch?")]}, {"configurable": {"thread_id": "t1"}})
```
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
    from langchain_core.messages import BaseMessage
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain", "langchain") from exc

from tiered_context.core.assembler import AssembledContext
from tiered_context.core.budget import Budget
from tiered_context.core.compress import Compressor
from tiered_context.core.embed import Embedder, WordLlamaEmbedder
from tiered_context.core.memory import Compaction, TieredContext
from tiered_context.core.render import line
from tiered_context.core.scoring import ScoringConfig
from tiered_context.core.store import ColdStore, LocalColdStore
from tiered_context.core.tokens import REPLY_PRIMING, TokenCounter
from tiered_context.errors import BudgetError, ConfigError, DuplicateItemError, positive_int
from tiered_context.langchain._convert import (
    MessageCounter,
    Piece,
    fit_pieces,
    is_summary_message,
    item_to_message,
    message_to_item,
)
from tiered_context.langchain._trace import assembly_run, current_config
from tiered_context.langchain._view import (
    CallReport,
    finalize,
    item_value,
    recall_tokens,
    split_tail,
    tool_call_positions,
    turn_query,
)
from tiered_context.langchain.embeddings import as_embedder

__all__ = ["TieredContextMiddleware", "CallReport"]

log = logging.getLogger("tiered_context.langchain")


class _SharedStore:
    """The one store all sessions share: closing a session's context must not close it."""

    def __init__(self, store: ColdStore) -> None:
        self.inner = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def close(self) -> None:  # the middleware closes the real store in its own close()
        return None


class TieredContextMiddleware(AgentMiddleware):
    """Sends the model a budgeted context; the graph state keeps the whole history.

    Setup::

        from tiered_context.langchain.middleware import TieredContextMiddleware
        middleware = TieredContextMiddleware(max_tokens=2000)           # in memory, offline
        middleware = TieredContextMiddleware(max_tokens=2000, path="./memdir")  # archived on disk
        agent = create_agent(model, tools, middleware=[middleware], checkpointer=InMemorySaver())

    Use: invoke the agent as usual. On every model call (`wrap_model_call` /
    `awrap_model_call`) the middleware

    1. archives the messages of the thread it has not seen yet (one `put_many`),
    2. keeps the current turn (from the last user message on, tool calls and results
       included) and the system prompt verbatim, counting them and the tool schemas
       against ``max_tokens``,
    3. fills the rest with the most valuable earlier messages for this turn
       (`TieredContext.assemble`: relevance, recency, importance, learned preference),
       in their original order; a tool call and its results enter together or not at
       all, so no tool message is ever orphaned,
    4. calls the model with that request. The state (and your checkpointer) is never
       rewritten: nothing is summarised away, and no extra model call is ever made.

    Result: every call's prompt is at most ``max_tokens`` (exact counts with the core
    `TokenCounter`; ``last_call`` holds the numbers, and a ``TieredContextAssembly`` run
    shows them to any LangChain tracer). The tenant is the thread (``thread_id``),
    prefixed with ``user_id`` from the runtime context or the config when present.

    Where the archive lives: ``path=`` (on disk), ``store=`` (any `ColdStore`), else the
    agent's LangGraph store when it has one (``create_agent(..., store=InMemoryStore())``
    or any `BaseStore`: `GraphStoreColdStore` keeps each tenant's archived messages,
    compressed forms and summaries under the namespace ``("tiered_context", tenant)``),
    else memory. With a persistent archive a thread resumed by a new process replays its
    summaries instead of re-making them (exactly with ``compaction="inline"``; with
    background compaction a replay may batch differently and re-make the latest ones).
    ``use_runtime_store=False`` opts out of the agent's store.
    """

    def __init__(
        self,
        max_tokens: int = 2000,
        *,
        path: str | Path | None = None,
        store: ColdStore | None = None,
        embedder: Embedder | Any | None = None,
        counter: TokenCounter | None = None,
        compressor: Compressor | None = None,
        scoring: ScoringConfig | None = None,
        working_set_tokens: int | None = None,
        compaction: Compaction | str = Compaction.BACKGROUND,
        context_factory: Callable[[str, str | None], TieredContext] | None = None,
        max_sessions: int = 256,
        use_runtime_store: bool = True,
    ) -> None:
        super().__init__()
        positive_int("max_tokens", max_tokens)
        if store is not None and path is not None:
            raise ConfigError("pass either path= (the default store on disk) or store=, not both")
        if max_sessions < 1:
            raise ConfigError("max_sessions must be >= 1")
        self.max_tokens = max_tokens
        self.counter = counter or TokenCounter()
        self._messages = MessageCounter(self.counter)
        self._embedder = as_embedder(embedder)
        self._store = store if store is not None else (LocalColdStore(path) if path is not None else None)
        self._owns_store = store is None
        self._use_runtime_store = use_runtime_store and store is None and path is None and context_factory is None
        self._graph_store: Any = None
        self._compressor = compressor
        self._scoring = scoring
        self._working_set_tokens = working_set_tokens
        self._compaction = Compaction(compaction)
        self._factory = context_factory
        self._max_sessions = max_sessions
        self._contexts: OrderedDict[str, TieredContext] = OrderedDict()
        self._ingested: dict[str, set[str]] = {}
        self._lock = threading.RLock()
        self.last_call: CallReport | None = None

    # -- LangChain hooks ---------------------------------------------------------------
    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        return handler(self._traced(request))

    async def awrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]) -> Any:
        prepared = await asyncio.to_thread(self._traced, request)
        return await handler(prepared)

    # -- public helpers ----------------------------------------------------------------
    def context_for(self, session: str, user_id: str | None = None) -> TieredContext:
        """The `TieredContext` of a session (created on first use): inspect or pre-fill it."""
        with self._lock:
            ctx = self._contexts.get(session)
            if ctx is not None:
                self._contexts.move_to_end(session)
                return ctx
            if self._factory is not None:
                ctx = self._factory(session, user_id)
            else:
                if self._store is None:
                    self._store = LocalColdStore()
                if self._embedder is None:
                    self._embedder = WordLlamaEmbedder()
                ctx = TieredContext(
                    session_id=session, user_id=user_id, store=_SharedStore(self._store), embedder=self._embedder,
                    counter=self.counter, compressor=self._compressor, scoring=self._scoring,
                    budget=Budget(max_tokens=self.max_tokens, working_set_tokens=self._working_set_tokens),
                    compaction=self._compaction,
                )
            self._contexts[session] = ctx
            self._ingested[session] = set()
            while len(self._contexts) > self._max_sessions:  # the archive stays; reopened on demand
                old, evicted = self._contexts.popitem(last=False)
                self._ingested.pop(old, None)
                self._retire(evicted)
            return ctx

    def _bind_store(self, graph_store: Any) -> None:
        """Archive into the agent's LangGraph store (``create_agent(store=...)``) when this
        middleware was given no path, store or factory of its own."""
        if graph_store is None or not self._use_runtime_store:
            return
        with self._lock:
            if self._store is None:
                from tiered_context.langchain.graph_store import GraphStoreColdStore

                self._store, self._graph_store = GraphStoreColdStore(graph_store), graph_store
            elif self._graph_store is not None and graph_store is not self._graph_store:
                raise ConfigError(
                    "this TieredContextMiddleware already archives into another agent's store; give each agent "
                    "that has its own store= its own TieredContextMiddleware (or pass store=/path= explicitly)"
                )

    def _retire(self, ctx: TieredContext) -> None:
        if self._factory is None:
            ctx.close()  # waits for its compaction, stops its worker; the shared store stays open
        else:
            ctx.flush()  # a factory's contexts belong to the caller

    def flush(self) -> None:
        """Wait for background compaction in every open session (tests, shutdown)."""
        with self._lock:
            contexts = list(self._contexts.values())
        for ctx in contexts:
            ctx.flush()

    def close(self) -> None:
        """Finish background work, close every session and the store this middleware opened."""
        with self._lock:
            contexts = list(self._contexts.values())
            self._contexts.clear()
            self._ingested.clear()
        for ctx in contexts:
            self._retire(ctx)
        if self._owns_store and self._store is not None and hasattr(self._store, "close"):
            self._store.close()

    # -- the work ----------------------------------------------------------------------
    def _traced(self, request: ModelRequest) -> ModelRequest:
        session, user = self._tenant(request)
        config = current_config()
        inputs = {"session": session, "message_count": len(request.messages), "max_tokens": self.max_tokens}
        with assembly_run(config, inputs, {"session": session}) as run:
            prepared, report = self._prepare(request, session, user)
            run.outputs = report.as_dict()
        self.last_call = report
        return prepared

    def _tenant(self, request: ModelRequest) -> tuple[str, str | None]:
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
        return (f"{user}/{thread}" if user else str(thread)), (str(user) if user else None)

    def _prepare(self, request: ModelRequest, session: str, user: str | None) -> tuple[ModelRequest, CallReport]:
        messages = list(request.messages)
        system = request.system_message
        mc = self._messages
        system_tokens = mc.message(system) if system is not None else 0
        tool_tokens = mc.tools(request.tools) if request.tools else 0
        fixed = system_tokens + tool_tokens + REPLY_PRIMING
        if fixed > self.max_tokens:
            raise BudgetError(
                f"the system prompt ({system_tokens} tokens) and {len(request.tools)} tool schemas "
                f"({tool_tokens} tokens) alone exceed max_tokens={self.max_tokens}; raise max_tokens "
                "or shorten the system prompt / tool descriptions"
            )
        available = self.max_tokens - fixed
        cut, tail, truncated = split_tail(messages, available, mc, self.max_tokens)
        tail_tokens = sum(mc.message(m) for m in tail)
        summary_idx = next((i for i in range(cut - 1, -1, -1) if is_summary_message(messages[i])), None)
        self._bind_store(getattr(request.runtime, "store", None))
        ctx = self.context_for(session, user)
        self._ingest(session, ctx, messages[:cut])
        history_room = available - tail_tokens
        pieces = [Piece(m.id or f"tail{i}", m, position=cut + i, value=float("inf"), protected=True)
                  for i, m in enumerate(tail)]
        if summary_idx is not None:  # a summary written by SummarizationMiddleware is never dropped
            s = messages[summary_idx]
            pieces.append(Piece(s.id or "summary", s, position=summary_idx, value=float("inf"), protected=True))
            history_room -= mc.message(s)
        out: AssembledContext | None = None
        recalled: list[tuple[float, str]] = []
        if history_room > 8 and self._ingested.get(session):
            query = turn_query(messages, tail)
            out = ctx.assemble(query, budget=history_room, user_id=user)
            position = {m.id: i for i, m in enumerate(messages) if m.id}
            taken = {p.key for p in pieces}
            for item in out.items:
                value = item_value(out, item)
                lc_id = item.metadata.get("lc_id")
                if len(item.origin_ids) == 1 and lc_id in position:
                    if lc_id in taken or position[lc_id] >= cut:
                        continue
                    message = item_to_message(item, messages[position[lc_id]])
                    if message is not None:
                        pieces.append(Piece(lc_id, message, position=position[lc_id], value=value))
                        taken.add(lc_id)
                        continue
                recalled.append((value, line(item)))
        by_call = tool_call_positions(messages[:cut])

        def partners(call_id: str) -> list[Piece]:
            return [Piece(messages[i].id or f"m{i}", messages[i], position=i, value=0.0) for i in by_call.get(call_id, ())]

        recall_cost = recall_tokens(self.counter, recalled)
        kept, _ = fit_pieces(pieces, budget=self.max_tokens, fixed_tokens=fixed + recall_cost, counter=mc, partners=partners)
        final_system, view, total = finalize(system, kept, recalled, tool_tokens, mc, self.max_tokens)
        prepared = request.override(messages=view, system_message=final_system)
        report = CallReport(
            session=session, tokens=total, max_tokens=self.max_tokens, messages_in=len(messages),
            messages_out=len(view), system_tokens=system_tokens, tool_tokens=tool_tokens, tail_tokens=tail_tokens,
            history_tokens=max(0, total - fixed - tail_tokens), recalled_items=len(recalled),
            truncated_tool_results=truncated, assembled=out,
        )
        return prepared, report

    def _ingest(self, session: str, ctx: TieredContext, messages: list[BaseMessage]) -> None:
        """Archive the messages of the thread not seen yet, one `put_many` per message: a
        reopened archive replays its originals one by one (`TieredContext` resumes per
        item), so live compaction must see the same steps, or a resumed thread would
        re-make its summaries (re-asking an LLM summarizer) instead of replaying them."""
        seen = self._ingested.setdefault(session, set())
        fresh = [m for m in messages if m.id and m.id not in seen]
        now = time.time()
        for m in fresh:
            item = message_to_item(m, timestamp=now)
            if item is None:
                continue
            try:
                ctx.put_many([item])
            except DuplicateItemError:  # a message id reused with new content: keep both versions
                digest = hashlib.blake2b(item.text.encode(), digest_size=4).hexdigest()
                ctx.put_many([message_to_item(m, timestamp=now, item_id=f"lc:{m.id}:{digest}")])
        seen.update(m.id for m in fresh)
