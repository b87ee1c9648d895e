"""Packing and rendering for `ContextAssembler`: the scored candidates -> the result.

The candidates (`_Unit`: an original, its forms cheapest first, its value, its bundle)
are costed per rendered line (`_cost_forms`; an item longer than `MAX_ITEM_SHARE` of the
budget is also offered truncated), packed greedily by value per token^alpha under the
hard budget with bundles kept whole and summaries excluding their own originals
(`_pack`), then rendered in chronological order and reported (`_result`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tiered_context.core._items import ContextItem, Tier
from tiered_context.core._render import day_of, header, line, render
from tiered_context.core._result import AssembledContext, AssemblyReport, Scores
from tiered_context.core._scoring import ScoreParts
from tiered_context.errors import BudgetError

__all__ = ["MAX_ITEM_SHARE", "Packer"]

_TRUNCATION_MARKER = " […truncated; the original is archived]"
#: One item may take at most this share of the budget; a longer one is offered truncated.
MAX_ITEM_SHARE = 0.5


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
    summary: bool = False  # stands for many originals: never counts as covering them


class _Units(dict):
    """The candidates of one assembly by origin id, and the items skipped on the way in."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, str] = {}  # item id -> why it could not be scored or rendered


class Packer:
    """The packing and result steps of `ContextAssembler` (a mixin: they use the
    assembler's `counter`, `scorer` and its caches of line and header costs)."""

    # -- packing ---------------------------------------------------------------------
    def _pack(self, units: dict[str, _Unit], budget: int, recent: set[str]) -> dict[str, int]:
        """Origin id -> index of the chosen form. Greedy by value per token^alpha, then
        upgrade the most valuable compressed picks back to originals while budget lasts."""
        self._cost_forms(units.values(), budget)
        alpha = self.scorer.config.length_exponent
        chosen: dict[str, int] = {}
        days: set[str] = set()
        remaining = budget

        blocked: set[str] = set()  # originals a chosen summary stands for

        def take(unit: _Unit, alone: bool = False) -> bool:
            """Take `unit` with its whole bundle if it all fits (cheapest forms; pinned
            members whole). A summary and its own originals exclude each other."""
            nonlocal remaining
            members = [units[o] for o in ((unit.origin.id,) if alone else unit.bundle) if o not in chosen]
            if unit.summary:
                sources = set(unit.origin.source_ids)
                if sources & blocked or any(o in chosen for o in sources):
                    return False
            elif any(m.origin.id in blocked for m in members):
                return False
            forms = [len(m.forms) - 1 if m.origin.pinned else 0 for m in members]
            need, new_days = 0, set()
            for m, f in zip(members, forms):
                need += m.costs[f] + 1  # +1: the joining newline
                if m.day is not None and m.day not in days and m.day not in new_days:
                    need += self._header_cost[m.day]
                    new_days.add(m.day)
            if need > remaining:
                return False
            remaining -= need
            for m, f in zip(members, forms):
                chosen[m.origin.id] = f
            days.update(new_days)
            if unit.summary:
                blocked.update(unit.origin.source_ids)
            return True

        pinned = [u for u in units.values() if u.origin.pinned]
        # a pinned item comes with its tool-call partners when they fit, else alone
        if not all(take(u) or take(u, alone=True) for u in pinned):
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
            if self._line_cost[u.forms[0].id] > int(budget * MAX_ITEM_SHARE) and not u.origin.pinned:
                cut = self._truncated(u.forms[0], int(budget * MAX_ITEM_SHARE))
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
            scores=Scores(units),
            provenance={i.id: i.origin_ids for i in items},
            events=events,
            fact_checks={i.id: dict(i.metadata.get("fact_check") or {}) for o, i in zip(picked, items) if units[o].summary},
            skipped=dict(units.skipped),
        )
        # coverage: originals present verbatim or as a 1:1 form; a summary covers none of its sources
        origins = tuple(units[o].origin for o, i in zip(picked, items) if len(i.origin_ids) == 1 and not units[o].summary)
        return AssembledContext(text=text, tokens=tokens, items=tuple(items), report=report, origins=origins)
