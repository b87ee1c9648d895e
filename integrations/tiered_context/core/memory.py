"""`TieredContext`: the facade. Put history in; assemble what the next call needs.

The ladder that keeps the working set under budget, and the summaries it folds retiring
history into, live in `core.compaction` (`CompactionMixin`); this module puts, assembles,
learns from feedback, and resumes a reopened archive.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tiered_context.core.assembler import AssembledContext, ContextAssembler
from tiered_context.core.budget import Budget, LadderEvent
from tiered_context.core.compaction import RETRY_AFTER_ITEMS  # noqa: F401 - importable from here, as before
from tiered_context.core.compaction import PREPARE_BATCH, Compaction, CompactionMixin, Compression, summary_scope
from tiered_context.core.compress import Compressor, SelfInformationCompressor
from tiered_context.core.embed import Embedder, WordLlamaEmbedder, normalize
from tiered_context.core.importance import self_information
from tiered_context.core.items import ContextItem, Role, Tier
from tiered_context.core.scoring import Scorer, ScoreParts, ScoringConfig
from tiered_context.core.store import ColdStore, LocalColdStore
from tiered_context.core.summarize import ExtractiveSummarizer, Summarizer, SummaryConfig
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import ConfigError, InputError

__all__ = ["TieredContext", "Compaction", "Compression", "apply_feedback"]


def _default_store(path: Path | None) -> ColdStore:
    """In memory: `LocalColdStore`. On disk: embedded Qdrant (qdrant-edge-py) when the
    `qdrant` extra is installed (write-ahead log, tenant-indexed, scales to 100k+ items),
    else the journaled `LocalColdStore`. A directory keeps the kind it was created with."""
    if path is None:
        return LocalColdStore()
    if not (path / "archive.jsonl").exists():
        try:
            from tiered_context.qdrant import QdrantColdStore
        except ImportError:
            pass
        else:
            return QdrantColdStore(path=path / "qdrant")
    return LocalColdStore(path)


def apply_feedback(scorer: Scorer, assembled: AssembledContext, used: Iterable[str], user: str | None) -> None:
    """One online preference step for `user`: the items of `assembled` named in `used`
    (ids or origin ids) pull the weights toward their score parts, the others push away."""
    used_ids = set(used)
    used_parts, unused_parts = [], []
    for item in assembled.items:
        origin = item.origin_ids[0]
        parts = assembled.report.scores.get(origin)
        if parts is None:
            continue
        sp = ScoreParts(*(parts[k] for k in ScoreParts.__slots__))
        (used_parts if {item.id, origin} & used_ids else unused_parts).append(sp)
    scorer.preferences.update(user, used_parts, unused_parts)


class TieredContext(CompactionMixin):
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
        compression: Compression | str = Compression.ALL,
        summarizer: Summarizer | None = None,
        summary: SummaryConfig | None = None,
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
        self.store: ColdStore = store or _default_store(self.path)
        self.compressor = compressor or SelfInformationCompressor(self.counter)
        self.scorer = Scorer(scoring)
        try:
            self.compaction = Compaction(compaction)
        except ValueError:
            raise ConfigError(f"compaction must be one of {[c.value for c in Compaction]}, got {compaction!r}") from None
        try:
            self.compression = Compression(compression)
        except ValueError as exc:
            raise ConfigError(f"compression must be one of {[c.value for c in Compression]}, got {compression!r}") from exc
        self.summary = summary or SummaryConfig()
        # the default summarizer embeds sentences with WordLlama whatever the memory's embedder:
        # centrality is a small part of its score, and a slow embedder would slow every fold
        self.summarizer: Summarizer = summarizer or ExtractiveSummarizer(counter=self.counter)
        self.on_event = on_event
        self._assembler = ContextAssembler(
            counter=self.counter, embedder=self.embedder, store=self.store, scorer=self.scorer,
            compressor=self.compressor if self.compression == Compression.ALL else None,
            compression_ratio=self.budget.compression_ratio,
        )
        self._lock = threading.RLock()
        self._next_seq = 0
        self._init_ladder()
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
                try:  # nothing is half-written: a failure rolls the sequence back
                    vectors = normalize(self.embedder.embed([i.text for i in fresh]))
                    self.store.add(self.session_id, fresh, vectors)  # raises on a conflicting id
                except Exception:
                    self._next_seq -= len(fresh)
                    raise
                for item in fresh:
                    self._working[item.id] = item
                self._unprepared.extend(fresh)
                if len(self._unprepared) >= PREPARE_BATCH:
                    self._prepare_forms()
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
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ConfigError(f"budget must be a positive int number of tokens, got {limit!r}")
        with self._lock:
            working = list(self._working.values())
            events, self._events = tuple(self._events), []
            summaries = list(self._frontier) if self.summary.candidates else []
        return self._assembler.assemble(
            self.session_id, query, budget=limit, working_set=working, recent_items=self.budget.recent_items,
            latest_seq=self._next_seq - 1, user=user_id or self.user_id, events=events,
            summaries=summaries, summary_tenant=summary_scope(self.session_id),
        )

    async def aassemble(self, query: str, *, budget: int | None = None, user_id: str | None = None) -> AssembledContext:
        """Async twin of `assemble`."""
        return await asyncio.to_thread(self.assemble, query, budget=budget, user_id=user_id)

    def feedback(self, assembled: AssembledContext, used: Iterable[str], *, user_id: str | None = None) -> None:
        """Tell the memory which items (ids or origin ids) an answer actually used.

        Updates the user's priority weights online: used items pull the weights toward
        what made them score, shown-but-unused items push away. Persisted with `path=`.
        """
        apply_feedback(self.scorer, assembled, used, user_id or self.user_id)
        if self.path is not None:
            (self.path / "preferences.json").write_text(json.dumps(self.scorer.preferences.state()))

    # -- housekeeping (the ladder itself lives in core.compaction) ---------------------------
    @property
    def summaries(self) -> list[ContextItem]:
        """The live summaries (oldest first): what `assemble` may offer for old history."""
        with self._lock:
            return list(self._frontier)

    def flush(self) -> None:
        """Wait until background compaction has finished and the ladder has settled, then
        archive a checkpoint of the ladder if it moved (a reopened memory resumes from it)."""
        with self._lock:
            self._prepare_forms()
        for future in list(self._preparing):
            future.result()
        for settle in (True, False):
            while (pending := self._pending) is not None:
                pending.result()
            if settle:  # puts that raced a finished batch may leave one more step to take
                with self._lock:
                    self._retry_at = 0  # an explicit flush settles now, backoff or not
                    self._ladder()
        self._checkpoint()

    async def aflush(self) -> None:
        await asyncio.to_thread(self.flush)

    @property
    def working_set(self) -> list[ContextItem]:
        """L1 and L2 items, oldest first (a copy)."""
        with self._lock:
            return list(self._working.values())

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
        """Rebuild the working set from the archive (a reopened path resumes its state).

        The latest checkpoint (archived by `flush`, so by `close`) restores the working set,
        the live summaries and the ladder exactly as they were, whatever batches background
        compaction took. The originals put after it (all of them for an archive without
        checkpoints) are replayed through the ladder inline, summaries taken from the archive.
        """
        originals = sorted((i for i in self.store.items(self.session_id) if not i.is_derived), key=lambda i: i.seq)
        if not originals:
            return
        start = self._restore({i.id: i for i in originals})
        mode, self.compaction = self.compaction, Compaction.INLINE
        self._replaying = True  # summaries are taken from the archive, never re-made
        try:
            for item in originals:
                if item.seq >= start:
                    self._working[item.id] = item
                    self._next_seq = item.seq + 1
                    self._ladder()
            self._next_seq = originals[-1].seq + 1
            self._events.clear()
        finally:
            self.compaction = mode
            self._replaying = False
        prefs = self.path / "preferences.json" if self.path else None
        if prefs is not None and prefs.exists():
            self.scorer.preferences.load(json.loads(prefs.read_text()))
