"""The span of time a query points at: "two weeks ago", "last Saturday", "in May 2023",
"on 7 July, 2023".

The assembler makes the relevant items from that span worth more
(`ScoringConfig.time_match_boost`). Every window is generous, since people round and
tell of an event after it happened: a day is the day before to two days after, a month
runs a week past its end (the chat on 2 February that says "last week I finished it"
is about January).
"""

from __future__ import annotations

import calendar
import re
import time

__all__ = ["time_window"]

_DAY = 86400.0
_UNITS = {"day": _DAY, "week": 7 * _DAY, "month": 30 * _DAY, "year": 365 * _DAY}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
            "eight": 8, "nine": 9, "ten": 10, "couple of": 2, "few": 3}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_AGO = re.compile(r"\b(\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|couple of|few)\s+"
                  r"(day|week|month|year)s?\s+ago\b", re.IGNORECASE)
_LAST = re.compile(r"\b(yesterday|last\s+(week|weekend|month|year|" + "|".join(_WEEKDAYS) + r"))\b", re.IGNORECASE)

_MONTHS = {name: k for k, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name: k for k, name in enumerate(calendar.month_abbr) if name and name != "May"})
_MONTHS["Sept"] = 9
# Capitalised names only ("may" is a verb); abbreviations may end with a dot.
_MONTH = r"(?P<m>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\b\.?"
_YEAR = r"(?P<y>(?:19|20)\d\d)\b"
_DAY_NUM = r"(?P<d>\d{1,2})(?:st|nd|rd|th)?\b"
_NO_YEAR_AFTER = r"(?!,?\s*\d)"
#: Dates with their year ("13 October, 2023", "October 13th 2023", "2023-10-13").
_FULL = (re.compile(_DAY_NUM + r"\s+(?:of\s+)?" + _MONTH + r",?\s*" + _YEAR),
         re.compile(r"\b" + _MONTH + r"\s+" + _DAY_NUM + r",?\s*" + _YEAR),
         re.compile(r"\b(?P<y>(?:19|20)\d\d)-(?P<m>\d\d)-(?P<d>\d\d)\b"))
_MONTH_YEAR = re.compile(r"\b" + _MONTH + r",?\s+" + _YEAR)
#: Days without their year ("Aug 15th", "the 3rd of June").
_DAY_ONLY = (re.compile(r"\b" + _MONTH + r"\s+" + _DAY_NUM + _NO_YEAR_AFTER),
             re.compile(r"\b" + _DAY_NUM + r"\s+(?:of\s+)?" + _MONTH + _NO_YEAR_AFTER))
_BARE_MONTH = re.compile(r"\b(?:in|on|during|since|until|by|of|early|late|mid|this|last)[\s-]+(?:the\s+)?"
                         r"(?:(?:beginning|start|end|middle)\s+of\s+)?" + _MONTH + _NO_YEAR_AFTER)
_BARE_YEAR = re.compile(r"\b(?:in|of|during|since|by|early|late|mid)[\s-]+" + _YEAR)


def time_window(query: str, now: float | None) -> tuple[float, float] | None:
    """The span of POSIX time (UTC) `query` points at, or None when it names none.

    An absolute date ("on 7 July, 2023", "December 1,2023", "2023-07-31", "in May 2023",
    "in 2023") needs no `now`; several make one span from the first to the last. A
    relative date ("two weeks ago", "last Saturday", "yesterday", "last month") and a
    date without its year ("in June", "on Aug 15th": the latest one before `now`) are
    seen from `now`, and name nothing without it.

    >>> start, end = time_window("What did she paint on 13 October, 2023?", None)
    >>> time.strftime("%Y-%m-%d", time.gmtime(start)), time.strftime("%Y-%m-%d", time.gmtime(end))
    ('2023-10-12', '2023-10-16')
    """
    spans = _absolute(query, now)
    if spans:
        return min(s for s, _ in spans), max(e for _, e in spans)
    return _relative(query, now) if now is not None else None


def _day(year: int, month: int, day: int) -> tuple[float, float] | None:
    if year < 1 or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    start = calendar.timegm((year, month, day, 0, 0, 0))
    return start - _DAY, start + 3 * _DAY


def _month(year: int, month: int) -> tuple[float, float] | None:
    if year < 1:  # "in June" asked in January of year 1
        return None
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    return start - _DAY, start + (calendar.monthrange(year, month)[1] + 7) * _DAY


def _year(year: int) -> tuple[float, float]:
    return calendar.timegm((year, 1, 1, 0, 0, 0)) - _DAY, calendar.timegm((year + 1, 1, 8, 0, 0, 0))


def _latest_year(month: int, day: int, now: float) -> int:
    """The year of the latest `month`/`day` not after `now` (0 before year 1)."""
    year = int(time.gmtime(now).tm_year)
    if calendar.timegm((year, month, min(day, 28), 0, 0, 0)) > now:
        year -= 1
    return year


def _month_of(m: re.Match[str]) -> int:
    raw = m.group("m")
    return int(raw) if raw.isdigit() else _MONTHS[raw]


def _absolute(query: str, now: float | None) -> list[tuple[float, float]]:
    """The spans of the most precise kind of date `query` names: whole dates, else months
    of a year, else (from `now`) days and months without their year, else years."""
    spans = [_day(int(m["y"]), _month_of(m), int(m["d"])) for p in _FULL for m in p.finditer(query)]
    if not spans:
        spans = [_month(int(m["y"]), _month_of(m)) for m in _MONTH_YEAR.finditer(query)]
    if not spans and now is not None:
        spans = [_day(_latest_year(_month_of(m), int(m["d"]), now), _month_of(m), int(m["d"]))
                 for p in _DAY_ONLY for m in p.finditer(query)]
        if not spans:
            spans = [_month(_latest_year(_month_of(m), 1, now), _month_of(m)) for m in _BARE_MONTH.finditer(query)]
    if not spans:
        spans = [_year(int(m["y"])) for m in _BARE_YEAR.finditer(query)]
    return [s for s in spans if s is not None]


def _relative(query: str, now: float) -> tuple[float, float] | None:
    """A relative date seen from `now` (a week ago: 3.5 days either side)."""
    m = _AGO.search(query)
    if m:
        raw = m.group(1).lower()
        n = int(raw) if raw.isdigit() else _NUMBERS.get(raw, 1)
        unit = _UNITS[m.group(2).lower()]
        center, half = now - n * unit, max(_DAY, unit / 2)
        return center - half, center + half
    m = _LAST.search(query)
    if not m:
        return None
    word = (m.group(2) or m.group(1)).lower()
    if word == "yesterday":
        return now - 2 * _DAY, now
    if word in _WEEKDAYS:
        today = int(((now // _DAY) + 3) % 7)  # 1970-01-01 was a Thursday (index 3)
        back = (today - _WEEKDAYS.index(word)) % 7 or 7
        start = (now // _DAY - back) * _DAY
        return start - _DAY / 2, start + 1.5 * _DAY
    if word == "weekend":
        today = int(((now // _DAY) + 3) % 7)
        back = (today - 5) % 7 or 7  # the last Saturday
        start = (now // _DAY - back) * _DAY
        return start - _DAY / 2, start + 2.5 * _DAY
    unit = _UNITS[word]
    return now - 1.5 * unit, now - 0.5 * unit + _DAY
