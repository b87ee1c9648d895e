"""`TieredContext`: the facade. Put history in; assemble what the next call needs."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any

from tiered_context.core.assembler import AssembledContext, ContextAssembler
from tiered_context.core.budget import Budget, LadderEvent, LadderLevel
from tiered_context.core.compress import Compressor, SelfInformationCompressor
from tiered_context.core.embed import Embedder, WordLlamaEmbedder, normalize
from tiered_context.core.facts import check_facts
from tiered_context.core.importance import self_information
from tiered_context.core.items import ContextItem, Role, Tier
from tiered_context.core.scoring import Scorer, ScoreParts, ScoringConfig
from tiered_context.core.store import ColdStore, LocalColdStore
from tiered_context.core.summarize import ExtractiveSummarizer, Summarizer, SummaryConfig, SummaryError, summary_id
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import ConfigError, InputError

__all__ = ["TieredContext", "Compaction", "Compression", "apply_feedback"]

log = logging.getLogger("tiered_context")
#: Stored items whose compressed forms are computed together, in the background.
PREPARE_BATCH = 64
#: After a failed compression, how many more puts before it is tried again.
RETRY_AFTER_ITEMS = 16
_RANK = {level: rank for rank, level in enumerate(LadderLevel)}


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


class Compaction(str, Enum):
    """Where the 2.0x compression batch runs: a background thread, or inline (deterministic)."""

    BACKGROUND = "background"
    INLINE = "inline"


class Compression(str, Enum):
    """What gets compressed forms (originals always stay archived in L3).

    ``off``: nothing; the ladder retires the oldest turns to L3 verbatim.
    ``working-set``: the ladder's L2 forms of the working set only.
    ``all``: also a compressed form of every retrieved candidate below the best few, so
    more evidence fits a small budget (the packer upgrades the best back to originals).
    """

    OFF = "off"
    WORKING_SET = "working-set"
    ALL = "all"


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


def summary_scope(session_id: str) -> str:
    """The archive scope of a session's summaries: apart from its originals, so summaries
    never shift the originals' retrieval statistics (BM25 document frequencies, z-scores)."""
    return f"{session_id}#summaries"


