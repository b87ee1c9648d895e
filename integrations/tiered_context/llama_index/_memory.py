"""`TieredMemory`: a LlamaIndex `BaseMemory` backed by `TieredContext`."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Callable, Iterable, List, Optional, Union

from tiered_context.errors import missing_extra

try:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
    from llama_index.core.memory.types import DEFAULT_CHAT_STORE_KEY, BaseMemory
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core import (
    AssembledContext,
    Compaction,
    MemoryConfig,
    ScoringConfig,
    TieredContext,
    TokenCounter,
)
from tiered_context.errors import BudgetError
from tiered_context.llama_index._convert import (
    MediaTokens,
    copy_message,
    message_tokens,
    messages_to_items,
    stored_message,
)
from tiered_context.llama_index._instrumentation import dispatcher, emit_assembly
from tiered_context.llama_index._log import MessageLog
from tiered_context.llama_index._select import MemoryView, Selection
from tiered_context.llama_index._session import (
    DEFAULT_TOKEN_LIMIT,
    BufferSerialization,
    MemorySetup,
    common_prefix,
)

__all__ = ["TieredMemory", "MemoryView"]


class TieredMemory(MemorySetup, BufferSerialization, BaseMemory):
    """A drop-in for `Memory` / `ChatMemoryBuffer` that hands the model, for every call,
    a valid conversation of at most `token_limit` tokens: the current turn and the latest
    messages verbatim, and what older history the next answer needs (retrieved from the
    archive with hybrid BM25 + dense, compressed or summarised when the working set grows)
    as one labelled, dated, speaker-attributed block in the system message.

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
    `additional_kwargs` intact) under the conversation contract (`core.conversation`):
    system messages first; the latest user message and the tool loop after it verbatim
    (an oversized tool result is cut with a marker, the user's message never is); the
    first non-system message is the user's; tool results right after their calls;
    ``alternate=True`` makes roles strictly alternate (merging same-role neighbours) for
    providers and chat templates that need it. The exact token count (tool calls,
    thinking, media included) is at most `token_limit - initial_token_count` unless the
    system messages and the current user message alone exceed it.

    Recalled history is never passed off as what people said: it is one labelled block
    (`core.recalled_block`, the format the LangChain adapter sends too), ``speaker: text``
    lines under day headers, compressed lines marked ``speaker*:``, summaries marked. A
    history with no user message (a loop started by a tool call) leads with a labelled
    user-role context message saying so (`core.OPENER_NOTE`), never an invented request. ``in_place=True`` puts recalled messages back at
    their positions instead (compressed ones rewritten), the previous behaviour.

    `select(input=...)` returns a `MemoryView` (messages, positions, the core's
    `AssembledContext`); `feedback(view.assembled, used_ids)` teaches the scorer what an
    answer used. `get_all()` returns every message put since the last `reset`/`set`.

    Nothing is deleted: `reset()` and `set()` start a new generation of the session (the
    core's `TieredContext.reset`: the old one stays archived), so `get_all()` is empty
    after a reset as with LlamaIndex's memories, yet the data is still in the store.
    Session ids may hold any characters (each is a field of the core's `Namespace`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    token_limit: int = Field(default=DEFAULT_TOKEN_LIMIT, gt=0, description="Hard limit of what get() returns, in tokens.")
    session_id: str = Field(default=DEFAULT_CHAT_STORE_KEY, min_length=1, description="Session scope in the store.")
    chat_store_key: str = Field(default=DEFAULT_CHAT_STORE_KEY, description="ChatMemoryBuffer's name for the session key.")
    user_id: Optional[str] = Field(default=None, description="Whose learned preferences (and data) this is.")
    recent_messages: int = Field(default=2, ge=0, description="Messages before the current turn always sent verbatim when they fit.")
    pin_system: bool = Field(default=True, description="System messages stay in every get().")
    start_with_user: bool = Field(default=True, description="Always true (the conversation contract); kept for compatibility.")
    alternate: bool = Field(default=False, description="Roles strictly alternate user / assistant (merged when needed).")
    in_place: bool = Field(default=False, description="Recalled messages go back at their positions instead of the labelled block.")
    path: Optional[str] = Field(default=None, description="Directory of the on-disk archive (None: in memory).")
    media_tokens: MediaTokens = Field(default_factory=MediaTokens, exclude=True)
    tokenizer_fn: Optional[Callable[[str], Any]] = Field(default=None, exclude=True)
    # the core's seams (not serialised)
    counter: Optional[TokenCounter] = Field(default=None, exclude=True)
    embedder: Optional[Any] = Field(default=None, exclude=True, description="A core Embedder or a LlamaIndex BaseEmbedding.")
    store: Optional[Any] = Field(default=None, exclude=True, description="A core ColdStore shared by sessions.")
    scoring: Optional[ScoringConfig] = Field(default=None, exclude=True)
    config: Optional[MemoryConfig] = Field(default=None, exclude=True, description="Every core setting as one value.")
    compaction: str = Field(default=Compaction.BACKGROUND.value)
    working_set_tokens: Optional[int] = Field(default=None, gt=0)
    chat_history: Optional[List[ChatMessage]] = Field(default=None, exclude=True, description="Initial messages (consumed).")
    context_factory: Optional[Callable[[str], TieredContext]] = Field(
        default=None, exclude=True,
        description="session_id -> TieredContext(session_id=session_id, ...): any core option (summarizer, compression).",
    )

    _ctx: TieredContext = PrivateAttr()
    _owns_store: bool = PrivateAttr(default=False)
    _log: MessageLog = PrivateAttr(default_factory=MessageLog)  # every message of get_all(), indexed
    _lock: Any = PrivateAttr(default_factory=threading.RLock)
    _last_view: Optional[MemoryView] = PrivateAttr(default=None)

    # -- construction: `from_defaults`, `model_post_init` and `_config` are `MemorySetup`'s (_session.py)
    @classmethod
    def class_name(cls) -> str:
        return "TieredMemory"

    def _load_history(self) -> None:
        originals = sorted((i for i in self._ctx.store.items(self._ctx.namespace.key) if not i.is_derived), key=lambda i: i.seq)
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
    def generation(self) -> int:
        """How many times `reset()` / `set()` started a fresh history of this session."""
        return self._ctx.generation

    @property
    def last_assembled(self) -> Optional[AssembledContext]:
        """The core's result behind the latest `get` of this memory, for inspection only
        (under concurrent requests use `select()` and the `MemoryView` it returns)."""
        view = self._last_view
        return view.assembled if view is not None else None

    @property
    def last_positions(self) -> List[Optional[int]]:
        """For each message the latest `get` returned: its index in `get_all()` (None for
        a system message holding only the recall block). Inspection only, as `last_assembled`."""
        view = self._last_view
        return list(view.positions) if view is not None else []

    @property
    def history_tokens(self) -> int:
        """Exact tokens of every message in `get_all()`: what a keep-everything memory sends."""
        return self._log.total_tokens

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Exact tokens of `messages` as this memory counts them (tool calls, thinking,
        media and framing included)."""
        return sum(message_tokens(m, self.counter, self.media_tokens) for m in messages)

    def feedback(self, assembled: Union[AssembledContext, MemoryView], used: Iterable[str], *, user_id: Optional[str] = None) -> None:
        """Which items of `assembled` (the `AssembledContext` or `MemoryView` of the answer's
        `select()`; ids or origin ids) the answer used: updates the learned weights."""
        if isinstance(assembled, MemoryView):
            assembled = assembled.assembled
        if assembled is None:
            return  # nothing was recalled for that call
        if not isinstance(assembled, AssembledContext):
            raise TypeError("feedback(assembled, used): pass the result the answer was built from, "
                            "view = memory.select(...); memory.feedback(view, used=[...]), not only the used ids")
        self._ctx.feedback(assembled, list(used), user_id=user_id or self.user_id)

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
            ctx = self._ctx
        stored = await ctx.aput_many(items)
        with self._lock:
            if ctx is self._ctx:
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
        if not self._log and len(self._ctx) == 0:
            return  # already empty: reuse this generation
        self._ctx.reset()  # the core's one generation mechanism: an archived marker
        self._log.clear()
        self._last_view = None

    # -- reading -----------------------------------------------------------------------
    def get_all(self) -> List[ChatMessage]:
        with self._lock:
            return [copy_message(m) for m in self._log.history]

    async def aget_all(self) -> List[ChatMessage]:
        return self.get_all()

    @dispatcher.span
    def get(self, input: Optional[Union[str, ChatMessage]] = None, initial_token_count: int = 0, **kwargs: Any) -> List[ChatMessage]:
        """The messages for the next call under `token_limit - initial_token_count`:
        recall relevant to `input` (default: the latest user message)."""
        return self.select(input, initial_token_count).messages

    @dispatcher.span
    async def aget(self, input: Optional[Union[str, ChatMessage]] = None, initial_token_count: int = 0, **kwargs: Any) -> List[ChatMessage]:
        """Async twin of `get` (the assembly runs off the event loop)."""
        return (await self.aselect(input, initial_token_count)).messages

    def select(self, input: Optional[Union[str, ChatMessage]] = None, initial_token_count: int = 0) -> MemoryView:
        """What `get` returns, with why: a `MemoryView` (messages, their positions in
        `get_all()`, the recalled positions, the core's `AssembledContext`)."""
        plan = self._plan(input, initial_token_count)
        budget = plan.recall_budget
        while budget is not None:
            try:
                budget = plan.accept(plan.ctx.assemble(plan.query, budget=budget, user_id=self.user_id))
            except BudgetError as exc:
                return self._finish(plan, plan.fallback(exc))
        return self._finish(plan, plan.result())

    async def aselect(self, input: Optional[Union[str, ChatMessage]] = None, initial_token_count: int = 0) -> MemoryView:
        """Async twin of `select`."""
        plan = self._plan(input, initial_token_count)
        budget = plan.recall_budget
        while budget is not None:
            try:
                budget = plan.accept(await plan.ctx.aassemble(plan.query, budget=budget, user_id=self.user_id))
            except BudgetError as exc:
                return self._finish(plan, plan.fallback(exc))
        return self._finish(plan, plan.result())

    def _plan(self, input: Any, initial_token_count: int) -> Selection:
        if initial_token_count > self.token_limit:
            raise ValueError("Initial token count exceeds token limit")
        with self._lock:
            plan = Selection(self, input, self.token_limit - initial_token_count)
            plan.ctx = self._ctx
        return plan

    def _finish(self, plan: Selection, view: MemoryView) -> MemoryView:
        self._last_view = view
        if view.assembled is not None:
            emit_assembly(view.assembled, component="TieredMemory", session_id=self.session_id, query=plan.query,
                          budget=plan.limit, tokens=view.tokens, history_tokens=plan.history_tokens, messages=len(view.messages))
        return view

    def close(self) -> None:
        """Wait for background compaction; close the archive if this memory opened it."""
        self._ctx.flush()
        if self._owns_store:
            self._ctx.close()

    def __repr__(self) -> str:
        gen = f", generation={self.generation}" if self.generation else ""
        return (f"TieredMemory(session_id={self.session_id!r:.60}{gen}, token_limit={self.token_limit}, "
                f"messages={len(self._log)}, history_tokens={self.history_tokens})")
