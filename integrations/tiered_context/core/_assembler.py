"""`ContextAssembler`: candidates from every tier -> priority -> packing -> rendering.

This is the one place that decides what the model sees. It is framework-free and
stateless between calls apart from a cache of per-item line costs. This module gathers
and scores the candidates; packing them under the budget and rendering the result are
the `Packer` mixin's (`core.packing`).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from tiered_context.core._budget import LadderEvent
from tiered_context.core._forms import Compressor, form_id
from tiered_context.core._embed import Embedder, normalize
from tiered_context.core._items import ContextItem, Tier
from tiered_context.core._validate import check_reserved, check_text
from tiered_context.core._packing import Packer, _Unit, _Units
from tiered_context.core._render import line
from tiered_context.core._result import AssembledContext
from tiered_context.core._dates import time_window
from tiered_context.core._scoring import Scorer, ScoreParts, neighbour_shares, turn_step
from tiered_context.core._speakers import speaker_of, speakers_named, speakers_of, without_speakers
from tiered_context.core._store import ColdStore, SignalStats
from tiered_context.core._tokens import TokenCounter
from tiered_context.core._toolcalls import call_bundles, call_ids
from tiered_context.errors import ConfigError, InputError

__all__ = ["ContextAssembler"]

# Tunables, named. Chosen at earlier stops on LoCoMo dev / QMSum train by the eval's recall
# rows (not re-measured in this change); each says what it bounds. The packer's
# (`MAX_ITEM_SHARE`) lives with it in `core.packing`.
#: L3 search asks for at least this many hits, and one per `TOKENS_PER_CANDIDATE` budget
#: tokens above it: ~2-3x the turns a budget can hold, so ranking, not the search, decides.
MIN_CANDIDATES = 64
TOKENS_PER_CANDIDATE = 10
#: How many of the strongest hits lend value to their neighbouring turns, and how many turns
#: away at most (the reach itself is measured in content: `ScoringConfig.neighbour_tokens`).
NEIGHBOUR_SOURCES = 16
NEIGHBOUR_MAX_TURNS = 10
#: How far (in seq) a tool call and its results are looked for around a candidate.
TOOL_PAIR_REACH = 8
#: Compressed forms are made for the candidates that could fill the budget this many times
#: over (compressed), never for the tail that could not be packed anyway.
FORM_REACH = 8
#: Line costs kept per assembler (per item id); the oldest half goes when it is exceeded.
LINE_COST_CACHE = 200_000
log = logging.getLogger("tiered_context")


@dataclass(frozen=True, slots=True)
class _Query:
    """One assembly's query: the one value every stage reads (store, scope, text, vector,
    the sequence number recency is measured from, the user, when it is asked, and the
    whole-collection signal statistics once the candidates are in)."""

    store: ColdStore
    tenant: str
    text: str
    vector: np.ndarray | None
    latest_seq: int
    user: str | None
    asked_at: float | None
    stats: SignalStats | None = None
    named: frozenset[str] = frozenset()  # the speakers the query names (`speakers_named`)


class ContextAssembler(Packer):
    """Packs the most valuable context into a hard token budget.

    Setup and use (normally through `TieredContext.assemble`)::

        assembler = ContextAssembler(counter=TokenCounter(), embedder=WordLlamaEmbedder(),
                                     store=LocalColdStore(), scorer=Scorer(),
                                     compressor=SelfInformationCompressor())  # optional
        out = assembler.assemble("s1", "query", budget=1000, working_set=[...])

    With a `compressor`, every retrieved candidate below the `verbatim_top` best is also
    offered as a compressed form (`compression_ratio` of its tokens; computed lazily,
    cached per item): the packer takes cheap forms first so more evidence fits, then
    upgrades the most valuable picks back to their originals while budget lasts.
    `summaries` (derived items standing for many originals) compete for what is left
    and never share a context with one of their own originals.
    """

    def __init__(
        self,
        *,
        counter: TokenCounter,
        embedder: Embedder,
        store: ColdStore,
        scorer: Scorer,
        compressor: Compressor | None = None,
        compression_ratio: float = 0.5,
        verbatim_top: int = 2,
        cache_size: int = 100_000,
    ) -> None:
        if not 0.05 <= compression_ratio <= 1.0:
            raise ConfigError(f"compression_ratio must be in [0.05, 1.0], got {compression_ratio}")
        self.counter, self.embedder, self.store, self.scorer = counter, embedder, store, scorer
        self.compressor, self.compression_ratio, self.verbatim_top = compressor, compression_ratio, verbatim_top
        self._line_cost: dict[str, int] = {}
        self._header_cost: dict[str, int] = {}
        self._forms: OrderedDict[str, ContextItem] = OrderedDict()  # form id -> compressed form
        self._cache_size = cache_size
        self._forms_lock = threading.Lock()
        self._warned: set[str] = set()  # ids of skipped items already logged

    def assemble(
        self,
        tenant: str,
        query: str,
        *,
        budget: int,
        working_set: Sequence[ContextItem] = (),
        recent_items: int = 0,
        latest_seq: int = 0,
        user: str | None = None,
        events: tuple[LadderEvent, ...] = (),
        summaries: Sequence[ContextItem] = (),
        summary_tenant: str | None = None,
        asked_at: float | None = None,
        store: ColdStore | None = None,
    ) -> AssembledContext:
        started = time.perf_counter()
        if len(self._line_cost) > LINE_COST_CACHE:  # bounded: the oldest half goes (they are cheap to redo)
            for key in list(itertools.islice(self._line_cost, len(self._line_cost) // 2)):
                self._line_cost.pop(key, None)
        if not isinstance(query, str):
            raise InputError(f"query must be str, got {type(query).__name__}")
        check_text(query, "query")  # a lone surrogate would break the embedder with a raw TypeError
        vector = normalize(self.embedder.embed([self._dense_text(query, working_set)]))[0] if query.strip() else None
        q = _Query(store=store or self.store, tenant=tenant, text=query, vector=vector, latest_seq=latest_seq,
                   user=user, asked_at=asked_at)
        units, stats = self._candidates(q, working_set, budget)
        q = replace(q, stats=stats, named=self._named(q, units))
        self._score(q, units)
        self._expand_neighbours(q, units)
        self._link_tool_calls(q, units)
        if self.compressor is not None:
            self._offer_compressed(units, budget)
        if summaries:
            self._add_summaries(replace(q, tenant=summary_tenant or tenant), units, summaries)
        recent = {i.origin_ids[0] for i in sorted(working_set, key=lambda i: i.seq)[-recent_items:]} if recent_items else set()
        chosen = self._pack(units, budget, recent)
        return self._result(units, chosen, budget, started, events)

    def prepare(self, items: Sequence[ContextItem]) -> None:
        """Compress `items` now and cache the forms, so that assembly does not pay for it.
        `TieredContext` calls this at ingest (the compressor runs at ~375k tokens/s)."""
        todo = [i for i in items if not i.pinned and not i.is_derived]
        if self.compressor is None or not todo:
            return
        ratio = self.compression_ratio
        try:
            fresh = self.compressor.compress(todo, ratio)
        except Exception as exc:  # a failing compressor costs compression, never the assembly
            log.warning("compressing %d items failed; offering originals only: %s", len(todo), exc)
            return
        with self._forms_lock:
            for original, form in zip(todo, fresh):
                self._forms[form_id(original.id, ratio)] = form
            while len(self._forms) > self._cache_size:
                self._forms.popitem(last=False)

    def clear_cache(self) -> None:
        """Forget cached line costs and compressed forms (e.g. after changing the compressor)."""
        with self._forms_lock:
            self._forms.clear()
        self._line_cost.clear()
        self._header_cost.clear()

    def _dense_text(self, query: str, working_set: Sequence[ContextItem]) -> str:
        """What the dense side embeds: the query without the names of the speakers it names
        (`without_speakers`; `ScoringConfig.name_free_dense`), the speakers being those of
        the working set: the people of the conversation at hand."""
        return without_speakers(query, speakers_of(working_set)) if self.scorer.config.name_free_dense else query

    # -- intake: one guard per item --------------------------------------------------
    def _admit(self, units: _Units, *items: ContextItem | None) -> bool:
        """True if every item can be scored and rendered; else the first that cannot is
        named in `units.skipped` (logged at warning once per item, traceback at debug) and
        the candidate is left out. This is the stage boundary behind which no per-item
        failure can break an assembly: records archived before input was checked at the
        door (e.g. ``tool_call_ids=12345``) are skipped here, never raised."""
        for item in items:
            if item is None:
                continue
            try:
                check_reserved(item.metadata)
                if not math.isfinite(float(item.importance)) or int(item.seq) != item.seq:
                    raise ValueError(f"importance {item.importance!r} or seq {item.seq!r} is not a number")
                if item.id not in self._line_cost:  # renders and counts; the packer reuses the cost
                    self._line_cost[item.id] = self.counter.count(check_text(line(item), "its rendered line"))
            except Exception as exc:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                units.skipped[item.id] = reason
                if item.id not in self._warned:
                    if len(self._warned) > 10_000:
                        self._warned.clear()
                    self._warned.add(item.id)
                    log.warning("assembly leaves out item %r (it stays archived; fix and re-put it to see it "
                                "again): %s", item.id, reason)
                    log.debug("why item %r was skipped", item.id, exc_info=True)
                return False
        return True

    # -- candidates ------------------------------------------------------------------
    def _candidates(self, q: _Query, working_set: Sequence[ContextItem], budget: int) -> tuple[dict[str, _Unit], SignalStats | None]:
        units = _Units()
        derived = [i.origin_ids[0] for i in working_set if i.is_derived]
        originals = {o.id: o for o in q.store.get(q.tenant, derived)} if derived else {}  # one round trip
        for item in working_set:
            origin_id = item.origin_ids[0]
            if not self._admit(units, item, originals.get(origin_id)):
                continue
            if item.is_derived:
                original = originals.get(origin_id)
                forms = [item, original] if original is not None else [item]
                units[origin_id] = _Unit(original or item, forms, _ZERO, 0.0, Tier.L2)
            else:
                units[origin_id] = _Unit(item, [item], _ZERO, 0.0, Tier.L1)
        stats = None
        if q.vector is not None:
            found = q.store.search(q.tenant, q.text, q.vector, limit=max(MIN_CANDIDATES, budget // TOKENS_PER_CANDIDATE))
            stats = found.stats
            for hit in found.hits:
                if hit.item.is_derived or hit.item.id in units or not self._admit(units, hit.item):
                    continue
                units[hit.item.id] = _Unit(hit.item, [hit.item], _ZERO, 0.0)
        return units, stats

    def _score(self, q: _Query, units: dict[str, _Unit]) -> None:
        ids = list(units)
        if not ids:
            return
        raw = q.store.score(q.tenant, q.text, q.vector, ids) if q.vector is not None else {}
        bm25 = np.array([raw.get(i, (0.0, 0.0))[0] for i in ids], dtype=np.float32)
        dense = np.array([raw.get(i, (0.0, 0.0))[1] for i in ids], dtype=np.float32)
        seqs = np.array([units[i].origin.seq for i in ids], dtype=np.float32)
        importance = np.array([units[i].origin.importance for i in ids], dtype=np.float32)
        parts = self.scorer.score(bm25=bm25, dense=dense, seqs=seqs, importance=importance, latest_seq=q.latest_seq,
                                  stats=q.stats, user=q.user, query=q.text)
        for i, p in zip(ids, parts):
            units[i].parts, units[i].value = p, p.total
        # the query names a speaker ("What did Melanie paint?", "What did C think about X?"):
        # relevant items that speaker said gain (her own turns rarely contain her name)
        if q.named:
            for i in ids:
                if units[i].parts.relevance > 0:
                    units[i].value *= self._speaker_gain(q, units[i].origin)
        # a date in the query ("on 7 July, 2023", "in May 2023"; "two weeks ago", "last
        # Saturday" seen from when it is asked, only when the caller says): relevant items
        # from that span gain
        boost = self.scorer.config.time_match_boost
        window = time_window(q.text, q.asked_at) if boost else None
        if window is not None:
            for i in ids:
                u = units[i]
                if window[0] <= u.origin.timestamp <= window[1] and u.parts.relevance > 0:
                    u.value *= 1.0 + boost

    def _named(self, q: _Query, units: dict[str, _Unit]) -> frozenset[str]:
        """The speakers of the candidates that the query names (none when `speaker_boost` is 0)."""
        if not self.scorer.config.speaker_boost:
            return frozenset()
        return frozenset(speakers_named(q.text, speakers_of(u.origin for u in units.values())))

    def _speaker_gain(self, q: _Query, item: ContextItem) -> float:
        """``1 + speaker_boost`` for an item said by a speaker the query names, else 1."""
        return 1.0 + self.scorer.config.speaker_boost if q.named and speaker_of(item) in q.named else 1.0

    def _expand_neighbours(self, q: _Query, units: dict[str, _Unit], top: int = NEIGHBOUR_SOURCES) -> None:
        """Turns near a strong hit inherit part of its value (`neighbour_shares`): evidence
        often spans a few turns (a question, its answer, the follow-up), and in a transcript
        of short utterances a topic runs over many. The turns within reach that are not
        candidates yet are fetched and scored, so the packer can weigh them too."""
        cfg = self.scorer.config
        decay, reach, unit = cfg.neighbour_decay, cfg.neighbour_window, cfg.neighbour_tokens
        if not decay or not reach or not units:
            return
        turns = min(NEIGHBOUR_MAX_TURNS, int(reach)) if not unit else NEIGHBOUR_MAX_TURNS
        # Only what the query found lends value (with an empty query, recency alone ranks).
        best = sorted((u for u in units.values() if u.parts.relevance > 0), key=lambda u: -u.value)[:top]
        if not best:
            return
        by_seq = {u.origin.seq: u.origin for u in units.values()}
        wanted = {u.origin.seq + d for u in best for d in range(-turns, turns + 1)} - by_seq.keys()
        near = dict(by_seq)
        near.update((i.seq, i) for i in q.store.get_by_seq(q.tenant, sorted(s for s in wanted if s >= 0)))
        # A hit lends its value without the speaker gain; the turn beside it gets the gain
        # of whoever said it (her reply beside the other speaker's hit) and, as far as the
        # hit's turns are shorter than a step, the hit's: a transcript's region around what
        # she said is hers, a chat message is its sender's (`ScoringConfig.speaker_gain_spreads`).
        spreads = cfg.speaker_gain_spreads
        inherit: dict[int, float] = {}
        for u in best:
            gain, step = self._speaker_gain(q, u.origin), turn_step(u.origin.seq, near, unit=unit, turns=turns)
            region = min(1.0, 2.0 * (1.0 - step)) if spreads is None else float(spreads)
            shares = neighbour_shares(u.origin.seq, u.value / gain, near, decay=decay, reach=reach, step=step,
                                      turns=turns)
            for seq, share in shares.items():
                own = self._speaker_gain(q, near[seq])
                share *= own + (max(gain, own) - own) * region
                if share > inherit.get(seq, 0.0):
                    inherit[seq] = share
        fresh = [near[s] for s in sorted(inherit)
                 if s not in by_seq and near[s].id not in units and self._admit(units, near[s])]
        for item in fresh:
            units[item.id] = _Unit(item, [item], _ZERO, 0.0)
        if fresh:
            self._score(q, units)  # one normalisation for all
        by_seq_units = {u.origin.seq: u for u in units.values()}
        for seq, share in inherit.items():
            n = by_seq_units.get(seq)
            if n is not None:
                n.value = max(n.value, share)

    def _link_tool_calls(self, q: _Query, units: dict[str, _Unit], reach: int = TOOL_PAIR_REACH) -> None:
        """Bundle each tool call with its results (`_toolcalls`) so that packing never splits
        a pair. Missing partners are fetched from nearby turns."""
        linked = {o: ids for o, u in units.items() if (ids := call_ids(u.origin))}
        for u in units.values():
            u.bundle = (u.origin.id,)
        if not linked:
            return
        wanted = {s for o in linked for s in range(units[o].origin.seq - reach, units[o].origin.seq + reach + 1)}
        wanted -= {u.origin.seq for u in units.values()}
        known = set().union(*linked.values())
        for item in q.store.get_by_seq(q.tenant, sorted(s for s in wanted if s >= 0)):
            ids = call_ids(item)
            if ids & known and item.id not in units and self._admit(units, item):
                units[item.id] = _Unit(item, [item], _ZERO, 0.0, bundle=(item.id,))
                linked[item.id] = ids
        for origin, bundle in call_bundles(linked, lambda o: units[o].origin.seq).items():
            units[origin].bundle = bundle

    def _offer_compressed(self, units: dict[str, _Unit], budget: int) -> None:
        """Offer a compressed form of the single-form candidates below the `verbatim_top`
        most valuable (as many as could fill the budget `FORM_REACH` times): computed once per item and
        ratio (batched), then cached."""
        ranked = sorted((u for u in units.values() if len(u.forms) == 1 and not u.origin.pinned
                         and not u.origin.is_derived), key=lambda u: -u.value)[self.verbatim_top:]
        alpha = self.scorer.config.length_exponent  # the packer's order: value per (compressed) token^alpha
        ranked.sort(key=lambda u: -u.value / max(1.0, (u.origin.tokens or 1) * self.compression_ratio) ** alpha)
        reach, cut = 0.0, len(ranked)
        for k, u in enumerate(ranked):  # forms for as many as could fit FORM_REACH times over, not the tail
            reach += (u.origin.tokens or 1) * self.compression_ratio
            if reach > FORM_REACH * budget:
                cut = k + 1
                break
        ranked = ranked[:cut]
        if not ranked:
            return
        ratio = self.compression_ratio
        keys = [form_id(u.origin.id, ratio) for u in ranked]
        with self._forms_lock:
            missing = [u.origin for u, k in zip(ranked, keys) if k not in self._forms]
        self.prepare(missing)  # normally done at ingest; here only for items it has not seen
        with self._forms_lock:
            forms = [self._forms.get(k) for k in keys]
        for u, form in zip(ranked, forms):
            if form is not None and form.text != u.origin.text and 0 < form.tokens < u.origin.tokens:
                u.forms.insert(0, form)

    def _add_summaries(self, q: _Query, units: dict[str, _Unit], summaries: Sequence[ContextItem]) -> None:
        """Summaries as candidates, scored on the same scale as the turns: their raw BM25
        and cosine (from the summary archive) are normalised together with the best turn's."""
        fresh = [s for s in summaries if s.id not in units and self._admit(units, s)]
        if not fresh:
            return
        raw = q.store.score(q.tenant, q.text, q.vector, [s.id for s in fresh]) if q.vector is not None else {}
        best = max(units.values(), key=lambda u: u.parts.relevance, default=None)
        ref = (best.parts.bm25, best.parts.dense) if best is not None else (0.0, 0.0)
        bm25 = np.array([raw.get(s.id, (0.0, 0.0))[0] for s in fresh] + [ref[0]], dtype=np.float32)
        dense = np.array([raw.get(s.id, (0.0, 0.0))[1] for s in fresh] + [ref[1]], dtype=np.float32)
        seqs = np.array([float(s.metadata.get("last_seq", s.seq)) for s in fresh] + [q.latest_seq], dtype=np.float32)
        importance = np.array([s.importance for s in fresh] + [0.0], dtype=np.float32)
        parts = self.scorer.score(bm25=bm25, dense=dense, seqs=seqs, importance=importance, latest_seq=q.latest_seq,
                                  stats=q.stats, user=q.user, query=q.text)
        for summary, p in zip(fresh, parts):
            units[summary.id] = _Unit(summary, [summary], p, p.total * SUMMARY_WEIGHT, Tier.L3,
                                      bundle=(summary.id,), summary=True)


_ZERO = ScoreParts(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
#: A summary's value relative to a verbatim item with the same scores (it stands for many
#: items, but only approximately, and never counts as covering them).
SUMMARY_WEIGHT = 0.5
