"""`TieredChatMessageHistory`: a `BaseChatMessageHistory` over the tiered core.

```python
from langchain_core.runnables.history import RunnableWithMessageHistory
from tiered_context.langchain.history import TieredChatMessageHistory, budgeted_history

histories = {}
def get_history(session_id):          # keep one history object per session
    return histories.setdefault(session_id, TieredChatMessageHistory(session_id, max_tokens=1000))

chain = RunnablePassthrough.assign(history=budgeted_history(query_key="question")) | prompt | model
bot = RunnableWithMessageHistory(chain, get_history, input_messages_key="question",
                                 history_messages_key="history")
```
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.callbacks import BaseCallbackManager
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage, message_to_dict
    from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain-core", "langchain") from exc

from tiered_context.core.assembler import AssembledContext
from tiered_context.core.budget import Budget
from tiered_context.core.embed import Embedder
from tiered_context.core.items import ContextItem, Role
from tiered_context.core.memory import Compaction, TieredContext
from tiered_context.core.render import line
from tiered_context.core.store import ColdStore
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import ConfigError, InputError, positive_int
from tiered_context.langchain._convert import (
    MessageCounter,
    Piece,
    ensure_ids,
    fit_pieces,
    item_to_message,
    message_text,
    message_to_item,
)
from tiered_context.langchain._trace import assembly_run, report_outputs
from tiered_context.langchain.embeddings import as_embedder

__all__ = ["TieredChatMessageHistory", "budgeted_history", "query_text"]

_EMPTY = "[empty message]"
_RECALL_HEADER = "Relevant earlier context (not verbatim messages):\n"


def query_text(value: Any, key: str | None = None) -> str:
    """The query in a chain input: a str, a message, a list of messages (the last user
    message), or a dict (``value[key]``, else its only str value, else ``input``/``question``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseMessage):
        return message_text(value)
    if isinstance(value, Mapping):
        if key is not None:
            return query_text(value[key])
        texts = [v for v in value.values() if isinstance(v, str)]
        if len(texts) == 1:
            return texts[0]
        for k in ("input", "question", "query"):
            if k in value:
                return query_text(value[k])
        raise InputError(f"cannot tell which key of {sorted(value)} is the query; pass query_key=")
    if isinstance(value, Sequence):
        human = [m for m in value if isinstance(m, HumanMessage)]
        msgs = human or [m for m in value if isinstance(m, BaseMessage)]
        return message_text(msgs[-1]) if msgs else ""
    raise InputError(f"cannot read a query from {type(value).__name__}; pass a str, messages or a dict")


