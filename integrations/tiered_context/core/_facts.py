"""Facts a summary must not lose: names, numbers and dates, and the check that finds
the ones it dropped.

`extract_facts(text)` finds them with regular expressions and a few word lists (no
model): capitalised names (not a sentence's first word unless it is a rare word;
acronyms; runs like "Game of Thrones"), numbers (digits, currency, percentages, number
words) and dates (month names with a day or year, weekdays, ISO and slashed dates,
"3 weeks ago", "last Friday"). `check_facts(originals, summary)` lists the facts of the
originals that the summary does not contain::

    check = check_facts(items, summary)
    check.retention            # share of the originals' facts found in the summary
    check.missing[0]           # Fact(kind='number', text='3 May', source_id=..., score=0.81)

The same word lists tell the compressor what it must never drop and which words carry
little information (fillers, hedges, function words).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from tiered_context.core._items import ContextItem

__all__ = ["Fact", "FactCheck", "FactKind", "check_facts", "extract_facts", "facts_of", "ordinary_opener"]


class FactKind(str, Enum):
    NAME = "name"
    NUMBER = "number"
    DATE = "date"


MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4,
    "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9,
    "sep": 9, "sept": 9, "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12, "dec": 12,
}
WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
#: Words that carry time: never dropped by the compressor (temporal questions need them).
TEMPORAL = frozenset(
    """yesterday today tonight tomorrow ago last next previous upcoming weekend week weeks month
    months year years day days decade decades hour hours minute minutes morning afternoon evening
    night nights since until recently soon earlier later before after during annual annually daily
    weekly monthly yearly spring summer autumn fall winter christmas easter birthday anniversary
    o'clock am pm""".split()
) | WEEKDAYS | frozenset(m for m in MONTHS if len(m) > 3)
NUMBER_WORDS = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred hundreds thousand thousands million millions billion dozen dozens half
    twice thrice once first second third fourth fifth sixth seventh eighth ninth tenth
    couple few several""".split()
)
#: Words that flip a sentence's meaning: dropping them inverts a fact.
NEGATIONS = frozenset(
    """not no never none nobody nothing nowhere neither nor without cannot can't don't doesn't
    didn't won't wouldn't isn't aren't wasn't weren't haven't hasn't hadn't shouldn't couldn't
    mustn't ain't n't""".split()
)
#: Word classes, dropped in this order before any content word (English; other languages
#: fall back to surprisal alone). Within a class the more frequent word goes first.
_FILLERS = frozenset("""oh ohh wow hey hi hello haha hahaha lol yeah yep yup yes um uh umm well hmm ah aw aww omg
    thanks thank please sure anyway bye goodbye cya congrats nope""".split())
_HEDGES = frozenset("""so really very super just totally pretty quite actually definitely absolutely literally truly
    kinda sorta basically even still too also honestly seriously frankly""".split())
_FUNCTION = frozenset("""i you he she it we they me him her us them my your his its our their mine yours this that
    these those there here a an the is am are was were be been being have has had do does did will would can
    could should might must shall i'm it's that's i've you're we're they're i'll i'd he's she's there's what's
    let's you've we've they've you'll we'll it'll gonna wanna got get gets 's 've 'm 're 'll 'd who which what
    some any all""".split())
_GLUE = frozenset("""and or of in on at for to with from by about into through over under between than as like
    but because if when while after before during""".split())
#: Evaluative and generic words: kept after glue words but dropped before other content.
_GENERIC = frozenset("""amazing awesome great good nice cool fun lovely wonderful fantastic incredible glad
    happy proud beautiful special best better favorite fave important hard tough interesting inspiring
    rewarding exciting excited thing things stuff way time times day feel feels felt feeling think
    thought know knew see saw want wanted need needed make made making go went going gone take took come
    came say said tell told look looks looking keep kept try tried trying help helps helped let lets
    sounds sound seems seem mean means people everyone someone something anything everything""".split())
