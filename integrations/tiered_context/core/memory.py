"""`TieredContext`: the facade. Put history in; assemble what the next call needs."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from tiered_context.core.assembler import AssembledContext, ContextAssembler
from tiered_context.core.budget import Budget, LadderEvent, LadderLevel
from tiered_context.core.compress import Compressor, SelfInformationCompressor
from tiered_context.core.embed import Embedder, WordLlamaEmbedder, normalize
from tiered_context.core.importance import self_information
from tiered_context.core.items import ContextItem, Role, Tier
from tiered_context.core.scoring import Scorer, ScoreParts, ScoringConfig
from tiered_context.core.store import ColdStore, LocalColdStore
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import ConfigError, InputError

__all__ = ["TieredContext", "Compaction"]

log = logging.getLogger("tiered_context")
#: After a failed compression, how many more puts before it is tried again.
RETRY_AFTER_ITEMS = 16
_RANK = {level: rank for rank, level in enumerate(LadderLevel)}


class Compaction(str, Enum):
    """Where the 2.0x compression batch runs: a background thread, or inline (deterministic)."""

    BACKGROUND = "background"
    INLINE = "inline"


class TieredContext:
    """A three-tier memory that assembles budgeted context for each model call.

    Setup::

        from tiered_context import TieredContext
        ctx = TieredContext(session_id="s1")                   # in memory, offline defaults
        ctx = TieredContext(path="./memdir", session_id="s1")  # archived on disk, resumed on open

    Use::

        ctx.put("We moved the launch to 3 May.", role="user", metadata={"msg": 17})
        out = ctx.assemble("When is the launch?", budget=1000)
        out.text      # dated, chronological, speaker-attributed lines, <= 1000 tokens
        out.items     # ContextItems; .source_ids / .metadata lead back to the originals
        out.report    # tokens per tier, dropped, compression ratio, every score's parts
        ctx.feedback(out, used=[out.items[0].id])  # learn what answers use

    Every `put` is archived in L3 before it returns; L1 keeps recent turns verbatim; when
    the working set passes 2.0x `Budget.working_limit`, the oldest L1 turns are
    compressed into L2 in one batch (originals stay in L3). Nothing is ever deleted.
    """

    def __init__(
        self,
        *,
        session_id: str = "default",
        user_id: str | None = None,
        path: str | Path | None = None,
        budget: Budget | int | None = None,
        counter: TokenCounter | None = None,
        embedder: Embedder | None = None,
        store: ColdStore | None = None,
        compressor: Compressor | None = None,
        scoring: ScoringConfig | None = None,
        compaction: Compaction | str = Compaction.BACKGROUND,
        on_event: Callable[[LadderEvent], None] | None = None,
    ) -> None:
        if not session_id or not isinstance(session_id, str):
            raise ConfigError("session_id must be a non-empty string")
        if store is not None and path is not None:
            raise ConfigError("pass either path= (the default store on disk) or store=, not both")
        self.session_id, self.user_id = session_id, user_id
        self.budget = Budget(max_tokens=budget) if isinstance(budget, int) else (budget or Budget())
        self.counter = counter or TokenCounter()
        self.embedder = embedder or WordLlamaEmbedder()
        self.path = Path(path) if path is not None else None
        self.store: ColdStore = store or LocalColdStore(self.path)
        self.compressor = compressor or SelfInformationCompressor(self.counter)
        self.scorer = Scorer(scoring)
        self.compaction = Compaction(compaction)
        self.on_event = on_event
        self._assembler = ContextAssembler(counter=self.counter, embedder=self.embedder, store=self.store, scorer=self.scorer)
        self._working: OrderedDict[str, ContextItem] = OrderedDict()  # origin id -> current form
        self._lock = threading.RLock()
        self._events: list[LadderEvent] = []
        self._level: LadderLevel | None = None
        self._pending: Future | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._next_seq = 0
        self._retry_at = 0
        self._resume()

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
        every assembled context (system instructions). Empty text raises `InputError`.
        """
        if isinstance(content, ContextItem):
            return self.put_many([content])[0]
        item = ContextItem.create(content, role=role, timestamp=timestamp, metadata=metadata, id=id, pinned=pinned)
        return self.put_many([item])[0]

    def put_many(self, items: Iterable[ContextItem | Mapping[str, Any] | str]) -> list[ContextItem]:
        """Store many items in one batch (one embedding call, one durable write)."""
        batch = [self._coerce(i) for i in items]
        with self._lock:
            stored, fresh = [], []
            seen: dict[str, ContextItem] = {}
            for item in batch:
                existing = self.store.get(self.session_id, [item.id]) or ([seen[item.id]] if item.id in seen else [])
                if existing and existing[0].text == item.text and existing[0].role == item.role:
                    stored.append(existing[0])  # idempotent re-put
                    continue
                tokens = self.counter.count(item.text)
                item = item.evolve(
                    seq=self._next_seq,
                    tokens=tokens,
                    tier=Tier.L1,
                    importance=item.importance or (1.0 if item.pinned else self_information(item.text)),
                )
                self._next_seq += 1
                seen[item.id] = item
                fresh.append(item)
                stored.append(item)
            if fresh:
                vectors = normalize(self.embedder.embed([i.text for i in fresh]))
                try:
                    self.store.add(self.session_id, fresh, vectors)  # raises on a conflicting id
                except Exception:
                    self._next_seq -= len(fresh)
                    raise
                for item in fresh:
                    self._working[item.id] = item
                self._ladder()
        return stored

    async def aput(self, content: Any, **kwargs: Any) -> ContextItem:
        """Async twin of `put` (embedding and the durable write run in a thread)."""
        return await asyncio.to_thread(self.put, content, **kwargs)

    async def aput_many(self, items: Iterable[ContextItem | Mapping[str, Any] | str]) -> list[ContextItem]:
        return await asyncio.to_thread(self.put_many, list(items))

    # -- reading -------------------------------------------------------------------------
    def assemble(self, query: str, *, budget: int | None = None, user_id: str | None = None) -> AssembledContext:
        """The best context for `query` in at most `budget` tokens (default: Budget.max_tokens)."""
        if not isinstance(query, str):
            raise InputError(f"query must be str, got {type(query).__name__}")
        limit = self.budget.max_tokens if budget is None else budget
        if not isinstance(limit, int) or limit <= 0:
            raise ConfigError(f"budget must be a positive int number of tokens, got {limit!r}")
        with self._lock:
            working = list(self._working.values())
            events, self._events = tuple(self._events), []
        return self._assembler.assemble(
            self.session_id, query, budget=limit, working_set=working, recent_items=self.budget.recent_items,
            latest_seq=self._next_seq - 1, user=user_id or self.user_id, events=events,
        )

    async def aassemble(self, query: str, *, budget: int | None = None, user_id: str | None = None) -> AssembledContext:
        """Async twin of `assemble`."""
        return await asyncio.to_thread(self.assemble, query, budget=budget, user_id=user_id)

    def feedback(self, assembled: AssembledContext, used: Iterable[str], *, user_id: str | None = None) -> None:
        """Tell the memory which items (ids or origin ids) an answer actually used.

        Updates the user's priority weights online: used items pull the weights toward
        what made them score, shown-but-unused items push away. Persisted with `path=`.
        """
        used_ids = set(used)
        used_parts, unused_parts = [], []
        for item in assembled.items:
            origin = item.origin_ids[0]
            parts = assembled.report.scores.get(origin)
            if parts is None:
                continue
            sp = ScoreParts(*(parts[k] for k in ScoreParts.__slots__))
            (used_parts if {item.id, origin} & used_ids else unused_parts).append(sp)
        user = user_id or self.user_id
        self.scorer.preferences.update(user, used_parts, unused_parts)
        if self.path is not None:
            (self.path / "preferences.json").write_text(json.dumps(self.scorer.preferences.state()))

    # -- the ladder ----------------------------------------------------------------------
    def _ladder(self) -> None:
        tokens = self.working_tokens
        level = self.budget.level(tokens)
        rising = level is not None and (self._level is None or _RANK[level] > _RANK[self._level])
        self._level = level
        if rising and level == LadderLevel.ALERT:
            self._emit(LadderEvent(level=level, working_tokens=tokens, limit_tokens=self.budget.working_limit,
                                   detail=f"working set at {tokens / self.budget.working_limit:.2f}x"))
        if level == LadderLevel.PRUNE:
            self._prune(tokens)
        if self.budget.level(self.working_tokens) in (LadderLevel.COMPRESS, LadderLevel.PRUNE) and self._pending is None:
            self._schedule_compression()

    def _prune(self, tokens: int) -> None:
        """Synchronous: lowest priority (importance + recency) out of the working set."""
        target = int(self.budget.compress_at * self.budget.working_limit) - 1
        cfg = self.scorer.config
        protected = set(list(self._working)[-self.budget.recent_items:]) if self.budget.recent_items else set()
        latest = self._next_seq - 1
        def priority(i: ContextItem) -> float:
            return cfg.importance_weight * i.importance + cfg.recency_weight * 0.5 ** ((latest - i.seq) / cfg.half_life_items)
        pruned = []
        for item in sorted(self._working.values(), key=priority):
            if tokens <= target:
                break
            if item.pinned or item.origin_ids[0] in protected:
                continue
            del self._working[item.origin_ids[0]]
            tokens -= item.tokens
            pruned.append(item.origin_ids[0])
        self._emit(LadderEvent(level=LadderLevel.PRUNE, working_tokens=tokens, limit_tokens=self.budget.working_limit,
                               item_ids=tuple(pruned), detail=f"pruned {len(pruned)} items to L3 (archived)"))

    def _schedule_compression(self) -> None:
        """Pick the batch now (deterministic), compress it inline or in the background."""
        if self._next_seq < self._retry_at:
            return
        limit = self.budget.working_limit
        ratio = self.budget.compression_ratio
        tokens = self.working_tokens
        protected = set(list(self._working)[-self.budget.recent_items:]) if self.budget.recent_items else set()
        batch, retire = [], []
        for origin, item in self._working.items():  # oldest first
            if tokens <= limit:
                break
            if item.pinned or origin in protected:
                continue
            if item.tier == Tier.L1:
                batch.append(item)
                tokens -= int(item.tokens * (1 - ratio))
            else:
                retire.append(origin)
                tokens -= item.tokens
        if not batch and not retire:
            return
        if self.compaction == Compaction.INLINE:
            self._compress(batch, retire, ratio)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiered-compaction")
        self._pending = self._executor.submit(self._compress, batch, retire, ratio)

    def _compress(self, batch: list[ContextItem], retire: list[str], ratio: float) -> None:
        """Compress `batch` into L2 and retire `retire` to L3. A failure leaves every item
        exactly as it was (logged, reported) and is retried after `RETRY_AFTER_ITEMS` puts."""
        failed = ""
        try:
            forms = self.compressor.compress(batch, ratio) if batch else []
        except Exception as exc:
            log.warning("compression of %d items failed; they stay verbatim in L1: %s", len(batch), exc)
            failed, forms, batch = f"compression failed ({exc}); history unchanged", [], []
        with self._lock:
            self._pending = None
            before = self.working_tokens
            for origin in retire:
                self._working.pop(origin, None)
            for original, form in zip(batch, forms):
                if self._working.get(original.id) is original and form.tokens < original.tokens:
                    self._working[original.id] = form
            if failed:
                self._retry_at = self._next_seq + RETRY_AFTER_ITEMS
            self._emit(LadderEvent(level=LadderLevel.COMPRESS, working_tokens=self.working_tokens,
                                   limit_tokens=self.budget.working_limit, item_ids=tuple(i.id for i in batch),
                                   detail=failed or f"compressed {len(forms)} to L2, retired {len(retire)} to L3"))
            progressed = self.working_tokens < before
            if progressed and self.budget.level(self.working_tokens) in (LadderLevel.COMPRESS, LadderLevel.PRUNE):
                self._schedule_compression()

    def _emit(self, event: LadderEvent) -> None:
        self._events.append(event)
        del self._events[:-100]
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a callback must not break ingestion
                log.exception("on_event callback failed")

    # -- housekeeping ----------------------------------------------------------------------
    def flush(self) -> None:
        """Wait until background compaction has finished and the ladder has settled."""
        for settle in (True, False):
            while (pending := self._pending) is not None:
                pending.result()
            if settle:  # puts that raced a finished batch may leave one more step to take
                with self._lock:
                    self._ladder()

    async def aflush(self) -> None:
        await asyncio.to_thread(self.flush)

    @property
    def working_set(self) -> list[ContextItem]:
        """L1 and L2 items, oldest first (a copy)."""
        with self._lock:
            return list(self._working.values())

    @property
    def working_tokens(self) -> int:
        return sum(i.tokens for i in self._working.values())

    def close(self) -> None:
        self.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "TieredContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.count(self.session_id)

    def __repr__(self) -> str:
        tiers = {t.value: 0 for t in (Tier.L1, Tier.L2)}
        for i in self._working.values():
            tiers[i.tier.value] += 1
        where = str(self.path) if self.path else "memory"
        return (f"TieredContext(session_id={self.session_id!r}, {where}, items={len(self)}, "
                f"L1={tiers['L1']}, L2={tiers['L2']}, working={self.working_tokens}/{self.budget.working_limit} tok)")

    def _coerce(self, value: ContextItem | Mapping[str, Any] | str) -> ContextItem:
        if isinstance(value, ContextItem):
            item = value
        elif isinstance(value, Mapping):
            if "content" not in value and "text" not in value:
                raise InputError("a mapping item needs 'content' (or 'text'); e.g. {'role': 'user', 'content': 'hi'}")
            meta = dict(value.get("metadata") or {})
            item = ContextItem.create(value.get("content", value.get("text")), role=value.get("role", Role.USER),
                                      timestamp=value.get("timestamp"), metadata=meta, id=value.get("id"), pinned=bool(value.get("pinned", False)))
        else:
            item = ContextItem.create(value)
        if not item.text.strip():
            raise InputError("empty text cannot be stored; skip empty messages (tool calls belong in the text or metadata)")
        if item.is_derived:
            raise InputError("put() takes originals; derived items (with source_ids) are made by the memory itself")
        return item

    def _resume(self) -> None:
        """Rebuild the working set from the archive (a reopened path resumes its state)."""
        originals = [i for i in self.store.items(self.session_id) if not i.is_derived]
        if not originals:
            return
        mode, self.compaction = self.compaction, Compaction.INLINE
        try:
            for item in sorted(originals, key=lambda i: i.seq):
                self._working[item.id] = item
                self._ladder()
            self._next_seq = max(i.seq for i in originals) + 1
            self._events.clear()
        finally:
            self.compaction = mode
        prefs = self.path / "preferences.json" if self.path else None
        if prefs is not None and prefs.exists():
            self.scorer.preferences.load(json.loads(prefs.read_text()))
