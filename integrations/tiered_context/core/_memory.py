"""`TieredContext`: the facade. Put history in; assemble what the next call needs.

A memory is three values and two components: its `MemoryConfig` (every setting, frozen),
its `Namespace` (tenant, user, session, thread, generation: structured, never a joined
string), the `ContextAssembler` that decides what a call sees, and the `Ladder`
(`core.compaction`) that keeps the working set under budget and folds retiring history
into summaries. This module validates at the door, puts, assembles, learns from
feedback, resets (a new generation), and resumes a reopened archive. Two concerns live
in mixins of their own: each user's learned weights (`core.preferences`) and, on a store
many workers write, catching up with their writes (`core.catchup`); the put path's
helpers live with the write queue (`core.writes`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tiered_context.core._result import AssembledContext
from tiered_context.core._assembler import ContextAssembler
from tiered_context.core._budget import Budget, LadderEvent
from tiered_context.core._catchup import CatchUp, SharedColdStore, _sound
from tiered_context.core._compaction import Ladder
from tiered_context.core._forms import Compressor
from tiered_context.core._config import MemoryConfig
from tiered_context.core._embed import Embedder, normalize
from tiered_context.core._enums import Compaction, Compression, StoreKind
from tiered_context.core._items import ContextItem, Role, Tier
from tiered_context.core._validate import to_timestamp
from tiered_context.core._writes import PutPath, WriteQueue
from tiered_context.core._namespace import Kind, Namespace
from tiered_context.core._preferences import Preferences, apply_feedback
from tiered_context.core._scoring import Scorer, ScoringConfig
from tiered_context.core._store import ColdStore
from tiered_context.core._summarize import Summarizer, SummaryConfig
from tiered_context.core._tokens import TokenCounter
from tiered_context.errors import ConfigError, InputError

__all__ = ["TieredContext", "apply_feedback"]

_UNSET: Any = object()


class TieredContext(PutPath, CatchUp, Preferences):
    """A three-tier memory that assembles budgeted context for each model call.

    Setup::

        from tiered_context import TieredContext
        ctx = TieredContext(session_id="s1")                   # in memory, offline defaults
        ctx = TieredContext(path="./memdir", session_id="s1")  # on disk (embedded Qdrant), resumed on open

    Use::

        ctx.put("We moved the launch to 3 May.", role="user", metadata={"msg": 17})
        out = ctx.assemble("When is the launch?", budget=1000)
        out.text      # dated, chronological, speaker-attributed lines, <= 1000 tokens
        out.items     # ContextItems; .source_ids / .metadata lead back to the originals
        out.report    # tokens per tier, dropped, compression ratio, every score's parts
        ctx.feedback(out, used=[out.items[0].id])  # learn what answers use

    Every `put` is archived in L3 before it returns; L1 keeps recent turns verbatim; when
    the working set passes 2.0x `Budget.working_limit`, the oldest L1 turns are
    compressed into L2 in one batch (originals stay in L3) and the oldest L2 items retire,
    folded into progressive summaries (`summarizer`, offline extractive by default;
    `LLMSummarizer(llm)` for any LlamaIndex or LangChain model). Summaries are archived
    and offered to `assemble`; each carries a fact check (`out.report.fact_checks`).
    `compression="all"` (default) also offers compressed forms of retrieved candidates.
    Nothing is ever deleted. `flush()` and `close()` archive a checkpoint of the ladder, so
    a memory reopened on the same archive assembles exactly what it did before.

    Ids (`session_id`, `user_id`, `tenant`, `thread_id`) may hold any characters; each is
    a separate field of the memory's `Namespace`, so no id can reach another's history or
    the library's own records. `reset()` starts a new, empty generation (the old history
    stays archived); `sibling(session_id=...)` is the same memory for another session.
    All settings are one frozen `MemoryConfig` (`config=`, or the keywords below).
    """

    def __init__(
        self,
        *,
        session_id: str = "default",
        user_id: str | None = None,
        tenant: str | None = None,
        thread_id: str | None = None,
        config: MemoryConfig | None = None,
        path: str | Path | None = None,
        store: ColdStore | None = None,
        store_kind: StoreKind | str | None = None,
        budget: Budget | int | None = None,
        counter: TokenCounter | None = None,
        embedder: Embedder | None = None,
        compressor: Compressor | None = None,
        scoring: ScoringConfig | None = None,
        compaction: Compaction | str = _UNSET,
        on_event: Callable[[LadderEvent], None] | None = None,
        compression: Compression | str = _UNSET,
        summarizer: Summarizer | None = None,
        summary: SummaryConfig | None = None,
    ) -> None:
        settings = {k: v for k, v in (
            ("path", path), ("store", store), ("store_kind", store_kind), ("budget", budget), ("counter", counter),
            ("embedder", embedder), ("compressor", compressor), ("scoring", scoring), ("compaction", compaction),
            ("on_event", on_event), ("compression", compression), ("summarizer", summarizer), ("summary", summary),
        ) if v is not None and v is not _UNSET}
        if config is not None and settings:
            raise ConfigError(f"pass config= or settings ({', '.join(sorted(settings))}), not both; "
                              "use config.replace(...) to change a setting")
        if store is not None and path is not None:
            raise ConfigError("pass either path= (the default store on disk) or store=, not both")
        base = config if config is not None else MemoryConfig(**settings)
        self._owns_store = base.store is None  # a store this memory opened is closed with it; one handed in is not
        self.config: MemoryConfig = base.resolve()
        self.path = self.config.path
        self.user_id = user_id
        self.scorer = Scorer(self.config.scoring)
        self._assembler = ContextAssembler(
            counter=self.config.counter, embedder=self.config.embedder, store=self.config.store, scorer=self.scorer,
            compressor=self.config.compressor if self.config.compression == Compression.ALL else None,
            compression_ratio=self.config.budget.compression_ratio,
        )
        self._lock = threading.RLock()  # numbers and admits puts (their durable writes run outside it)
        self._writes = WriteQueue(self._lock, self._rewind)
        self._shared = isinstance(self.config.store, SharedColdStore)  # many workers write it: catch up
        self._init_preferences()
        root = Namespace(session=session_id, user=user_id, tenant=tenant, thread=thread_id)
        self._open(root.with_generation(self._current_generation(root)))
        self._migrate_legacy_preferences()
        self._load_preferences(user_id)

    # -- the memory's identity -------------------------------------------------------------
    @property
    def namespace(self) -> Namespace:
        """Where this memory's records live (tenant, user, session, thread, generation)."""
        return self._namespace

    @property
    def session_id(self) -> str:
        return self._namespace.session

    @property
    def generation(self) -> int:
        """How many times `reset()` started a fresh history for this scope."""
        return self._namespace.generation

    # shortcuts to the configuration, for reading
    budget = property(lambda self: self.config.budget)
    counter = property(lambda self: self.config.counter)
    embedder = property(lambda self: self.config.embedder)
    store = property(lambda self: self.config.store)
    compressor = property(lambda self: self.config.compressor)
    summarizer = property(lambda self: self.config.summarizer)
    summary = property(lambda self: self.config.summary)
    compaction = property(lambda self: self.config.compaction)
    compression = property(lambda self: self.config.compression)
    on_event = property(lambda self: self.config.on_event)

    def sibling(self, *, session_id: str | None = None, user_id: str | None = _UNSET, tenant: str | None = _UNSET,
                thread_id: str | None = _UNSET) -> "TieredContext":
        """The same memory (settings, store, components) for another scope. Unchanged
        ids are inherited; the sibling shares the store and never closes it."""
        ns = self._namespace
        sibling = TieredContext(
            config=self.config,
            session_id=ns.session if session_id is None else session_id,
            user_id=ns.user if user_id is _UNSET else user_id,
            tenant=ns.tenant if tenant is _UNSET else tenant,
            thread_id=ns.thread if thread_id is _UNSET else thread_id,
        )
        sibling._owns_store = False  # the store belongs to the memory that opened it
        return sibling

    def reset(self) -> int:
        """Start a new, empty generation of this scope and return its number.

        Nothing is deleted: the old history stays archived (under its generation), and
        every memory opened later on this scope opens the new generation. The marker is
        archived before this returns, so a reset is as durable as a put.
        """
        with self._lock:
            self._writes.drain()  # puts in flight land in the generation they were numbered in
            self._ladder.close()
            generation = max(self._current_generation(self._namespace.root), self.generation) + 1
            marker = ContextItem(id=f"generation-{generation:08d}", text=f"history reset: generation {generation}",
                                 role="marker", tier=Tier.L3, metadata={"generation": generation})
            self.store.add(self._namespace.root.with_kind(Kind.MARKERS).key, [marker],
                           normalize(self.embedder.embed([marker.text])))
            self._open(self._namespace.with_generation(generation))
            return generation

    async def areset(self) -> int:
        return await asyncio.to_thread(self.reset)

    def _current_generation(self, root: Namespace) -> int:
        markers = self.config.store.items(root.with_kind(Kind.MARKERS).key)
        return max((int(m.metadata["generation"]) for m in markers
                    if m.role == "marker" and isinstance(m.metadata.get("generation"), int)), default=0)

    def _open(self, namespace: Namespace) -> None:
        """Make `namespace` current: a fresh ladder, resumed from what the archive holds."""
        self._namespace = namespace
        # compressed forms of candidates are made when an assembly first offers them (and
        # shared with the ladder's L2 forms through the compressor's memo), not at every put:
        # a form is a pure function of its original, so what is assembled is the same
        self._ladder = Ladder(self.config, namespace, prepare=None)
        shared = self._shared
        self._log_position = self.store.watermark(namespace.key) if shared else 0  # read before the items
        originals = sorted((i for i in self.store.items(namespace.key) if not i.is_derived), key=lambda i: i.seq)
        self._next_seq = originals[-1].seq + 1 if originals else 0
        self._visible_seq = self._next_seq  # after the last original admitted to the working set
        self._known: set[str] = {i.id for i in originals} if shared else set()
        self._ladder.resume([i for i in originals if _sound(i)])

    # -- writing -------------------------------------------------------------------------
    def put(
        self,
        content: Any,
        *,
        role: str | Role = Role.USER,
        timestamp: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
        pinned: bool = False,
    ) -> ContextItem:
        """Store one message or document; returns the stored item (archived on return).

        `content` may be str, bytes or a list of content parts; `pinned=True` keeps it in
        every assembled context (system instructions). `timestamp` is POSIX seconds.
        Empty text, or input that cannot be stored as given, raises `InputError`.
        """
        if isinstance(content, ContextItem):
            return self.put_many([content])[0]
        item = ContextItem.create(content, role=role, timestamp=timestamp, metadata=metadata, id=id, pinned=pinned)
        return self._put_batch([self._admissible(item)])[0]  # checked once: `create` is the door

    def put_many(self, items: Iterable[ContextItem | Mapping[str, Any] | str]) -> list[ContextItem]:
        """Store many items in one batch (one embedding call, one durable write).

        Safe from many threads: the lock only numbers and admits a batch, so concurrent
        puts share their durable writes (see `core._writes`); each returns once its items
        are archived and in the working set.
        """
        return self._put_batch([self._coerce(i) for i in items])

    async def aput(self, content: Any, **kwargs: Any) -> ContextItem:
        """Async twin of `put` (embedding and the durable write run in a thread)."""
        return await asyncio.to_thread(self.put, content, **kwargs)

    async def aput_many(self, items: Iterable[ContextItem | Mapping[str, Any] | str]) -> list[ContextItem]:
        return await asyncio.to_thread(self.put_many, list(items))

    # -- reading -------------------------------------------------------------------------
    def assemble(self, query: str, *, budget: int | None = None, user_id: str | None = None,
                 asked_at: float | None = None) -> AssembledContext:
        """The best context for `query` in at most `budget` tokens (default: Budget.max_tokens).

        A date in `query` ("on 7 July, 2023", "in May 2023") favours the items from that
        span; `asked_at` (POSIX seconds, optional), when the query is asked, lets a relative
        date ("two weeks ago", "last Saturday") or one without its year ("in June") do so too.
        """
        if not isinstance(query, str):
            raise InputError(f"query must be str, got {type(query).__name__}")
        limit = self.budget.max_tokens if budget is None else budget
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ConfigError(f"budget must be a positive int number of tokens, got {limit!r}")
        user = user_id or self.user_id
        self._load_preferences(user)
        self._catch_up()
        view = self._ladder.view(summaries=self.summary.candidates, take_events=True)
        return self._assembler.assemble(
            self._namespace.key, query, budget=limit, working_set=view.working, recent_items=self.budget.recent_items,
            latest_seq=self._visible_seq - 1, user=user, events=view.events,
            summaries=view.summaries, summary_tenant=self._namespace.with_kind(Kind.SUMMARIES).key,
            asked_at=None if asked_at is None else to_timestamp(asked_at),
        )

    async def aassemble(self, query: str, *, budget: int | None = None, user_id: str | None = None,
                        asked_at: float | None = None) -> AssembledContext:
        """Async twin of `assemble`."""
        return await asyncio.to_thread(self.assemble, query, budget=budget, user_id=user_id, asked_at=asked_at)

    def feedback(self, assembled: AssembledContext, used: Iterable[str], *, user_id: str | None = None) -> None:
        """Tell the memory which items (ids or origin ids) an answer actually used.

        Updates the user's priority weights online: used items pull the weights toward
        what made them score, shown-but-unused items push away. The weights are archived
        per user (per session for an anonymous memory), as durably as items; safe to call
        from many threads.
        """
        user = user_id or self.user_id
        self._load_preferences(user)
        with self._lock:
            apply_feedback(self.scorer, assembled, used, user)
            self._archive_preferences(user)

    async def afeedback(self, assembled: AssembledContext, used: Iterable[str], *, user_id: str | None = None) -> None:
        await asyncio.to_thread(self.feedback, assembled, used, user_id=user_id)

    # -- housekeeping (the ladder itself lives in core.compaction) ---------------------------
    @property
    def summaries(self) -> list[ContextItem]:
        """The live summaries (oldest first): what `assemble` may offer for old history."""
        return self._ladder.view().summaries

    @property
    def working_set(self) -> list[ContextItem]:
        """L1 and L2 items, oldest first (a copy)."""
        return self._ladder.view().working

    @property
    def working_tokens(self) -> int:
        """Tokens of the working set (L1 and L2), what the ladder keeps under budget."""
        return self._ladder.tokens

    def flush(self) -> None:
        """Wait until background compaction has finished and the ladder has settled, then
        archive a checkpoint of the ladder if it moved (a reopened memory resumes from it)."""
        self._ladder.settle()
        self._ladder.checkpoint()

    async def aflush(self) -> None:
        await asyncio.to_thread(self.flush)

    def close(self) -> None:
        """Settle and checkpoint (waiting at most the summarizer's timeout), then close the
        store if this memory opened it (`path=` or the default); a store you pass in, or
        a `sibling`'s, stays open for whoever else shares it: close it yourself."""
        self._ladder.close()
        if self._owns_store:
            close = getattr(self.store, "close", None)
            if close is not None:
                close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> "TieredContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.count(self._namespace.key)

    def __repr__(self) -> str:
        tiers = {t.value: 0 for t in (Tier.L1, Tier.L2)}
        for i in self.working_set:
            tiers[i.tier.value] += 1
        where = str(self.path) if self.path else "memory"
        gen = f", generation={self.generation}" if self.generation else ""
        return (f"TieredContext(session_id={self.session_id!r:.60}{gen}, {where}, items={len(self)}, "
                f"L1={tiers['L1']}, L2={tiers['L2']}, working={self.working_tokens}/{self.budget.working_limit} tok)")