_NOT_NAMES = frozenset("i i'm i've i'll i'd ok okay".split())
#: Sentence-opening words rarer than this are names unless they belong to a word class above.
NAME_START_FREQUENCY = 1e-4
#: A capitalised first word of a sentence counts as a name only if rarer than this.
NAME_MAX_FREQUENCY = 2e-5

_MONTH_RE = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
             r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_DAY_RE = r"(?:[0-3]?\d)(?:st|nd|rd|th)?"
# Every alternative of `_DATE` and `_NUMBER` starts a word (or a currency sign): the
# `(?<!\w)` and first-letter guards let the scanner skip the inside of words at once
# (3x faster on long turns than a `\b` in front of each alternative; the same matches).
_DATE = re.compile(
    r"(?<!\w)(?=[\daAcCdDeEfFjJlLmMnNoOsStTwW])(?:"
    r"\d{4}-\d{1,2}-\d{1,2}\b"
    r"|\d{1,2}/\d{1,2}(?:/\d{2,4})?\b"
    rf"|{_DAY_RE}\s+(?:of\s+)?{_MONTH_RE}(?:,?\s+\d{{4}})?\b"
    rf"|{_MONTH_RE}\s+{_DAY_RE}(?:,?\s+\d{{4}})?\b"
    rf"|{_MONTH_RE}\s+\d{{4}}\b"
    r"|(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day\b"
    r"|(?i:(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|few|couple of)\s+"
    r"(?:days?|weeks?|months?|years?)\s+ago\b)"
    r"|(?i:(?:last|next|this)\s+(?:week(?:end)?|month|year|summer|winter|spring|fall|autumn|"
    r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day)\b)"
    r"|(?:1[89]|20)\d\d\b)"
)
_AMOUNT = r"\d+(?:[.,:]\d+)*(?:\s?%|k\b|m\b|st\b|nd\b|rd\b|th\b)?"
_NUMBER_WORDS = frozenset(w for w in NUMBER_WORDS if w not in {"once", "first", "second", "few", "several", "couple", "half"})


def _prefix_tree(words: Iterable[str]) -> str:
    """One regex alternation of `words` as a prefix tree ("six|sixteen|sixty" becomes
    ``six(?:teen|ty)?``): the engine reads a word's letters once instead of trying every
    word that shares its first letters."""
    tails: dict[str, list[str]] = {}
    for word in words:
        tails.setdefault(word[0], []).append(word[1:])
    out = []
    for head, rest in sorted(tails.items()):
        if len(rest) == 1:
            out.append(re.escape(head + rest[0]))
            continue
        sub = _prefix_tree(r for r in rest if r)
        out.append(re.escape(head) + (f"(?:{sub})?" if "" in rest else f"(?:{sub})"))
    return "|".join(out)


# An amount (after a currency sign or not), or a whole number word: word starts only, and
# of those only the ones whose first character can begin one (2x faster on long turns
# than matching every word and looking it up).
_NUMBER = re.compile(rf"[$€£¥]\s?{_AMOUNT}|(?<!\w)(?=[\d{''.join(sorted({w[0] for w in _NUMBER_WORDS}))}])"
                     rf"(?:{_AMOUNT}|(?:{_prefix_tree(_NUMBER_WORDS)})(?!\w))", re.IGNORECASE)


_WORD = re.compile(r"[^\W\d_][\w'’-]*|&")
_CONNECTORS = frozenset({"of", "the", "de", "da", "del", "van", "von", "der", "le", "la", "&"})
_WORD_SUFFIXES = ("ing", "ed", "ly", "tion", "ness", "ment", "ful", "ous", "ive", "able", "ity", "ies")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n\"“(]\s*|\s[-–—]\s)$")


