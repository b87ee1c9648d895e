"""How selected items become the text the model sees: chronological, dated, compact.

One line per item, ``speaker: text``; a date header line whenever the calendar day
changes (only when timestamps are real dates). The renderer is the single source of
truth for token costs, so what the packer paid for is what the model receives.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timezone

from tiered_context.core.items import ContextItem

__all__ = ["line", "day_of", "header", "render"]

#: Timestamps before this (1971-01-01) are treated as orderings, not dates.
_REAL_DATES_FROM = 365 * 86400


def line(item: ContextItem) -> str:
    speaker = item.metadata.get("speaker") or item.metadata.get("name") or item.role
    return f"{speaker}: {item.text}"


def day_of(item: ContextItem) -> str | None:
    return None if item.timestamp < _REAL_DATES_FROM else _day(item.timestamp)


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