class TieredChatMessageHistory(BaseChatMessageHistory):
    """Chat history whose ``messages`` are the whole conversation and whose
    ``budgeted_messages(query)`` are what a model should see of it.

    Setup::

        history = TieredChatMessageHistory("session-1", max_tokens=1000)               # in memory
        history = TieredChatMessageHistory("session-1", path="./memdir")               # on disk
        history = TieredChatMessageHistory(context=TieredContext(session_id="s1"))     # your core

    Use::

        history.add_messages([HumanMessage("We moved the launch to 3 May."), AIMessage("Noted.")])
        history.messages                                   # every message, intact, in order
        history.budgeted_messages("When is the launch?")   # <= max_tokens, pairs intact
        history.as_runnable()                              # the same, as a Runnable (query -> messages)

    With `RunnableWithMessageHistory`, put `budgeted_history()` in front of the prompt
    (see the module docstring): the chain then sees the budgeted view while the history
    keeps everything. Nothing is deleted: ``clear()`` starts a new, empty generation of
    the session and leaves the old one in the archive.
    """

    def __init__(
        self,
        session_id: str = "default",
        *,
        context: TieredContext | None = None,
        max_tokens: int = 2000,
        path: str | Path | None = None,
        store: ColdStore | None = None,
        embedder: Embedder | Any | None = None,
        counter: TokenCounter | None = None,
        user_id: str | None = None,
        compaction: Compaction | str = Compaction.BACKGROUND,
    ) -> None:
        positive_int("max_tokens", max_tokens)
        if context is not None and any(v is not None for v in (path, store, embedder, counter)):
            raise ConfigError("pass either context= or the settings to build one (path/store/embedder/counter), not both")
        self.max_tokens = max_tokens
        if context is None:
            context = TieredContext(session_id=session_id, user_id=user_id, path=path, store=store,
                                    embedder=as_embedder(embedder), counter=counter,
                                    budget=Budget(max_tokens=max_tokens), compaction=compaction)
        self.base_session = context.session_id
        self._base = context
        self._ctx = self._current_generation(context)
        self._mc = MessageCounter(self._ctx.counter)
        self._restored: dict[str, BaseMessage] = {}

    # -- BaseChatMessageHistory --------------------------------------------------------
    @property
    def context(self) -> TieredContext:
        """The `TieredContext` of the current generation (the one `assemble` runs on)."""
        return self._ctx

    @property
    def session_id(self) -> str:
        return self._ctx.session_id

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """Every message of the conversation, in order, exactly as it was added."""
        return [m for _, m in self._originals()]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        now = time.time()
        items = []
        for m in ensure_ids(messages):
            item = message_to_item(m, timestamp=now)
            if item is None:  # an empty message still belongs to the history
                item = ContextItem.create(_EMPTY, role=Role.ASSISTANT if isinstance(m, AIMessage) else Role.USER,
                                          timestamp=now, id=f"lc:{m.id}",
                                          metadata={"lc_id": m.id, "lc_message": message_to_dict(m)})
            items.append(item)
        if items:
            self._ctx.put_many(items)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await asyncio.to_thread(self.add_messages, list(messages))

    def clear(self) -> None:
        """Start a new, empty generation; the old messages stay archived (never deleted)."""
        generation = self._generation(self._ctx.session_id) + 1
        marker = ContextItem.create(f"[history cleared: generation {generation}]", role=Role.SYSTEM,
                                    metadata={"lc_clear": generation}, id=f"lc-clear:{generation}")
        self._base.put_many([marker])
        self._ctx = self._sibling(f"{self.base_session}#g{generation}")
        self._restored.clear()

    # -- the budgeted view -------------------------------------------------------------
    def assembled(self, query: str, *, max_tokens: int | None = None) -> AssembledContext:
        """The raw core result for `query` (items, text, report) under the budget."""
        return self._ctx.assemble(query, budget=max_tokens or self.max_tokens)

    def budgeted_messages(self, query: str, *, max_tokens: int | None = None, callbacks: Any = None) -> list[BaseMessage]:
        """The messages worth sending for `query`, at most ``max_tokens`` tokens (exact
        message counts: text, tool calls, images, framing), in conversation order.
        Tool calls come with all their results or not at all. Non-message items (e.g. a
        summary or a document put into the same context) come first as one SystemMessage."""
        budget = max_tokens or self.max_tokens
        if not self._ctx.working_set and len(self._ctx) == 0:
            return []
        config = callbacks if isinstance(callbacks, BaseCallbackManager) else ({"callbacks": callbacks} if callbacks else None)
        with assembly_run(config, {"query": query, "max_tokens": budget}, {"session": self.session_id}) as run:
            out = self._ctx.assemble(query, budget=budget)
            view = self._view(out, budget)
            run.outputs = {"tokens": sum(self._mc.message(m) for m in view), "message_count": len(view), **report_outputs(out)}
        return view

    async def abudgeted_messages(self, query: str, *, max_tokens: int | None = None, callbacks: Any = None) -> list[BaseMessage]:
        return await asyncio.to_thread(self.budgeted_messages, query, max_tokens=max_tokens, callbacks=callbacks)

    def as_runnable(self, *, max_tokens: int | None = None, query_key: str | None = None) -> Runnable:
        """A Runnable: chain input (str, messages or dict) -> budgeted messages."""
        def view(value: Any, config: RunnableConfig) -> list[BaseMessage]:
            return self.budgeted_messages(query_text(value, query_key), max_tokens=max_tokens,
                                          callbacks=config.get("callbacks"))

        async def aview(value: Any, config: RunnableConfig) -> list[BaseMessage]:
            return await self.abudgeted_messages(query_text(value, query_key), max_tokens=max_tokens,
                                                 callbacks=config.get("callbacks"))

        return RunnableLambda(view, afunc=aview, name="TieredBudgetedHistory")

    # -- internals ---------------------------------------------------------------------
    def _view(self, out: AssembledContext, budget: int) -> list[BaseMessage]:
        originals = self._originals()
        by_id = {item.id: (pos, m) for pos, (item, m) in enumerate(originals)}
        pieces: list[Piece] = []
        recalled: list[tuple[float, str]] = []
        for item in out.items:
            value = float((out.report.scores.get(item.origin_ids[0]) or {}).get("value", 0.0))
            found = by_id.get(item.origin_ids[0]) if len(item.origin_ids) == 1 else None
            message = item_to_message(item, found[1]) if found else None
            if message is None or item.text == _EMPTY:
                if item.text != _EMPTY:
                    recalled.append((value, line(item)))
                continue
            pieces.append(Piece(message.id or item.id, message, position=found[0], value=value))
        by_call: dict[str, list[int]] = {}
        for pos, (_, m) in enumerate(originals):
            ids = [c["id"] for c in m.tool_calls if c.get("id")] if isinstance(m, AIMessage) else \
                ([m.tool_call_id] if isinstance(m, ToolMessage) and m.tool_call_id else [])
            for call_id in ids:
                by_call.setdefault(str(call_id), []).append(pos)

        def partners(call_id: str) -> list[Piece]:
            return [Piece(originals[p][1].id or originals[p][0].id, originals[p][1], position=p, value=0.0)
                    for p in by_call.get(call_id, ())]

        recalled.sort(key=lambda r: -r[0])
        while True:
            header = self._recall_message([r[1] for r in recalled])
            fixed = self._mc.message(header) if header is not None else 0
            kept, _ = fit_pieces([Piece(p.key, p.message, p.position, p.value) for p in pieces],
                                 budget=budget, fixed_tokens=fixed, counter=self._mc, partners=partners)
            view = ([header] if header is not None else []) + [p.message for p in kept]
            if sum(self._mc.message(m) for m in view) <= budget or not (recalled or kept):
                return view
            if recalled:
                recalled.pop()
            else:
                low = min(kept, key=lambda p: (p.value, p.position))
                pieces = [p for p in pieces if p.key != low.key]

    @staticmethod
    def _recall_message(lines: list[str]) -> SystemMessage | None:
        return SystemMessage(content=_RECALL_HEADER + "\n".join(lines)) if lines else None

    def _originals(self) -> list[tuple[ContextItem, BaseMessage]]:
        items = sorted((i for i in self._ctx.store.items(self._ctx.session_id) if not i.is_derived), key=lambda i: i.seq)
        out = []
        for item in items:
            message = self._restored.get(item.id)
            if message is None:
                message = item_to_message(item)
                if message is None:
                    continue
                self._restored[item.id] = message
            out.append((item, message))
        return out

    def _generation(self, session: str) -> int:
        return int(session.rsplit("#g", 1)[1]) if "#g" in session else 0

    def _current_generation(self, base: TieredContext) -> TieredContext:
        markers = [i.metadata["lc_clear"] for i in base.store.items(base.session_id) if "lc_clear" in i.metadata]
        return self._sibling(f"{base.session_id}#g{max(markers)}", base) if markers else base

    def _sibling(self, session: str, base: TieredContext | None = None) -> TieredContext:
        base = base or self._base
        return TieredContext(session_id=session, user_id=base.user_id, store=base.store, embedder=base.embedder,
                             counter=base.counter, budget=base.budget, compressor=base.compressor,
                             compaction=base.compaction)