@dataclass(frozen=True, slots=True)
class Fact:
    """One name, number or date found in an original item."""

    kind: FactKind
    text: str  # as written
    source_id: str = ""
    score: float = 0.0  # in [0, 1]: how much the fact matters (rarity and the item's importance)

    @property
    def key(self) -> str:
        return _key(self.text)


@dataclass(frozen=True, slots=True)
class FactCheck:
    """The result of checking one summary against the originals it stands for."""

    total: int
    kept: int
    missing: tuple[Fact, ...] = ()

    @property
    def retention(self) -> float:
        return self.kept / self.total if self.total else 1.0

    def high(self, threshold: float) -> tuple[Fact, ...]:
        """Missing facts scoring at least `threshold`."""
        return tuple(f for f in self.missing if f.score >= threshold)

    def as_dict(self, *, limit: int = 20) -> dict:
        """A JSON-friendly view (for reports, traces and the summary's metadata)."""
        return {
            "facts": self.total,
            "kept": self.kept,
            "retention": round(self.retention, 4),
            "missing": [f"{f.kind.value}:{f.text}" for f in sorted(self.missing, key=lambda f: -f.score)[:limit]],
        }


@functools.lru_cache(maxsize=16)
def frequencies(lang: str) -> dict[str, float]:
    """wordfreq's word -> frequency table for `lang` (English when it has none), loaded once."""
    from wordfreq import get_frequency_dict

    try:
        return get_frequency_dict(lang, wordlist="best")
    except (LookupError, ValueError):
        return get_frequency_dict("en", wordlist="best")


def _english() -> dict[str, float]:
    return frequencies("en")


def extract_facts(text: str) -> list[tuple[FactKind, str, int, int]]:
    """`(kind, text, start, end)` of every name, number and date in `text`, in order,
    without overlaps (a date wins over the number inside it)."""
    return list(_facts(text))


@functools.lru_cache(maxsize=4096)  # a progressive summary is checked again at every step that extends it
def _facts(text: str) -> tuple[tuple[FactKind, str, int, int], ...]:
    found: list[tuple[FactKind, str, int, int]] = []
    taken = bytearray(len(text) + 1)  # 1 where a fact already covers the character

    def take(a: int, b: int) -> bool:
        if taken.find(1, a, b) >= 0:
            return False
        taken[a:b] = b"\x01" * (b - a)
        return True

    for m in _DATE.finditer(text):
        take(*m.span())
        found.append((FactKind.DATE, m.group(), m.start(), m.end()))
    for m in _NUMBER.finditer(text):
        if m.group().strip() and take(*m.span()):
            found.append((FactKind.NUMBER, m.group().strip(), m.start(), m.end()))
    for start, end, name in _name_runs(text):
        if take(start, end):
            found.append((FactKind.NAME, name, start, end))
    found.sort(key=lambda f: f[2])
    return tuple(found)


def _name_runs(text: str) -> list[tuple[int, int, str]]:
    """Runs of capitalised words ("Harry Potter", "Game of Thrones", "LGBTQ"), skipping
    common words that only open a sentence ("Thanks", "The") and months and weekdays."""
    runs: list[tuple[int, int, str]] = []
    run: list[re.Match] = []

    def close() -> None:
        while run and run[-1].group().lower() in _CONNECTORS:
            run.pop()
        if run:
            start, end = run[0].start(), run[-1].end()
            name = text[start:end].rstrip(".'’-")
            if name:
                runs.append((start, start + len(name), name))
        run.clear()

    last_end = -1
    for m in _WORD.finditer(text):
        word = m.group()
        if run:
            gap = text[last_end:m.start()]
            if gap.strip() or "\n" in gap:
                close()
        last_end = m.end()
        capital = word[0].isupper()
        if not capital and not run:  # most words: lower-case outside a name
            continue
        lower = word.lower().replace("’", "'")
        if run and not capital and lower in _CONNECTORS:
            run.append(m)
            continue
        if (not capital or lower in _NOT_NAMES or lower in MONTHS or lower in WEEKDAYS
                or (not run and _lead(text, m.start()) and ordinary_opener(lower))):
            if run:
                close()
            continue
        run.append(m)
    close()
    return runs


