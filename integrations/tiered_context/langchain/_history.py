"""`TieredChatMessageHistory`: a `BaseChatMessageHistory` over the tiered core.

The standard recipe budgets as it is (``history.messages`` is the budgeted view when
``max_tokens`` is set; ``history.all_messages`` is the whole conversation):

```python
from langchain_core.runnables.history import RunnableWithMessageHistory
from tiered_context.langchain._history import TieredChatMessageHistory

histories = {}
def get_history(session_id):          # keep one history object per session
    return histories.setdefault(session_id, TieredChatMessageHistory(session_id, max_tokens=1000))

bot = RunnableWithMessageHistory(prompt | model, get_history, input_messages_key="question",
                                 history_messages_key="history")
```

There ``history.messages`` is assembled for the latest user message stored (the new
question is not in the history yet when the chain reads it). To assemble for the new
question itself, put `budgeted_history()` in front of the prompt:
``RunnablePassthrough.assign(history=budgeted_history(query_key="question")) | prompt | model``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.callbacks import BaseCallbackManager
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, message_to_dict
    from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain-core", "langchain") from exc

from tiered_context.core import (
    REPLY_PRIMING,
    AssembledContext,
    Budget,
    ColdStore,
    Compaction,
    ContextItem,
    Embedder,
    MemoryConfig,
    Role,
    TieredContext,
    TokenCounter,
)
from tiered_context.errors import ConfigError, InputError, positive_int
from tiered_context.langchain._convert import (
    MessageCounter,
    ensure_ids,
    item_to_message,
    message_text,
    message_time,
    message_to_item,
)
from tiered_context.langchain._trace import assembly_run, report_outputs
from tiered_context.langchain._view import Placement, block_overhead, build_view, placement
from tiered_context.langchain._embeddings import as_embedder

__all__ = ["TieredChatMessageHistory", "budgeted_history", "query_text", "DEFAULT_MAX_TOKENS"]

log = logging.getLogger("tiered_context.langchain")
_EMPTY = "[empty message]"
#: The budget of `budgeted_messages` when neither the call nor the history sets one.
DEFAULT_MAX_TOKENS = 2000
#: Metadata key of the clear markers the release before `TieredContext.reset` wrote.
LEGACY_CLEAR = "lc_clear"


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
    """Chat history that hands a chain a budgeted, valid conversation and keeps everything.

    Setup::

        history = TieredChatMessageHistory("session-1", max_tokens=1000)               # in memory
        history = TieredChatMessageHistory("session-1", max_tokens=1000, path="./memdir")  # on disk
        history = TieredChatMessageHistory("s1", config=MemoryConfig(summarizer=LLMSummarizer(llm)))
        history = TieredChatMessageHistory(context=TieredContext(session_id="s1"))     # your core

    Use::

        history.add_messages([HumanMessage("We moved the launch to 3 May."), AIMessage("Noted.")])
        history.messages          # max_tokens set: the budgeted view for the latest user message
        history.all_messages      # every message, intact, in order (what `messages` is without max_tokens)
        history.budgeted_messages("When is the launch?")   # the view for any query
        history.as_runnable()     # the same, as a Runnable (query -> messages)

    A view is at most ``max_tokens`` tokens (exact message counts) and a valid
    conversation (`tiered_context.core._conversation`): the latest exchange verbatim, the
    newest history the assembler chose as real messages, the rest of what it recalled
    (older messages, compressed forms, summaries) as ONE leading context message of
    dated, speaker-attributed lines with compressed lines marked
    (``context_placement="system"`` makes it a SystemMessage; ``rewrite_in_place=True``
    sends recalled messages at their place instead; ``alternate_roles=True`` for strict
    user / assistant alternation).

    Nothing is deleted: ``clear()`` starts a new, empty generation (`TieredContext.reset`)
    and leaves the old one in the archive. An archive written by the release before
    (clears recorded as ``lc_clear`` marker items in the session and generations kept in
    sessions ``"<id>#g<n>"``) opens as it was: on first open its current generation's
    messages are copied into a new core generation (the old records stay untouched).
    """

    def __init__(
        self,
        session_id: str = "default",
        *,
        context: TieredContext | None = None,
        config: MemoryConfig | None = None,
        max_tokens: int | None = None,
        path: str | Path | None = None,
        store: ColdStore | None = None,
        embedder: Embedder | Any | None = None,
        counter: TokenCounter | None = None,
        user_id: str | None = None,
        compaction: Compaction | str | None = None,
        context_placement: Placement | str = Placement.MESSAGE,
        rewrite_in_place: bool = False,
        alternate_roles: bool = False,
    ) -> None:
        if max_tokens is not None:
            positive_int("max_tokens", max_tokens)
        settings = {k for k, v in (("path", path), ("store", store), ("embedder", embedder), ("counter", counter),
                                   ("compaction", compaction)) if v is not None}
        if context is not None and (settings or config is not None):
            raise ConfigError("pass either context= or the settings to build one (config= or "
                              f"{'/'.join(sorted(settings)) or 'path/store/embedder/counter'}), not both")
        if config is not None and settings:
            raise ConfigError(f"pass config= or settings ({', '.join(sorted(settings))}), not both; "
                              "use config.replace(...) to change a setting")
        self.max_tokens = max_tokens
        self.context_placement = placement(context_placement)
        self.rewrite_in_place = bool(rewrite_in_place)
        self.alternate_roles = bool(alternate_roles)
        if context is None:
            if config is None:
                config = MemoryConfig(path=path, store=store, embedder=as_embedder(embedder), counter=counter,
                                      budget=Budget(max_tokens=max_tokens or DEFAULT_MAX_TOKENS),
                                      compaction=compaction or Compaction.BACKGROUND)
            context = TieredContext(config=config, session_id=session_id, user_id=user_id)
        self._ctx = context
        self._mc = MessageCounter(self._ctx.counter)
        self._restored: dict[str, BaseMessage] = {}
        self._view_cache: tuple[tuple[Any, ...], list[BaseMessage]] | None = None
        self._adopt_legacy()

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
        """With ``max_tokens`` set: the budgeted view for the latest user message (what
        `RunnableWithMessageHistory` sends the model). Without: every message, as
        `all_messages`."""
        if self.max_tokens is None:
            return self.all_messages
        originals = self._originals()
        # the same history gives the same view: RunnableWithMessageHistory reads `messages`
        # on entry and again on exit (to cut the history off its input), and background
        # compaction between the two must not change what it cuts
        key = (self._ctx.generation, len(originals), originals[-1][0].id if originals else None, self.max_tokens)
        cached = self._view_cache
        if cached is not None and cached[0] == key:
            return list(cached[1])
        query = next((message_text(m) for _, m in reversed(originals) if isinstance(m, HumanMessage)), "")
        view = self.budgeted_messages(query)
        self._view_cache = (key, view)
        return list(view)

    @property
    def all_messages(self) -> list[BaseMessage]:
        """Every message of the current generation, in order, exactly as it was added."""
        return [m for _, m in self._originals()]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        now = time.time()
        items = []
        for m in ensure_ids(messages):
            item = message_to_item(m, timestamp=message_time(m, default=now))
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
        """Start a new, empty generation (`TieredContext.reset`); the old messages stay
        archived (never deleted). Every setting of the memory is kept."""
        self._ctx.reset()
        self._restored.clear()

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    # -- the budgeted view -------------------------------------------------------------
    def assembled(self, query: str, *, max_tokens: int | None = None) -> AssembledContext:
        """The raw core result for `query` (items, text, report) under the budget."""
        return self._ctx.assemble(query, budget=max_tokens or self.max_tokens or DEFAULT_MAX_TOKENS)

    def budgeted_messages(self, query: str, *, max_tokens: int | None = None, callbacks: Any = None) -> list[BaseMessage]:
        """The conversation worth sending for `query`, at most ``max_tokens`` tokens (exact
        message counts: text, tool calls, images, framing); see the class docstring."""
        budget = positive_int("max_tokens", max_tokens or self.max_tokens or DEFAULT_MAX_TOKENS)
        originals = self._originals()
        if not originals and len(self._ctx) == 0:
            return []
        config = callbacks if isinstance(callbacks, BaseCallbackManager) else ({"callbacks": callbacks} if callbacks else None)
        with assembly_run(config, {"query": query, "max_tokens": budget}, {"session": self.session_id}) as run:
            # the exact room: what the view adds beyond the lines the core pays for (label, framing,
            # reply priming) is taken off first, never counted twice
            out = self._ctx.assemble(query, budget=max(1, budget - REPLY_PRIMING - block_overhead(self._mc, self.context_placement)))
            messages = [m for item, m in originals if item.text != _EMPTY]
            view = build_view(None, messages, [], out, budget=budget, mc=self._mc, where=self.context_placement,
                              rewrite_in_place=self.rewrite_in_place, alternate=self.alternate_roles)
            result = ([view.system] if view.system is not None else []) + view.messages
            run.outputs = {"tokens": sum(self._mc.message(m) for m in result), "message_count": len(result),
                           **report_outputs(out)}
        return result

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
    def _originals(self) -> list[tuple[ContextItem, BaseMessage]]:
        items = sorted((i for i in self._ctx.store.items(self._ctx.namespace.key)
                        if not i.is_derived and LEGACY_CLEAR not in i.metadata), key=lambda i: i.seq)
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

    def _adopt_legacy(self) -> None:
        """Open an archive of the release before `TieredContext.reset`: it recorded a clear
        as an ``lc_clear`` marker item in the session and kept generation n in the raw
        store key ``"<session>#g<n>"``. When such markers exist and the core has no
        generation yet, the latest legacy generation's messages are copied into a new core
        generation (once; the legacy records are left as they were)."""
        ctx = self._ctx
        if ctx.generation != 0:
            return
        # that release keyed every session by its raw id; this one never writes a raw key
        # that is not a plain id, so the raw key holds only that session's legacy records
        markers = [i.metadata[LEGACY_CLEAR] for i in ctx.store.items(ctx.session_id)
                   if isinstance(i.metadata.get(LEGACY_CLEAR), int)]
        if not markers:
            return
        legacy = sorted((i for i in ctx.store.items(f"{ctx.session_id}#g{max(markers)}") if not i.is_derived),
                        key=lambda i: i.seq)
        log.info("session %r: legacy clear layout (generation %d, %d messages) adopted", ctx.session_id,
                 max(markers), len(legacy))
        ctx.reset()
        if legacy:
            ctx.put_many([i.evolve(seq=-1) for i in legacy])


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


