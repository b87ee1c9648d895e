"""How selected items become the text the model sees: chronological, dated, compact.

One line per item, ``speaker: text``; a date header line whenever the calendar day
changes (only when timestamps are real dates). The renderer is the single source of
truth for token costs, so what the packer paid for is what the model receives.

It renders any item that exists, including records archived before input was checked:
a timestamp that is no date in years 1971..9999 (an ordering, or a millisecond epoch an
old release accepted) gets no date header, and a speaker that is not a str is ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timezone

from tiered_context.core._items import ContextItem
from tiered_context.core._validate import MAX_TIMESTAMP

__all__ = ["line", "day_of", "header", "render", "speaker"]

#: Timestamps before this (1971-01-01) are treated as orderings, not dates.
_REAL_DATES_FROM = 365 * 86400


def line(item: ContextItem) -> str:
    return f"{speaker(item)}: {item.text}"


def speaker(item: ContextItem) -> str:
    """Who an item is from: metadata ``speaker``, else ``name``, else its role."""
    for key in ("speaker", "name"):
        value = item.metadata.get(key)
        if value and isinstance(value, str):
            return value
    return str(item.role)


def day_of(item: ContextItem) -> str | None:
    """The item's UTC calendar day, or None when its timestamp is not a real date."""
    ts = item.timestamp
    return _day(ts) if _REAL_DATES_FROM <= ts < MAX_TIMESTAMP else None  # False for NaN


@functools.lru_cache(maxsize=65_536)
def _day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d")


def header(day: str) -> str:
    return "[" + datetime.strptime(day, "%Y-%m-%d").strftime("%-d %B %Y") + "]"


def render(items: Sequence[ContextItem]) -> str:
    """`items` in chronological order with day headers; items must be sorted already."""
    out: list[str] = []
    current: str | None = None
    for item in items:
        day = day_of(item)
        if day is not None and day != current:
            out.append(header(day))
            current = day
        out.append(line(item))
    return "\n".join(out)
