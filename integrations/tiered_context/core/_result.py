"""What an assembly gives back: `AssembledContext` (the text, the items, a report) and
`AssemblyReport` (the numbers a dashboard or a trace shows). `ContextAssembler` in
`core.assembler` makes them; every adapter reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tiered_context.core._budget import LadderEvent
from tiered_context.core._items import ContextItem

__all__ = ["AssembledContext", "AssemblyReport", "Scores"]


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
    scores: Mapping[str, dict[str, float]]  # every candidate's ScoreParts and value, by origin id (lazy)
    provenance: dict[str, tuple[str, ...]]  # included item id -> origin ids
    events: tuple[LadderEvent, ...] = ()
    #: included summary id -> its fact check (facts, kept, retention, missing names/numbers/dates)
    fact_checks: dict[str, dict] = field(default_factory=dict)
    #: candidates left out because they could not be scored or rendered (e.g. a record an
    #: older release archived with malformed metadata): item id -> a short reason.
    #: Empty in a healthy memory; the first time an item is skipped it is logged at warning.
    skipped: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line; `details()` gives every field."""
        tiers = ", ".join(f"{t}={n}" for t, n in self.tokens_per_tier.items() if n)
        extra = f", skipped={len(self.skipped)}" if self.skipped else ""
        extra += f", events={len(self.events)}" if self.events else ""
        return (f"AssemblyReport({self.tokens}/{self.budget} tok [{tiers}], candidates={self.candidates}, "
                f"dropped={self.dropped}, compression={self.compression_ratio:.2f}x, {self.seconds * 1000:.1f} ms{extra})")

    def details(self) -> dict[str, Any]:
        """Every field as plain data (scores materialised): for logs, traces and debugging."""
        return {
            "budget": self.budget, "tokens": self.tokens, "tokens_per_tier": dict(self.tokens_per_tier),
            "candidates": self.candidates, "dropped": self.dropped, "compression_ratio": self.compression_ratio,
            "seconds": self.seconds, "scores": {k: dict(v) for k, v in self.scores.items()},
            "provenance": dict(self.provenance), "events": [repr(e) for e in self.events],
            "fact_checks": dict(self.fact_checks), "skipped": dict(self.skipped),
        }


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
        """`metadata[key]` of each original present verbatim or as a 1:1 compressed form
        (values that cannot be in a set, such as lists, are left out)."""
        out = set()
        for o in self.origins:
            if key in o.metadata:
                try:
                    out.add(o.metadata[key])
                except TypeError:
                    continue
        return out

    def __repr__(self) -> str:
        tiers = ", ".join(f"{k}={v}" for k, v in self.report.tokens_per_tier.items() if v)
        return f"AssembledContext({self.tokens}/{self.report.budget} tokens, {len(self.items)} items; {tiers})"


class Scores(Mapping):
    """`AssemblyReport.scores`: each candidate's score parts and value as a dict, made when
    first read (most callers read a few; building them all was a fifth of an assembly).
    `units` maps origin ids to objects with `.parts` (`ScoreParts`) and `.value`."""

    __slots__ = ("_units", "_made")

    def __init__(self, units: Mapping[str, Any]) -> None:
        self._units = units
        self._made: dict[str, dict[str, float]] = {}

    def __getitem__(self, origin: str) -> dict[str, float]:
        made = self._made.get(origin)
        if made is None:
            unit = self._units[origin]
            made = self._made[origin] = {**unit.parts.as_dict(), "value": round(unit.value, 4)}
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._units)

    def __len__(self) -> int:
        return len(self._units)

    def __repr__(self) -> str:
        return f"<scores of {len(self._units)} candidates>"
