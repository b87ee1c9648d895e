"""`ContextAssembler`: candidates from every tier -> priority -> packing -> rendering.

This is the one place that decides what the model sees. It is framework-free and
stateless between calls apart from a cache of per-item line costs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tiered_context.core.budget import LadderEvent
from tiered_context.core.embed import Embedder, normalize
from tiered_context.core.items import ContextItem, Tier
from tiered_context.core.render import day_of, header, line, render
from tiered_context.core.scoring import Scorer, ScoreParts
from tiered_context.core.store import ColdStore, SignalStats
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import BudgetError

__all__ = ["AssembledContext", "AssemblyReport", "ContextAssembler"]

_TRUNCATION_MARKER = " […truncated; the original is archived]"


@dataclass(frozen=True, slots=True, kw_only=True)
class AssemblyReport:
    """What an assembly did, in numbers: the part a dashboard or a trace shows."""

    budget: int
    tokens: int
    tokens_per_tier: dict[str, int]
    candidates: int
    dropped: int
    compression_ratio: float  # original tokens of the included items / tokens they used
    seconds: float
    scores: dict[str, dict[str, float]]  # every candidate's ScoreParts, by origin id
    provenance: dict[str, tuple[str, ...]]  # included item id -> origin ids
    events: tuple[LadderEvent, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AssembledContext:
    """The result of `assemble`: `text` to send, the `items` in it, and a `report`.

    >>> out = ctx.assemble("when is the launch?", budget=500)  # doctest: +SKIP
    >>> out.tokens <= 500, out.items[0].source_ids             # doctest: +SKIP
    """

    text: str
    tokens: int
    items: tuple[ContextItem, ...]
    report: AssemblyReport
    origins: tuple[ContextItem, ...] = field(default=())

    def covered(self, key: str) -> set:
        """`metadata[key]` of each original present verbatim or as a 1:1 compressed form."""
        return {o.metadata[key] for o in self.origins if key in o.metadata}

    def __repr__(self) -> str:
        tiers = ", ".join(f"{k}={v}" for k, v in self.report.tokens_per_tier.items() if v)
        return f"AssembledContext({self.tokens}/{self.report.budget} tokens, {len(self.items)} items; {tiers})"


@dataclass(slots=True)
class _Unit:
    origin: ContextItem  # the stored original
    forms: list[ContextItem]  # cheapest first; the original is last
    parts: ScoreParts
    value: float
    tier: Tier = Tier.L3  # where it came from: L1/L2 working set, or L3 retrieval
    costs: list[int] = field(default_factory=list)
    day: str | None = None
    bundle: tuple[str, ...] = ()  # origin ids packed together (a tool call and its results)


class ContextAssembler:
    """Packs the most valuable context into a hard token budget.

    Setup and use (normally through `TieredContext.assemble`)::

        assembler = ContextAssembler(counter=TokenCounter(), embedder=WordLlamaEmbedder(),
                                     store=LocalColdStore(), scorer=Scorer())
        out = assembler.assemble("s1", "query", budget=1000, working_set=[...])
    """

    def __init__(self, *, counter: TokenCounter, embedder: Embedder, store: ColdStore, scorer: Scorer) -> None:
        self.counter, self.embedder, self.store, self.scorer = counter, embedder, store, scorer
        self._line_cost: dict[str, int] = {}
        self._header_cost: dict[str, int] = {}

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
    ) -> AssembledContext:
        started = time.perf_counter()
        vector = normalize(self.embedder.embed([query]))[0] if query.strip() else None
        units, stats = self._candidates(tenant, query, vector, working_set, budget)
        self._score(tenant, query, vector, units, latest_seq, stats, user)
        self._expand_neighbours(tenant, query, vector, units, latest_seq, stats, user)
        self._link_tool_calls(tenant, units)
        recent = {i.origin_ids[0] for i in sorted(working_set, key=lambda i: i.seq)[-recent_items:]} if recent_items else set()
        chosen = self._pack(units, budget, recent)
        return self._result(units, chosen, budget, started, events)

    # -- candidates ------------------------------------------------------------------
    def _candidates(self, tenant, query, vector, working_set, budget) -> tuple[dict[str, _Unit], SignalStats | None]:
        units: dict[str, _Unit] = {}
        for item in working_set:
            origin_id = item.origin_ids[0]
            if item.is_derived:
                originals = self.store.get(tenant, [origin_id])
                original = originals[0] if originals else item
                units[origin_id] = _Unit(original, [item, original] if originals else [item], _ZERO, 0.0, Tier.L2)
            else:
                units[origin_id] = _Unit(item, [item], _ZERO, 0.0, Tier.L1)
        stats = None
        if vector is not None:
            found = self.store.search(tenant, query, vector, limit=max(64, budget // 10))
            stats = found.stats
            for hit in found.hits:
                if hit.item.is_derived or hit.item.id in units:
                    continue
                units[hit.item.id] = _Unit(hit.item, [hit.item], _ZERO, 0.0)
        return units, stats

    def _score(self, tenant, query, vector, units: dict[str, _Unit], latest_seq, stats, user) -> None:
        ids = list(units)
        if not ids:
            return
        raw = self.store.score(tenant, query, vector, ids) if vector is not None else {}
        bm25 = np.array([raw.get(i, (0.0, 0.0))[0] for i in ids], dtype=np.float32)
        dense = np.array([raw.get(i, (0.0, 0.0))[1] for i in ids], dtype=np.float32)
        seqs = np.array([units[i].origin.seq for i in ids], dtype=np.float32)
        importance = np.array([units[i].origin.importance for i in ids], dtype=np.float32)
        parts = self.scorer.score(bm25=bm25, dense=dense, seqs=seqs, importance=importance, latest_seq=latest_seq, stats=stats, user=user)
        for i, p in zip(ids, parts):
            units[i].parts, units[i].value = p, p.total

    def _expand_neighbours(self, tenant, query, vector, units: dict[str, _Unit], latest_seq, stats, user, top: int = 16) -> None:
        """Turns within `neighbour_window` of a strong hit inherit `decay ** distance` of its
        value: evidence often spans a few turns (a question, its answer, the follow-up)."""
        decay, window = self.scorer.config.neighbour_decay, self.scorer.config.neighbour_window
        if not decay or not window or not units:
            return
        best = sorted(units.values(), key=lambda u: -u.value)[:top]
        offsets = [d for d in range(-window, window + 1) if d]
        by_seq = {u.origin.seq: u for u in units.values()}
        wanted = {u.origin.seq + d for u in best for d in offsets} - by_seq.keys()
        fresh = [i for i in self.store.get_by_seq(tenant, sorted(s for s in wanted if s >= 0)) if i.id not in units]
        for item in fresh:
            units[item.id] = _Unit(item, [item], _ZERO, 0.0)
        if fresh:
            self._score(tenant, query, vector, units, latest_seq, stats, user)  # one normalisation for all
            by_seq = {u.origin.seq: u for u in units.values()}
        for u in best:
            for d in offsets:
                n = by_seq.get(u.origin.seq + d)
                if n is not None:
                    n.value = max(n.value, decay ** abs(d) * u.value)

    def _link_tool_calls(self, tenant: str, units: dict[str, _Unit], reach: int = 8) -> None:
        """Bundle each tool call with its results (metadata `tool_call_ids` on the call,
        `tool_call_id` on each result) so that packing never splits a pair: an orphaned
        tool message is a provider error. Missing partners are fetched from nearby turns."""
        linked = {o: ids for o, u in units.items() if (ids := _call_ids(u.origin))}
        for u in units.values():
            u.bundle = (u.origin.id,)
        if not linked:
            return
        wanted = {s for o in linked for s in range(units[o].origin.seq - reach, units[o].origin.seq + reach + 1)}
        wanted -= {u.origin.seq for u in units.values()}
        known = set().union(*linked.values())
        for item in self.store.get_by_seq(tenant, sorted(s for s in wanted if s >= 0)):
            ids = _call_ids(item)
            if ids & known and item.id not in units:
                units[item.id] = _Unit(item, [item], _ZERO, 0.0, bundle=(item.id,))
                linked[item.id] = ids
        groups: list[tuple[set[str], set[str]]] = []  # (call ids, origin ids)
        for origin, ids in linked.items():
            merged = (set(ids), {origin})
            for group in [g for g in groups if g[0] & ids]:
                groups.remove(group)
                merged[0].update(group[0])
                merged[1].update(group[1])
            groups.append(merged)
        for _, members in groups:
            ordered = tuple(sorted(members, key=lambda o: units[o].origin.seq))
            for o in members:
                units[o].bundle = ordered

    # -- packing ---------------------------------------------------------------------
    def _pack(self, units: dict[str, _Unit], budget: int, recent: set[str]) -> dict[str, int]:
        """Origin id -> index of the chosen form. Greedy by value per token^alpha, then
        upgrade the most valuable compressed picks back to originals while budget lasts."""
        self._cost_forms(units.values(), budget)
        alpha = self.scorer.config.length_exponent
        chosen: dict[str, int] = {}
        days: set[str] = set()
        remaining = budget

        def cost(unit: _Unit, form: int) -> int:
            extra = self._header_cost[unit.day] if unit.day is not None and unit.day not in days else 0
            return unit.costs[form] + extra + 1  # +1: the joining newline

        def take(unit: _Unit, best: bool = False) -> bool:
            """Take `unit` with its whole bundle if it all fits (cheapest forms unless best)."""
            nonlocal remaining
            members = [units[o] for o in unit.bundle if o not in chosen]
            forms = [len(m.forms) - 1 if best else 0 for m in members]
            need = sum(cost(m, f) for m, f in zip(members, forms))
            if need > remaining:
                return False
            remaining -= need
            for m, f in zip(members, forms):
                chosen[m.origin.id] = f
                if m.day is not None:
                    days.add(m.day)
            return True

        pinned = [u for u in units.values() if u.origin.pinned]
        if not all(take(u, best=True) for u in pinned):
            need = sum(u.costs[-1] + 1 for u in pinned)
            raise BudgetError(
                f"pinned items need about {need} tokens but the budget is {budget}; raise budget= "
                "(or Budget.max_tokens), or unpin / shorten the pinned items"
            )
        for origin in recent:
            if origin in units and origin not in chosen:
                take(units[origin])
        order = sorted(units.values(), key=lambda u: -u.value / max(u.costs[0], 1) ** alpha)
        for u in order:
            if u.origin.id not in chosen and u.value > 0:
                take(u)
        for u in sorted((units[o] for o in chosen), key=lambda u: -u.value):
            best = len(u.forms) - 1
            extra = u.costs[best] - u.costs[chosen[u.origin.id]]
            if chosen[u.origin.id] != best and extra <= remaining:
                remaining -= extra
                chosen[u.origin.id] = best
        return chosen

    def _cost_forms(self, units, budget: int) -> None:
        units = list(units)
        todo = [f for u in units for f in u.forms if f.id not in self._line_cost]
        for form, n in zip(todo, self.counter.count_many([line(f) for f in todo])):
            self._line_cost[form.id] = n
        for u in units:
            u.day = day_of(u.origin)
            if u.day is not None and u.day not in self._header_cost:
                self._header_cost[u.day] = self.counter.count(header(u.day)) + 1
            if self._line_cost[u.forms[0].id] > budget // 2 and not u.origin.pinned:
                cut = self._truncated(u.forms[0], budget // 2)
                u.forms.insert(0, cut)
            u.costs = [self._line_cost[f.id] for f in u.forms]

    def _truncated(self, item: ContextItem, max_tokens: int) -> ContextItem:
        overhead = self.counter.count(line(item.evolve(text="")))
        text = self.counter.truncate(item.text, max(1, max_tokens - overhead), marker=_TRUNCATION_MARKER)
        cut = item.evolve(id=f"{item.origin_ids[0]}~cut{max_tokens}", text=text, tier=Tier.L2, source_ids=item.origin_ids)
        self._line_cost[cut.id] = self.counter.count(line(cut))
        return cut

    # -- result ----------------------------------------------------------------------
    def _result(self, units, chosen, budget, started, events) -> AssembledContext:
        picked = sorted(chosen, key=lambda o: (units[o].origin.timestamp, units[o].origin.seq))
        items = [units[o].forms[chosen[o]] for o in picked]
        text = render(items)
        tokens = self.counter.count(text)
        while tokens > budget:  # BPE merges across lines can differ from the sum of parts
            drop = min((o for o in picked if not units[o].origin.pinned), key=lambda o: units[o].value, default=None)
            if drop is None:
                raise BudgetError(f"pinned items alone render to {tokens} tokens > budget {budget}; raise the budget")
            for o in units[drop].bundle:  # a bundle leaves whole
                if o in chosen:
                    picked.remove(o)
                    del chosen[o]
            items = [units[o].forms[chosen[o]] for o in picked]
            text = render(items)
            tokens = self.counter.count(text)
        per_tier = {t.value: 0 for t in Tier}
        original_tokens = 0
        for o, item in zip(picked, items):
            tier = item.tier if item.is_derived else (Tier.L1 if units[o].tier == Tier.L1 else Tier.L3)
            per_tier[tier.value] += self._line_cost[item.id]
            original_tokens += self._line_cost[units[o].origin.id] if units[o].origin.id in self._line_cost else self._line_cost[item.id]
        used = sum(self._line_cost[i.id] for i in items)
        report = AssemblyReport(
            budget=budget,
            tokens=tokens,
            tokens_per_tier=per_tier,
            candidates=len(units),
            dropped=len(units) - len(items),
            compression_ratio=round(original_tokens / used, 4) if used else 1.0,
            seconds=round(time.perf_counter() - started, 6),
            scores={o: {**u.parts.as_dict(), "value": round(u.value, 4)} for o, u in units.items()},
            provenance={i.id: i.origin_ids for i in items},
            events=events,
        )
        origins = tuple(units[o].origin for o, i in zip(picked, items) if len(i.origin_ids) == 1)
        return AssembledContext(text=text, tokens=tokens, items=tuple(items), report=report, origins=origins)


_ZERO = ScoreParts(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _call_ids(item: ContextItem) -> set[str]:
    ids = {str(c) for c in item.metadata.get("tool_call_ids") or ()}
    if item.metadata.get("tool_call_id"):
        ids.add(str(item.metadata["tool_call_id"]))
    return ids