def ordinary_opener(lower: str) -> bool:
    """A capitalised sentence opener that is an ordinary word, not a name."""
    if lower in _FILLERS or lower in _HEDGES or lower in _FUNCTION or lower in _GLUE or lower in _GENERIC:
        return True
    freq = _english().get(lower, 0.0)
    return freq > NAME_START_FREQUENCY or (freq > NAME_MAX_FREQUENCY and lower.endswith(_WORD_SUFFIXES))


def _lead(text: str, start: int) -> bool:
    """Whether position `start` opens a sentence (so capitalisation says nothing)."""
    return bool(_SENTENCE_START.search(text[max(0, start - 4):start]))


_KEY_PUNCT = re.compile(r"[^\w%$€£¥]+")
_ORDINAL_END = re.compile(r"(?<=\d)(st|nd|rd|th)$")


@functools.lru_cache(maxsize=65_536)  # a fact's text recurs in every check of the items that hold it
def _key(text: str) -> str:
    return " ".join(_KEY_PUNCT.sub(" ", text.lower().replace("’", "'")).split())


@functools.lru_cache(maxsize=65_536)
def _date_parts(text: str) -> frozenset[str]:
    parts = set()
    for word in _key(text).split():
        word = _ORDINAL_END.sub("", word)
        if word in MONTHS:
            parts.add(f"m{MONTHS[word]}")
        elif word.isdecimal():  # not isdigit(): "³" is a digit int() rejects
            parts.add(str(int(word)))
        else:
            parts.add(word)
    return frozenset(parts)


@functools.lru_cache(maxsize=65_536)  # names recur across a conversation
def _rarity(fact_text: str) -> float:
    words = [w for w in _key(fact_text).split() if w]
    if not words:
        return 0.0
    english = _english()
    bits = [-math.log2(english.get(w, 1e-8)) if not w.isdigit() else 18.0 for w in words]
    return min(1.0, max(bits) / 24.0)


def facts_of(item: ContextItem) -> list[Fact]:
    """The facts of one item, each scored by its rarity and the item's importance."""
    return list(_scored_facts(item.text, item.id, item.importance))


@functools.lru_cache(maxsize=4096)  # an item is checked again when a summary is redone without the items kept
def _scored_facts(text: str, source_id: str, importance: float) -> tuple[Fact, ...]:
    out = []
    for kind, fact, _, _ in _facts(text):
        rarity = 0.9 if kind != FactKind.NAME else _rarity(fact)
        out.append(Fact(kind, fact, source_id, round(0.5 * rarity + 0.5 * importance, 4)))
    return tuple(out)


def check_facts(originals: Iterable[ContextItem], summary: str | ContextItem) -> FactCheck:
    """Which names, numbers and dates of `originals` the `summary` does not contain.

    A name or number is kept when its normalised form appears in the summary as whole
    words; a date when all its parts (day, month, year) appear, in any format.
    """
    text = summary.text if isinstance(summary, ContextItem) else summary
    haystack = f" {_key(text)} "
    words = set(haystack.split())
    date_words = _date_parts(text)
    seen: dict[tuple[FactKind, str], Fact] = {}
    for item in originals:
        for fact in facts_of(item):
            k = (fact.kind, fact.key)
            if k[1] and (k not in seen or fact.score > seen[k].score):
                seen[k] = fact
    missing = []
    for (kind, key), fact in seen.items():
        if kind == FactKind.DATE:
            ok = _date_parts(fact.text) <= date_words
        elif " " in key:
            ok = f" {key} " in haystack
        else:
            ok = key in words
        if not ok:
            missing.append(fact)
    return FactCheck(total=len(seen), kept=len(seen) - len(missing), missing=tuple(missing))
