"""`TieredMemory`: a LlamaIndex `BaseMemory` backed by `TieredContext`."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

from tiered_context.errors import missing_extra

try:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
    from llama_index.core.memory.types import DEFAULT_CHAT_STORE_KEY, BaseMemory
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core.assembler import AssembledContext
from tiered_context.core.budget import Budget
from tiered_context.core.memory import Compaction, TieredContext
from tiered_context.core.scoring import ScoringConfig
from tiered_context.core.store import ColdStore, LocalColdStore
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import BudgetError, ConfigError
from tiered_context.llama_index._log import MessageLog
from tiered_context.llama_index._convert import (
    MediaTokens,
    SizedTokens,
    copy_message,
    message_tokens,
    messages_to_items,
    stored_message,
)
from tiered_context.llama_index._select import Selection
from tiered_context.llama_index._session import (
    DEFAULT_TOKEN_LIMIT,
    BufferSerialization,
    as_core_embedder,
    buffer_defaults,
    common_prefix,
    check_seams,
    find_generation,
    record_generation,
    tenant,
)
from tiered_context.llama_index.instrumentation import dispatcher, emit_assembly, emit_ladder

__all__ = ["TieredMemory"]



class TieredMemory(BufferSerialization, BaseMemory):
    """A drop-in for `Memory` / `ChatMemoryBuffer` that assembles, for every call, the
    history the next answer needs under `token_limit`: the current turn and the latest
    messages verbatim, older relevant messages retrieved from the archive (hybrid BM25 +
    dense), compressed forms when the working set grows, tool calls and their results
    always together.

    Setup (one line changes)::

        from tiered_context.llama_index import TieredMemory
        memory = TieredMemory.from_defaults(token_limit=2000, session_id="user-42")
        memory = TieredMemory.from_defaults(token_limit=2000, session_id="user-42",
                                            path="./memdir")   # archived on disk, resumed

    Use it wherever LlamaIndex takes a memory::

        agent = FunctionAgent(tools=[...], llm=llm)
        await agent.run("When is the Lisbon launch?", memory=memory)
        engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)

    Result: `get(input=...)` / `aget` return real `ChatMessage`s (blocks and
    `additional_kwargs` intact) whose exact token count, tool calls, thinking and media
    included, is at most `token_limit` (minus `initial_token_count`; only the latest
    message, with its tool-call bundle, comes back alone even when it is longer, as in
    `ChatMemoryBuffer`). `get_all()` returns
    every message ever put (since the last `reset`/`set`). `last_assembled` holds the
    core's `AssembledContext` of the last `get` (provenance, scores, tokens per tier);
    `feedback(used_ids)` teaches the scorer what answers used.

    Nothing is deleted: `reset()` and `set()` start a new generation of the session (the
    old one stays archived under ``"<session_id>~<n>"``), so `get_all()` is empty after a
    reset as with LlamaIndex's memories, yet the data is still in the store.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    token_limit: int = Field(default=DEFAULT_TOKEN_LIMIT, gt=0, description="Hard limit of what get() returns, in tokens.")
    session_id: str = Field(default=DEFAULT_CHAT_STORE_KEY, min_length=1, description="Session scope (tenant) in the store.")
    chat_store_key: str = Field(default=DEFAULT_CHAT_STORE_KEY, description="ChatMemoryBuffer's name for the session key.")
    recent_messages: int = Field(default=4, ge=0, description="Latest messages always offered verbatim (the current turn always is).")
    pin_system: bool = Field(default=True, description="System messages stay in every get().")
    start_with_user: bool = Field(default=True, description="The first non-system message returned is a user message.")
    path: Optional[str] = Field(default=None, description="Directory of the on-disk archive (None: in memory).")
    media_tokens: MediaTokens = Field(default_factory=MediaTokens, exclude=True)
    tokenizer_fn: Optional[Callable[[str], Any]] = Field(default=None, exclude=True)
    # the core's seams (not serialised)
    counter: Optional[TokenCounter] = Field(default=None, exclude=True)
    embedder: Optional[Any] = Field(default=None, exclude=True, description="A core Embedder or a LlamaIndex BaseEmbedding.")
    store: Optional[Any] = Field(default=None, exclude=True, description="A core ColdStore shared by sessions.")
    scoring: Optional[ScoringConfig] = Field(default=None, exclude=True)
    compaction: str = Field(default=Compaction.BACKGROUND.value)
    working_set_tokens: Optional[int] = Field(default=None, gt=0)
    chat_history: Optional[List[ChatMessage]] = Field(default=None, exclude=True, description="Initial messages (consumed).")
    context_factory: Optional[Callable[[str], TieredContext]] = Field(
        default=None, exclude=True,
        description="tenant -> TieredContext(session_id=tenant, store=shared, ...): any core option (summarizer, compression).",
    )

    _ctx: TieredContext = PrivateAttr()
    _store: ColdStore = PrivateAttr()
    _owns_store: bool = PrivateAttr(default=False)
    _generation: int = PrivateAttr(default=0)
    _log: MessageLog = PrivateAttr(default_factory=MessageLog)  # every message of get_all(), indexed
    _lock: Any = PrivateAttr(default_factory=threading.RLock)
    _last: Optional[AssembledContext] = PrivateAttr(default=None)
    _last_positions: List[Optional[int]] = PrivateAttr(default_factory=list)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def class_name(cls) -> str:
        return "TieredMemory"

    @classmethod
    def from_defaults(  # type: ignore[override]
        cls,
        chat_history: Optional[List[ChatMessage]] = None,
        llm: Optional[Any] = None,
        chat_store: Optional[Any] = None,
        chat_store_key: str = DEFAULT_CHAT_STORE_KEY,
        token_limit: Optional[int] = None,
        tokenizer_fn: Optional[Callable[[str], Any]] = None,
        *,
        session_id: Optional[str] = None,
        path: Optional[Union[str, Path]] = None,
        store: Optional[ColdStore] = None,
        embedder: Optional[Any] = None,
        embed_model: Optional[Any] = None,
        counter: Optional[TokenCounter] = None,
        scoring: Optional[ScoringConfig] = None,
        compaction: Union[Compaction, str] = Compaction.BACKGROUND,
        recent_messages: int = 4,
        pin_system: bool = True,
        start_with_user: bool = True,
        working_set_tokens: Optional[int] = None,
        media_tokens: Optional[MediaTokens] = None,
        context_factory: Optional[Callable[[str], TieredContext]] = None,
    ) -> "TieredMemory":
        """Accepts `ChatMemoryBuffer.from_defaults` arguments (`chat_history`, `llm`,
        `chat_store_key`, `token_limit`, `tokenizer_fn`) and the tiered ones.

        `context_factory` builds the `TieredContext` of each generation of the session
        (``lambda tenant: TieredContext(session_id=tenant, store=store, summarizer=...)``)
        for core options this adapter does not expose; it must use one store throughout.
        `llm` sets the token limit to 75% of its context window when `token_limit` is not
        given, and the tokenizer when its model name is a known OpenAI / Llama 3 / Qwen
        model. `chat_store` is not supported (the archive is the store): pass `path=` or
        `store=` instead. `embed_model` takes a LlamaIndex `BaseEmbedding`.
        """
        check_seams(store=store, path=path, context_factory=context_factory, embedder=embed_model or embedder, counter=counter)
        token_limit, counter = buffer_defaults(llm=llm, chat_store=chat_store, token_limit=token_limit,
                                               tokenizer_fn=tokenizer_fn, counter=counter, context_factory=context_factory)
        return cls(
            token_limit=token_limit,
            session_id=session_id or chat_store_key,
            chat_store_key=chat_store_key,
            chat_history=chat_history,
            tokenizer_fn=tokenizer_fn,
            path=str(path) if path is not None else None,
            store=store,
            embedder=embed_model if embed_model is not None else embedder,
            counter=counter,
            scoring=scoring,
            compaction=Compaction(compaction).value,
            recent_messages=recent_messages,
            pin_system=pin_system,
            start_with_user=start_with_user,
            working_set_tokens=working_set_tokens,
            media_tokens=media_tokens or MediaTokens(),
            context_factory=context_factory,
        )

    def model_post_init(self, __context: Any) -> None:
        check_seams(store=self.store, path=self.path, context_factory=self.context_factory, embedder=self.embedder, counter=self.counter)
        first: Optional[TieredContext] = None
        if self.context_factory is not None:
            first = self.context_factory(self._tenant(0))
            self.store, self.embedder, self.counter = first.store, first.embedder, first.counter
        self.counter = self.counter or TokenCounter()
        if self.tokenizer_fn is None:
            self.tokenizer_fn = SizedTokens(self.counter)
        self.embedder = as_core_embedder(self.embedder)
        self._owns_store = self.store is None
        self._store = self.store if self.store is not None else LocalColdStore(self.path)
        self._generation = find_generation(self._store, self.session_id, self.path)
        self._ctx = first if first is not None and self._generation == 0 else self._new_context(self._generation)
        self._load_history()
        if self.chat_history:
            initial, self.chat_history = list(self.chat_history), None
            self.set(initial)
        self.chat_history = None

    def _tenant(self, generation: int) -> str:
        return tenant(self.session_id, generation)

    def _budget(self) -> Budget:
        return Budget(max_tokens=self.token_limit, working_set_tokens=self.working_set_tokens, recent_items=self.recent_messages)

    def _new_context(self, generation: int) -> TieredContext:
        tenant = self._tenant(generation)
        if self.context_factory is not None:
            ctx = self.context_factory(tenant)
            if ctx.session_id != tenant or ctx.store is not self._store:
                raise ConfigError("context_factory(tenant) must return TieredContext(session_id=tenant, store=<one shared store>)")
            return ctx
        return TieredContext(
            session_id=tenant,
            budget=self._budget(),
            counter=self.counter,
            embedder=self.embedder,
            store=self._store,
            scoring=self.scoring,
            compaction=self.compaction,
            on_event=lambda event: emit_ladder(tenant, event),
        )

    def _load_history(self) -> None:
        originals = sorted((i for i in self._store.items(self._ctx.session_id) if not i.is_derived), key=lambda i: i.seq)
        self._log.clear()
        for item in originals:
            message = stored_message(item)
            if message is not None:
                self._append(item.id, message)

    def _append(self, item_id: str, message: ChatMessage) -> None:
        self._log.append(item_id, message, message_tokens(message, self.counter, self.media_tokens))

    # -- public state ------------------------------------------------------------------
    @property
    def context(self) -> TieredContext:
        """The `TieredContext` of the current generation (for `assemble`, reports, tuning)."""
        return self._ctx

    @property
    def last_assembled(self) -> Optional[AssembledContext]:
        """The core's result behind the last `get` / `aget` (items, report, provenance)."""
        return self._last

    @property
    def last_positions(self) -> List[Optional[int]]:
        """For each message the last `get` returned: its index in `get_all()` (None for a
        summary). Compressed or shortened messages point to their original."""
        return list(self._last_positions)

    @property
    def history_tokens(self) -> int:
        """Exact tokens of every message in `get_all()`: what a keep-everything memory sends."""
        return self._log.total_tokens

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Exact tokens of `messages` as this memory counts them (tool calls, thinking,
        media and framing included)."""
        return sum(message_tokens(m, self.counter, self.media_tokens) for m in messages)

    def feedback(self, used: Sequence[str], *, user_id: Optional[str] = None) -> None:
        """Which items (ids from `last_assembled.items`) the last answer used: updates the
        learned priority weights."""
        if self._last is not None:
            self._ctx.feedback(self._last, used, user_id=user_id)

    # -- writing -----------------------------------------------------------------------
    def _items_for(self, messages: Sequence[ChatMessage]) -> list:
        return messages_to_items(messages, first_position=len(self._log), pin_system=self.pin_system)

    def _record(self, stored: Sequence[Any]) -> None:
        for item in stored:
            if item.id not in self._log.pos:
                self._append(item.id, stored_message(item))

    def put(self, message: ChatMessage) -> None:
        self.put_messages([message])

    def put_messages(self, messages: List[ChatMessage]) -> None:
        if not messages:
            return
        with self._lock:
            stored = self._ctx.put_many(self._items_for(messages))
            self._record(stored)

    async def aput(self, message: ChatMessage) -> None:
        await self.aput_messages([message])

    async def aput_messages(self, messages: List[ChatMessage]) -> None:
        if not messages:
            return
        with self._lock:
            items = self._items_for(messages)
        stored = await self._ctx.aput_many(items)
        with self._lock:
            self._record(stored)

    def set(self, messages: List[ChatMessage]) -> None:
        """Make `messages` the history. When they extend the current history only the new
        ones are stored; otherwise a new generation starts (the old one stays archived)."""
        with self._lock:
            n = common_prefix(self._log.history, messages)
            if n < len(self._log):
                self._new_generation()
                n = 0
            self.put_messages(list(messages[n:]))

    async def aset(self, messages: List[ChatMessage]) -> None:
        with self._lock:
            n = common_prefix(self._log.history, messages)
            if n < len(self._log):
                self._new_generation()
                n = 0
        await self.aput_messages(list(messages[n:]))

    def reset(self) -> None:
        with self._lock:
            self._new_generation()

    async def areset(self) -> None:
        self.reset()

    def _new_generation(self) -> None:
        if not self._log and self._store.count(self._ctx.session_id) == 0:
            return  # already empty: reuse this generation
        self._ctx.flush()
        self._generation += 1
        self._ctx = self._new_context(self._generation)
        self._log.clear()
        self._last = None
        record_generation(self.path, self.session_id, self._generation)

    # -- reading -----------------------------------------------------------------------
    def get_all(self) -> List[ChatMessage]:
        with self._lock:
            return [copy_message(m) for m in self._log.history]

    async def aget_all(self) -> List[ChatMessage]:
        return self.get_all()

    @dispatcher.span
    def get(self, input: Optional[Union[str, ChatMessage]] = None, initial_token_count: int = 0, **kwargs: Any) -> List[ChatMessage]:
        """The messages for the next call under `token_limit - initial_token_count`:
        relevant to `input` (default: the latest user message)."""
        plan = self._plan(input, initial_token_count)
        if plan.done is None:
            try:
                plan.accept(plan.ctx.assemble(plan.query, budget=plan.budget))
            except BudgetError as exc:
                return plan.fallback(exc)
        return self._finish(plan)

    @dispatcher.span
    async def aget(self, input: Optional[Union[str, ChatMessage]] = None, initial_token_count: int = 0, **kwargs: Any) -> List[ChatMessage]:
        """Async twin of `get` (the assembly runs off the event loop)."""
        plan = self._plan(input, initial_token_count)
        if plan.done is None:
            try:
                plan.accept(await plan.ctx.aassemble(plan.query, budget=plan.budget))
            except BudgetError as exc:
                return plan.fallback(exc)
        return self._finish(plan)

    def _plan(self, input: Any, initial_token_count: int) -> Selection:
        if initial_token_count > self.token_limit:
            raise ValueError("Initial token count exceeds token limit")
        with self._lock:
            plan = Selection(self, input, self.token_limit - initial_token_count)
            plan.ctx = self._ctx
            if plan.done is None:  # the current turn is always offered, verbatim when it fits
                self._ctx.budget = replace(self._ctx.budget, recent_items=plan.tail)
        return plan

    def _finish(self, plan: Selection) -> List[ChatMessage]:
        if plan.done is not None:
            self._last_positions = list(plan.positions)
            return plan.done
        messages, tokens = plan.result()
        self._last_positions = list(plan.positions)
        if plan.out is not None:
            self._last = plan.out
            emit_assembly(plan.out, component="TieredMemory", session_id=self.session_id, query=plan.query,
                          budget=plan.limit, tokens=tokens, history_tokens=plan.history_tokens, messages=len(messages))
        return messages

    def close(self) -> None:
        """Wait for background compaction; close the archive if this memory opened it."""
        self._ctx.flush()
        if self._owns_store:
            close = getattr(self._store, "close", None)
            if close is not None:
                close()

    def __repr__(self) -> str:
        return (f"TieredMemory(session_id={self.session_id!r}, token_limit={self.token_limit}, "
                f"messages={len(self._log)}, history_tokens={self.history_tokens})")