class TieredContext:
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
    Nothing is ever deleted.
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
        self._frontier: list[ContextItem] = []  # live summaries: not superseded, not merged upward
        self._backlog: list[ContextItem] = []  # retired originals waiting to be summarized
        self._summarized: set[str] = set()  # originals already folded into a summary
        self._kept: dict[str, float] = {}  # origin id -> score of the facts that keep it in L2
        self._released: set[str] = set()  # once released from `_kept`, never kept again
        self._pruned: list[ContextItem] = []  # pruned at 2.5x, waiting to be folded into a summary
        self._replaying = False
        self._working: OrderedDict[str, ContextItem] = OrderedDict()  # origin id -> current form
        self._lock = threading.RLock()
        self._events: list[LadderEvent] = []
        self._level: LadderLevel | None = None
        self._pending: Future | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._unprepared: list[ContextItem] = []  # stored, compressed forms not yet computed
        self._preparing: list[Future] = []
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
            self._kept.pop(item.origin_ids[0], None)
            tokens -= item.tokens
            pruned.append(item.origin_ids[0])
            if self.summary.enabled:  # still folded into the next summary, like any retiring item
                self._pruned.append(item)
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
        compress = self.compression != Compression.OFF
        batch, retire = [], []
        for origin, item in self._working.items():  # oldest first
            if tokens <= limit:
                break
            if item.pinned or origin in protected or origin in self._kept:
                continue
            if item.tier == Tier.L1 and compress:
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
        """Compress `batch` into L2 and retire `retire` to L3, folding the retiring
        originals into the running summary. A failure leaves every item exactly as it was
        (logged, reported) and is retried after `RETRY_AFTER_ITEMS` puts."""
        failed = ""
        try:
            forms = self.compressor.compress(batch, ratio) if batch else []
        except Exception as exc:
            log.warning("compression of %d items failed; they stay verbatim in L1: %s", len(batch), exc)
            failed, forms, batch = f"compression failed ({exc}); history unchanged", [], []
        keep, summary_note, summary_failed = (self._fold_retiring(retire) if retire or self._pruned
                                              else ({}, "", False))
        with self._lock:
            self._pending = None
            before = self.working_tokens
            if summary_failed:
                retire = []  # the retiring items stay where they were
            for origin in retire:
                if origin in keep:
                    self._kept[origin] = keep[origin]
                else:
                    self._working.pop(origin, None)
            self._release_kept()
            for original, form in zip(batch, forms):
                if self._working.get(original.id) is original and form.tokens < original.tokens:
                    self._working[original.id] = form
            progressed = self.working_tokens < before
            if failed or summary_failed or not progressed:  # back off instead of redoing a batch per put
                self._retry_at = self._next_seq + RETRY_AFTER_ITEMS
            detail = failed or f"compressed {len(forms)} to L2, retired {len(retire) - len(keep)} to L3"
            self._emit(LadderEvent(level=LadderLevel.COMPRESS, working_tokens=self.working_tokens,
                                   limit_tokens=self.budget.working_limit, item_ids=tuple(i.id for i in batch),
                                   detail=detail + (f"; {summary_note}" if summary_note else "")))
            if progressed and self.budget.level(self.working_tokens) in (LadderLevel.COMPRESS, LadderLevel.PRUNE):
                self._schedule_compression()

    def _release_kept(self) -> None:
        """Items kept in L2 for their facts may use at most a quarter of the working limit;
        beyond that the oldest are released (they retire with the next batch, already summarized)."""
        cap = self.budget.working_limit // 4
        kept = [o for o in self._working if o in self._kept]
        used = sum(self._working[o].tokens for o in kept)
        for origin in kept:
            if used <= cap:
                break
            used -= self._working[origin].tokens
            del self._kept[origin]
            self._released.add(origin)
        for origin in [o for o in self._kept if o not in self._working]:
            del self._kept[origin]

    # -- summaries ---------------------------------------------------------------------------
    def _fold_retiring(self, retire: list[str]) -> tuple[dict[str, float], str, bool]:
        """Fold the originals of `retire` (and the backlog) into the running summary.

        Returns (items kept in L2 for their facts -> score, a note for the event, failed).
        Runs off the lock (an LLM call may take seconds); only this job touches summaries.
        """
        if not self.summary.enabled:
            return {}, "", False
        with self._lock:
            current = {o: self._working[o] for o in retire if o in self._working}
            pruned, self._pruned = self._pruned, []
        leaving = [(i.origin_ids[0], i) for i in pruned] + list(current.items())
        derived = [o for o, i in leaving if i.is_derived]
        stored = {i.id: i for i in self.store.get(self.session_id, derived)} if derived else {}
        originals = [stored.get(o, i) if i.is_derived else i for o, i in leaving]
        todo = sorted({i.id: i for i in self._backlog + originals if i.id not in self._summarized}.values(),
                      key=lambda i: i.seq)
        if not todo:
            return {}, "", False
        if sum(i.tokens for i in todo) < self.summary.min_batch_tokens:
            self._backlog = todo  # too little to summarize yet: it waits (archived, retrievable)
            return {}, "", False
        previous = next((s for s in reversed(self._frontier) if s.metadata.get("summary_level") == 1
                         and len(s.source_ids) < self.summary.capacity(1)), None)
        try:
            summary = self._summarize(todo, previous)
        except Exception as exc:  # SummaryError, SummaryRejected or a bug in a custom summarizer
            log.warning("summarizing %d retiring items failed; history unchanged: %s", len(todo), exc)
            self._backlog = [i for i in todo if i.id not in current]
            return {}, f"summary failed ({exc}); history unchanged, retried later", True
        self._backlog = []
        check = check_facts(todo + ([previous] if previous else []), summary)
        keep: dict[str, float] = {}
        for fact in sorted(check.high(self.summary.fact_threshold), key=lambda f: -f.score):
            if (fact.source_id in current and fact.source_id not in keep and fact.source_id not in self._released
                    and len(keep) < self.summary.max_fact_items):
                keep[fact.source_id] = fact.score
        if keep:  # the kept items stay themselves: the summary must stand for the others only
            rest = [i for i in todo if i.id not in keep]
            self._store_summary(summary)  # the draft is archived too, so a reopened memory replays it
            try:
                if not rest:
                    raise SummaryError("every retiring item holds facts worth keeping")
                summary = self._summarize(rest, previous)
                check = check_facts(rest + ([previous] if previous else []), summary)
                todo = rest
            except Exception as exc:
                log.info("no summary without the items kept for their facts (%s); they retire with the rest", exc)
                keep = {}
        summary = self._archive(summary.evolve(metadata={**summary.metadata, "fact_check": check.as_dict(),
                                                         "kept_in_l2": sorted(keep)}), previous)
        self._summarized.update(i.id for i in todo)
        note = (f"summarized {len(todo)} items into {summary.id} ({summary.tokens} tokens); "
                f"facts kept {check.kept}/{check.total}")
        if check.missing:
            note += "; missing: " + ", ".join(f.text for f in check.missing[:8])
        if keep:
            note += f"; {len(keep)} items kept in L2 for their facts"
        note += self._merge_upward()
        return keep, note, False

    def _summarize(self, items: list[ContextItem], previous: ContextItem | None) -> ContextItem:
        """A summary of `items` folded into `previous`: the archived one when these exact
        inputs were summarized before (a reopened memory replays, it does not re-ask)."""
        archived = self.store.get(summary_scope(self.session_id), [summary_id(items, previous)])
        if archived:
            return archived[0]
        if self._replaying:
            raise SummaryError("not archived before the memory was closed; it is made again later")
        return self.summarizer.summarize(items, previous)

    def _store_summary(self, summary: ContextItem) -> ContextItem:
        """Archive `summary` with its vector (the archived one wins if it exists)."""
        existing = self.store.get(summary_scope(self.session_id), [summary.id])
        if existing:
            return existing[0]
        self.store.add(summary_scope(self.session_id), [summary], normalize(self.embedder.embed([summary.text])))
        return summary

    def _archive(self, summary: ContextItem, previous: ContextItem | None) -> ContextItem:
        """Store `summary` (with its vector) and make it live in place of what it folds."""
        summary = self._store_summary(summary)
        gone = {previous.id} if previous is not None else set()
        gone.update(summary.metadata.get("children") or ())
        with self._lock:
            self._frontier = [s for s in self._frontier if s.id not in gone] + [summary]
        return summary

    def _merge_upward(self) -> str:
        """Merge `fanout` sealed summaries of one level into the level above (repeatedly)."""
        notes = []
        level = 1
        while level < 8:
            sealed = [s for s in self._frontier if s.metadata.get("summary_level") == level
                      and len(s.source_ids) >= self.summary.capacity(level)]
            if len(sealed) < self.summary.fanout:
                level += 1
                continue
            children = sealed[: self.summary.fanout]
            previous = next((s for s in reversed(self._frontier) if s.metadata.get("summary_level") == level + 1
                             and len(s.source_ids) < self.summary.capacity(level + 1)), None)
            try:
                merged = self._summarize(children, previous)
            except Exception as exc:
                log.warning("merging %d level-%d summaries failed; they stay as they are: %s", len(children), level, exc)
                notes.append(f"level-{level + 1} merge failed ({exc}); retried later")
                break
            check = check_facts(children + ([previous] if previous else []), merged)
            self._archive(merged.evolve(metadata={**merged.metadata, "fact_check": check.as_dict()}), previous)
            notes.append(f"merged {len(children)} level-{level} summaries into {merged.id}")
        return "".join(f"; {n}" for n in notes)

    @property
    def summaries(self) -> list[ContextItem]:
        """The live summaries (oldest first): what `assemble` may offer for old history."""
        with self._lock:
            return list(self._frontier)

    def _emit(self, event: LadderEvent) -> None:
        self._events.append(event)
        del self._events[:-100]
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a callback must not break ingestion
                log.exception("on_event callback failed")

    def _prepare_forms(self) -> None:
        """Compress the items stored since the last batch, as one batch, off the request
        path, so that assembly finds their compressed forms cached (never one call per put)."""
        batch, self._unprepared = self._unprepared, []
        if self._assembler.compressor is None or not batch:
            return
        if self.compaction == Compaction.INLINE:
            self._assembler.prepare(batch)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiered-compaction")
        self._preparing = [f for f in self._preparing if not f.done()]
        self._preparing.append(self._executor.submit(self._assembler.prepare, batch))

    # -- housekeeping ----------------------------------------------------------------------
    def flush(self) -> None:
        """Wait until background compaction has finished and the ladder has settled."""
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
        self._replaying = True  # summaries are taken from the archive, never re-made
        try:
            for item in sorted(originals, key=lambda i: i.seq):
                self._working[item.id] = item
                self._next_seq = item.seq + 1
                self._ladder()
            self._next_seq = max(i.seq for i in originals) + 1
            self._events.clear()
        finally:
            self.compaction = mode
            self._replaying = False
        prefs = self.path / "preferences.json" if self.path else None
        if prefs is not None and prefs.exists():
            self.scorer.preferences.load(json.loads(prefs.read_text()))
