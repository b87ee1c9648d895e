"""The ladder that keeps a memory's working set under budget, and the progressive
summaries that retiring history is folded into.

`Ladder` is a component the facade (`core.memory.TieredContext`) composes: it owns the
working set (L1 + L2), the live summaries, its background worker and its checkpoints,
and the facade calls its steps: `admit` (new originals), `settle` (wait for background
work and take any step left), `checkpoint`, `resume` (restore + replay on open),
`view` (what `assemble` reads) and `close`.

    admit ──► _ladder ──► 1.5x: alert event
                    ──► 2.0x: _schedule_compression picks the oldest batch (deterministic)
                              └► _compress (inline, or on the worker thread):
                                   L1 originals -> L2 compressed forms (none while the
                                     background work is behind: pruned items wait to be folded)
                                   oldest L2 items retire -> _fold_retiring -> a summary
                    ──► 2.5x: _prune, synchronous (pruned items are folded later)

The summaries themselves (folding retiring originals, merging sealed summaries upward,
archiving each under the id of the span it covers) are the `Summaries` mixin in
`core.summaries`.

`checkpoint` archives the ladder's state (at `flush`, so at `close`) as a
`core.checkpoint.Checkpoint` and `resume` reads it back, so a reopened memory continues
exactly where it stopped, whatever batches compaction took (the `Checkpoints` mixin in
`core.checkpoint`). The background worker (`core.worker`) is one daemon thread: a hung
summarizer never holds `close()` beyond its timeout, nor the interpreter's exit. Nothing
here deletes: every original stays archived in L3.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from time import monotonic as _now
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from tiered_context.core._budget import LadderEvent, LadderLevel
from tiered_context.core._checkpoint import Checkpoints
from tiered_context.core._config import MemoryConfig
from tiered_context.core._enums import Compaction, Compression
from tiered_context.core._items import ContextItem, Tier
from tiered_context.core._namespace import Kind, Namespace
from tiered_context.core._summaries import Summaries
from tiered_context.core._worker import Worker, settle_timeout

__all__ = ["Ladder", "LadderView", "PREPARE_BATCH", "RETRY_AFTER_ITEMS"]

log = logging.getLogger("tiered_context")
#: Stored items whose compressed forms are computed together, in the background.
PREPARE_BATCH = 64
#: After a failed compression, how many more puts before it is tried again.
RETRY_AFTER_ITEMS = 16
_RANK = {level: rank for rank, level in enumerate(LadderLevel)}


class _Working(OrderedDict):
    """The working set (origin id -> current form) keeping the sum of its items' tokens, so
    the ladder reads it per put in O(1) instead of re-adding thousands of items."""

    def __init__(self, pairs: Iterable[tuple[str, ContextItem]] = ()) -> None:
        super().__init__()
        self.total = 0
        for key, item in pairs:
            self[key] = item

    def __setitem__(self, key: str, item: ContextItem) -> None:
        old = super().get(key)
        super().__setitem__(key, item)
        self.total += item.tokens - (old.tokens if old is not None else 0)

    def __delitem__(self, key: str) -> None:
        self.total -= super().__getitem__(key).tokens
        super().__delitem__(key)

    def pop(self, key: str, *default: object) -> object:  # type: ignore[override]
        if key in self:
            item = super().__getitem__(key)
            self.__delitem__(key)
            return item
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self, last: bool = True) -> tuple[str, ContextItem]:  # type: ignore[override]
        key, item = super().popitem(last)
        self.total -= item.tokens
        return key, item

    def clear(self) -> None:
        super().clear()
        self.total = 0

    def update(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        for key, item in dict(*args, **kwargs).items():
            self[key] = item

    def setdefault(self, key: str, default: ContextItem) -> ContextItem:  # type: ignore[override]
        if key not in self:
            self[key] = default
        return super().__getitem__(key)


@dataclass(frozen=True, slots=True)
class LadderView:
    """What `assemble` reads of the ladder, taken under its lock in one step."""

    working: list[ContextItem]
    summaries: list[ContextItem]
    events: tuple[LadderEvent, ...]


class Ladder(Summaries, Checkpoints):
    """The working set's ladder and progressive summaries of one namespace.

    Built by `TieredContext` from its resolved `MemoryConfig` and `Namespace`; `prepare`
    computes compressed forms of new items ahead of assembly (None: no compression of
    candidates). Every step takes `self.lock`; the ladder never calls back into the facade.
    """

    def __init__(self, config: MemoryConfig, namespace: Namespace, *,
                 prepare: Callable[[Sequence[ContextItem]], None] | None = None) -> None:
        self.config = config
        self.namespace = namespace
        self.scoring = config.scoring
        self.mode = config.compaction
        self.lock = threading.RLock()
        self._prepare = prepare
        self._items_key = namespace.key
        self._summary_keys = [k for k in (namespace.with_kind(Kind.SUMMARIES).key,
                                          namespace.with_kind(Kind.SUMMARIES).legacy_key()) if k]
        self._checkpoint_keys = [k for k in (namespace.with_kind(Kind.CHECKPOINTS).key,
                                             namespace.with_kind(Kind.CHECKPOINTS).legacy_key()) if k]
        self._next_seq = 0
        self._working = _Working()  # origin id -> current form, with their token total
        self._frontier: list[ContextItem] = []  # live summaries: not superseded, not merged upward
        self._backlog: list[ContextItem] = []  # retired originals waiting to be summarized
        self._summarized: set[str] = set()  # originals already folded into a summary
        self._kept: dict[str, float] = {}  # origin id -> score of the facts that keep it in L2
        self._released: set[str] = set()  # once released from `_kept`, never kept again
        self._pruned: list[ContextItem] = []  # pruned at 2.5x, waiting to be folded into a summary
        self._replaying = False
        self._events: list[LadderEvent] = []
        self._level: LadderLevel | None = None
        self._pending: Future | None = None
        self._worker: Worker | None = None
        self._unprepared: list[ContextItem] = []  # stored, compressed forms not yet computed
        self._preparing: list[Future] = []
        self._retry_at = 0
        self._changes = 0  # compaction steps and prunes so far: what makes a checkpoint stale
        self._saved: tuple[int, int, int] = (0, 0, 0)  # (checkpoint number, _changes, _retry_at) last archived

    # -- the steps the facade calls ----------------------------------------------------------
    def admit(self, items: Sequence[ContextItem]) -> None:
        """New originals, just archived, enter L1 (oldest first); the ladder takes its step."""
        with self.lock:
            for item in items:
                self._working[item.id] = item
                self._next_seq = max(self._next_seq, item.seq + 1)
            self._unprepared.extend(items)
            if len(self._unprepared) >= PREPARE_BATCH:
                self._prepare_forms()
            self._ladder()

    def view(self, *, summaries: bool = True, take_events: bool = False) -> LadderView:
        """The working set, the live summaries, and (`take_events`: what `assemble`
        reports, once) the ladder events since they were last taken."""
        with self.lock:
            events: tuple[LadderEvent, ...] = ()
            if take_events:
                events, self._events = tuple(self._events), []
            return LadderView(list(self._working.values()), list(self._frontier) if summaries else [], events)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for background work and take any step left. False when `timeout` (seconds)
        passed first: the work goes on in the background, nothing is lost."""
        deadline = None if timeout is None else _now() + timeout
        def wait(future: Future) -> bool:
            try:
                future.result(None if deadline is None else max(0.0, deadline - _now()))
            except FutureTimeout:
                return False
            except Exception:  # logged where it happened; the ladder state is unchanged
                pass
            return True
        with self.lock:
            self._prepare_forms()
        if not all(wait(f) for f in list(self._preparing)):
            return False
        # puts that raced a finished batch may leave a step to take, and a job that only
        # folded pruned items (`_schedule_compression`) leaves the compression it put off
        for again in (True, True, False):
            while (pending := self._pending) is not None:
                if not wait(pending):
                    return False
            if again:
                with self.lock:
                    self._retry_at = 0  # an explicit settle acts now, backoff or not
                    self._ladder()
        return True

    def close(self) -> None:
        """Settle (at most the summarizer's timeout), checkpoint, stop the worker."""
        if self.settle(settle_timeout(self.config.summarizer)):
            self.checkpoint()
        else:
            log.warning("background compaction of %r did not finish within its timeout; closing without "
                        "a checkpoint (nothing is lost: the history is replayed on the next open)", self.namespace)
        if self._worker is not None:
            self._worker.shutdown()

    def resume(self, originals: Sequence[ContextItem]) -> None:
        """Rebuild from the archive (`originals` in seq order): the latest checkpoint
        restores the working set, the live summaries and the ladder exactly as they were;
        the originals put after it are replayed inline, summaries taken from the archive."""
        if not originals:
            return
        with self.lock:
            start = self._restore({i.id: i for i in originals})
            mode, self.mode = self.mode, Compaction.INLINE
            self._replaying = True  # summaries are taken from the archive, never re-made
            try:
                for item in originals:
                    if item.seq >= start:
                        self._working[item.id] = item
                        self._next_seq = item.seq + 1
                        self._ladder()
                self._next_seq = max(self._next_seq, originals[-1].seq + 1)
                self._events.clear()
            finally:
                self.mode = mode
                self._replaying = False

    @property
    def tokens(self) -> int:
        """Tokens of the working set (L1 and L2), what the ladder keeps under budget."""
        return self._working.total

    # -- the ladder ----------------------------------------------------------------------
    def _ladder(self) -> None:
        tokens = self.tokens
        level = self.config.budget.level(tokens)
        rising = level is not None and (self._level is None or _RANK[level] > _RANK[self._level])
        self._level = level
        if rising and level == LadderLevel.ALERT:
            self._emit(LadderEvent(level=level, working_tokens=tokens, limit_tokens=self.config.budget.working_limit,
                                   detail=f"working set at {tokens / self.config.budget.working_limit:.2f}x"))
        if level == LadderLevel.PRUNE:
            self._prune(tokens)
        if self._pending is None and (self._pruned or self.config.budget.level(self.tokens) in (LadderLevel.COMPRESS, LadderLevel.PRUNE)):
            self._schedule_compression()  # pruned items are folded even when the prune left the set below 2x

    def _prune(self, tokens: int) -> None:
        """Synchronous: lowest priority (importance + recency) out of the working set."""
        target = int(self.config.budget.compress_at * self.config.budget.working_limit) - 1
        cfg = self.scoring
        protected = set(list(self._working)[-self.config.budget.recent_items:]) if self.config.budget.recent_items else set()
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
            if self.config.summary.enabled:  # still folded into the next summary, like any retiring item
                self._pruned.append(item)
        self._changes += 1
        self._emit(LadderEvent(level=LadderLevel.PRUNE, working_tokens=tokens, limit_tokens=self.config.budget.working_limit,
                               item_ids=tuple(pruned), detail=f"pruned {len(pruned)} items to L3 (archived)"))

    def _schedule_compression(self) -> None:
        """Pick the batch now (deterministic), compress it inline or in the background.

        While puts outpace the background work (items were pruned at 2.5x and wait to be
        folded), no new L1 items are compressed: the prunes that go on meanwhile would take
        most of them before their forms land (measured: ~85% on a LongMemEval history put
        turn by turn). The job folds the pruned items and retires L2 ones; compression
        resumes once the ladder has caught up (at the latest, on `flush`)."""
        if self._next_seq < self._retry_at:
            return
        limit = self.config.budget.working_limit
        ratio = self.config.budget.compression_ratio
        tokens = self.tokens
        protected = set(list(self._working)[-self.config.budget.recent_items:]) if self.config.budget.recent_items else set()
        compress = self.config.compression != Compression.OFF
        behind = self.mode == Compaction.BACKGROUND and bool(self._pruned)
        over = self.config.budget.level(tokens) in (LadderLevel.COMPRESS, LadderLevel.PRUNE)
        batch, retire = [], []
        for origin, item in self._working.items():  # oldest first
            if not over or tokens <= limit:  # below 2x: only the pruned items are folded
                break
            if item.pinned or origin in protected or origin in self._kept:
                continue
            if item.tier == Tier.L1 and compress:
                if behind:
                    continue
                batch.append(item)
                tokens -= int(item.tokens * (1 - ratio))
            else:
                retire.append(origin)
                tokens -= item.tokens
        if not batch and not retire and not self._pruned:
            return
        if self.mode == Compaction.INLINE:
            self._compress(batch, retire, ratio)
            return
        self._pending = self._submit(self._compress, batch, retire, ratio)

    def _compress(self, batch: list[ContextItem], retire: list[str], ratio: float) -> None:
        """Compress `batch` into L2 and retire `retire` to L3, folding the retiring
        originals into the running summary. A failure leaves every item exactly as it was
        (logged, reported) and is retried after `RETRY_AFTER_ITEMS` puts."""
        failed = ""
        try:
            forms = self.config.compressor.compress(batch, ratio) if batch else []
        except Exception as exc:
            log.warning("compression of %d items failed; they stay verbatim in L1: %s", len(batch), exc)
            failed, forms, batch = f"compression failed ({exc}); history unchanged", [], []
        keep, summary_note, summary_failed = (self._fold_retiring(retire) if retire or self._pruned
                                              else ({}, "", False))
        with self.lock:
            self._pending = None
            self._changes += 1
            before = self.tokens
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
            progressed = self.tokens < before
            if failed or summary_failed or not progressed:  # back off instead of redoing a batch per put
                self._retry_at = self._next_seq + RETRY_AFTER_ITEMS
            detail = failed or f"compressed {len(forms)} to L2, retired {len(retire) - len(keep)} to L3"
            self._emit(LadderEvent(level=LadderLevel.COMPRESS, working_tokens=self.tokens,
                                   limit_tokens=self.config.budget.working_limit, item_ids=tuple(i.id for i in batch),
                                   detail=detail + (f"; {summary_note}" if summary_note else "")))
            if progressed and self.config.budget.level(self.tokens) in (LadderLevel.COMPRESS, LadderLevel.PRUNE):
                self._schedule_compression()

    def _release_kept(self) -> None:
        """Items kept in L2 for their facts may use at most a quarter of the working limit;
        beyond that the oldest are released (they retire with the next batch, already summarized)."""
        cap = self.config.budget.working_limit // 4
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

    # -- background work ---------------------------------------------------------------------
    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn` on the ladder's one background thread (started on first use)."""
        if self._worker is None:
            self._worker = Worker()
        return self._worker.submit(fn, *args)

    def _prepare_forms(self) -> None:
        """Compress the items stored since the last batch, as one batch, off the request
        path, so that assembly finds their compressed forms cached (never one call per put)."""
        batch, self._unprepared = self._unprepared, []
        if self._prepare is None or not batch:
            return
        if self.mode == Compaction.INLINE:
            self._prepare(batch)
            return
        self._preparing = [f for f in self._preparing if not f.done()]
        self._preparing.append(self._submit(self._prepare, batch))

    def _emit(self, event: LadderEvent) -> None:
        self._events.append(event)
        del self._events[:-100]
        if self.config.on_event is not None:
            try:
                self.config.on_event(event)
            except Exception:  # a callback must not break ingestion
                log.exception("on_event callback failed")
