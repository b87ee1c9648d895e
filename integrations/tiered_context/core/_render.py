"""How selected items become the text the model sees: chronological, dated, compact.

One line per item, ``speaker: text``; a date header line whenever the calendar day
changes (only when timestamps are real dates). The renderer is the single source of
truth for token costs, so what the packer paid for is what the model receives.

Attribution is shown once: content that starts with its own ``[date] Name:`` prefix (a
multi-party chat app writes who and when into the text) is not paid for twice. The
date goes when it is the item's own day (the day header above the line shows it; a
time of day, or another day, stays), and the name becomes the line's speaker when it
is the item's own speaker, or when the item names none and the name follows such a
date (``[date] Name:`` is unambiguous; a bare ``Update:`` is not a speaker and stays
after the role). A different name stays in the text (a quote). Nothing about who said what and when is lost, only its repetition::

    [8 May 2023]
    Caroline: I went to the support group.      <- "[2023-05-08] Caroline: I went ..."

It renders any item that exists, including records archived before input was checked:
a timestamp that is no date in years 1971..9999 (an ordering, or a millisecond epoch an
old release accepted) gets no date header, and a speaker that is not a str is ignored.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import datetime, timezone

from tiered_context.core._items import ContextItem
from tiered_context.core._validate import MAX_TIMESTAMP

__all__ = ["line", "attributed", "day_of", "header", "render", "speaker"]

#: Timestamps before this (1971-01-01) are treated as orderings, not dates.
_REAL_DATES_FROM = 365 * 86400

#: A leading "[date] " and/or "Name: " of an item's content (the name: at most four words,
#: starting with a letter; the date in brackets: ISO or as `header` writes it).
_PREFIX = re.compile(
    r"^[ \t]*(?:\[(?P<date>[^\]\n]{1,40})\][ \t]*)?"
    r"(?:(?P<name>[^\W\d][\w'.-]*(?:[ \t][\w'.-]+){0,3}):(?:[ \t]+|$))?"
)
_DATE_FORMATS = ("%Y-%m-%d", "%d %B %Y", "%d %b %Y", "%B %d, %Y", "%Y/%m/%d")


def _same_day(raw: str, day: str | None) -> bool:
    """True when `raw` (a bracketed prefix) is exactly the calendar day `day` (no time)."""
    if day is None:
        return False
    raw = raw.strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(raw, fmt).strftime("%Y-%m-%d") == day
        except ValueError:
            continue
    return False


def attributed(item: ContextItem) -> tuple[str, str]:
    """(speaker, text) of the item's line: a leading ``[date] Name:`` prefix of its content
    that repeats what the line already shows (the day header, the speaker) is lifted out
    (module docstring); anything it would add stays in the text."""
    who = speaker(item)
    text = item.text
    if not text or not (text[0] == "[" or ":" in text[:60]):
        return who, text
    m = _PREFIX.match(text)
    if m is None or not m.group(0):
        return who, text
    date, name = m.group("date"), m.group("name")
    if date is not None and not _same_day(date, day_of(item)):
        return who, text  # another day or a time of day: it stays, with whatever follows it
    if name is None and date is None:
        return who, text
    own = _own_speaker(item)
    if name is not None and (own != name.strip() if own is not None else date is None):
        # someone else's name (a quote), or "Word:" with nothing to say it is a speaker
        # ("Update: ..."): kept as written after the item's own speaker
        return (who, text) if date is None else (who, text[m.start("name"):])  # the same-day date goes
    rest = text[m.end():]
    if not rest.strip():
        return who, text  # nothing but the prefix: keep it whole
    return (name.strip() if name is not None else who), rest


def _own_speaker(item: ContextItem) -> str | None:
    for key in ("speaker", "name"):
        value = item.metadata.get(key)
        if value and isinstance(value, str):
            return value
    return None


def line(item: ContextItem) -> str:
    """``speaker: text`` (see `attributed`)."""
    who, text = attributed(item)
    return f"{who}: {text}"


def speaker(item: ContextItem) -> str:
    """Who an item is from: metadata ``speaker``, else ``name``, else its role."""
    return _own_speaker(item) or str(item.role)


def day_of(item: ContextItem) -> str | None:
    """The item's UTC calendar day, or None when its timestamp is not a real date."""
    ts = item.timestamp
    return _day(ts) if _REAL_DATES_FROM <= ts < MAX_TIMESTAMP else None  # False for NaN


@functools.lru_cache(maxsize=65_536)
def _day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d")


@functools.lru_cache(maxsize=4096)  # a summary asks it for every line of the day
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