def budgeted_history(*, max_tokens: int | None = None, query_key: str | None = None) -> Runnable:
    """A Runnable for chains wrapped in `RunnableWithMessageHistory`: reads the session's
    `TieredChatMessageHistory` from the config and returns its budgeted view for the
    input's query. Use with ``RunnablePassthrough.assign(history=budgeted_history(...))``."""
    def _history(config: RunnableConfig) -> TieredChatMessageHistory:
        hist = (config.get("configurable") or {}).get("message_history")
        if not isinstance(hist, TieredChatMessageHistory):
            raise ConfigError("budgeted_history() runs inside RunnableWithMessageHistory whose get_session_history "
                              f"returns a TieredChatMessageHistory (got {type(hist).__name__})")
        return hist

    def view(value: Any, config: RunnableConfig) -> list[BaseMessage]:
        return _history(config).budgeted_messages(query_text(value, query_key), max_tokens=max_tokens,
                                                  callbacks=config.get("callbacks"))

    async def aview(value: Any, config: RunnableConfig) -> list[BaseMessage]:
        return await _history(config).abudgeted_messages(query_text(value, query_key), max_tokens=max_tokens,
                                                         callbacks=config.get("callbacks"))

    return RunnableLambda(view, afunc=aview, name="TieredBudgetedHistory")


