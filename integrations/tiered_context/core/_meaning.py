"""A meaning signature: the parts of a prompt an embedding blurs and an answer depends on.

Sentence embeddings place "flights from Paris to Lisbon" and "flights from Lisbon to
Paris" (or "is it safe" and "is it unsafe", "costs 100 euros" and "costs 9000 euros",
"weather in Oslo today" and "... tomorrow") almost on top of each other, yet each pair
needs a different answer. A semantic cache therefore checks, after the vector match,
that the cached prompt and the new one agree on:

- **numbers**: digits ("9,000", "1.5", "10k", "5pm") and cardinal / ordinal number words
  ("twenty-five", "a hundred", "third"), compared as values, in any order;
- **dates and times**: month and weekday names, relative-date words (today, tomorrow,
  yesterday, tonight, morning/evening, weekend, "ago") and their modifiers ("next week" is
  not "last week"), in any order;
- **negation**: the number of negators (not, no, never, none, nothing, nor, without, n't
  contractions...) and no word that is the other prompt's word with an antonym prefix
  (un-, in-, im-, il-, ir-, dis-, non-: "unsafe" against "safe");
- **named entities and their order**: capitalised words (not sentence-initial function
  words, not "I"), compared in order of first appearance over both prompts' entities,
  so "from Paris to Lisbon" is not "from Lisbon to Paris" and "Oslo" is not "Bergen";
  a prompt typed in lower case is matched against the other prompt's entities.

Paraphrases that keep all of these still match. Everything here is deterministic, uses
only the standard library and closed word classes of English (numerals, temporal words,
negators, function words); no model, no tuned lists.

>>> same_meaning("weather in Oslo today", "what's the weather like in Oslo today?")
True
>>> meaning_conflicts("weather in Oslo today", "weather in Oslo tomorrow")
('dates differ: today vs tomorrow',)
>>> same_meaning("flights from Paris to Lisbon", "flights from Lisbon to Paris")
False
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from decimal import Decimal, InvalidOperation

__all__ = ["MeaningSignature", "meaning_conflicts", "same_meaning", "signature"]

# -- closed word classes ------------------------------------------------------------------
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000,
           "trillion": 1_000_000_000_000}
_ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())}
_ORDINALS.update({"twentieth": 20, "thirtieth": 30, "hundredth": 100, "thousandth": 1000})
_DOZEN = {"dozen": 12}
# digit suffixes: multipliers, and markers that are part of a time
_MULTIPLIER_SUFFIX = {"k": 1_000, "mn": 1_000_000, "bn": 1_000_000_000}  # not "m": metres, minutes
_TIME_SUFFIX = {"am", "pm", "a.m", "p.m"}
_ORDINAL_SUFFIX = {"st", "nd", "rd", "th"}

_MONTHS = {m: m for m in "january february march april may june july august september october november december".split()}
_MONTHS.update({"jan": "january", "feb": "february", "mar": "march", "apr": "april", "jun": "june", "jul": "july",
                "aug": "august", "sep": "september", "sept": "september", "oct": "october", "nov": "november",
                "dec": "december"})
_WEEKDAYS = {d: d for d in "monday tuesday wednesday thursday friday saturday sunday".split()}
_WEEKDAYS.update({"tue": "tuesday", "tues": "tuesday", "thu": "thursday", "thur": "thursday", "thurs": "thursday",
                  "fri": "friday"})
_WEEKDAYS_CAPITALISED_ONLY = {"mon": "monday", "wed": "wednesday", "sat": "saturday", "sun": "sunday"}
_AMBIGUOUS_MONTHS = {"may", "march", "mar", "jan", "dec"}  # also ordinary words / names: need a cue
_DEICTIC_DAYS = {"today": "today", "tonight": "tonight", "tomorrow": "tomorrow", "yesterday": "yesterday",
                 "tmrw": "tomorrow", "tmr": "tomorrow", "tonite": "tonight", "overmorrow": "overmorrow"}
_DAY_PARTS = {"morning", "afternoon", "evening", "night", "noon", "midnight", "midday", "dawn", "dusk"}
_SEASONS = {"summer", "winter", "autumn"}
_PERIODS = {"day", "week", "weekend", "fortnight", "month", "quarter", "year", "decade", "century",
            "season", "semester"}
_RELATIVE_MODIFIERS = {"next", "last", "this", "coming", "previous", "past", "following", "current"}
_RELATIVE_MARKERS = {"ago", "hence"}

_NEGATORS = {"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "cannot", "without",
             "nope", "nah", "noone"}
_APOSTROPHELESS_NEGATIONS = {"dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "cant", "couldnt",
                             "wouldnt", "shouldnt", "wont", "hasnt", "havent", "hadnt", "aint", "mustnt", "neednt",
                             "shant", "mightnt"}
_ANTONYM_PREFIXES = ("non", "dis", "un", "in", "im", "il", "ir")
_JOINED_PREFIXES = {"non", "un", "anti"}  # "non-smoking" is one (negated) word, "Paris-Lisbon" two

# English function words (determiners, pronouns, wh-words, auxiliaries and modals,
# prepositions, conjunctions, common discourse words): capitalised at a sentence start
# they are not names
_FUNCTION_WORDS = set("""
a an the this that these those my your our his her its their whose which what who whom whats where when why how
whether if then than so because as while though although unless until since before after during about above below
over under into onto upon from to of in on at by for with without within between among through across against
around near behind beyond toward towards per via and or but nor yet also too either neither both each every all any
some many much more most few several no not none other another such same own only just even still already again
ever very quite rather really here there now i me we us you he him she it they them myself yourself ourselves
themselves itself himself herself is am are was were be been being do does did done have has had having will would
shall should can could may might must need ought let lets please hi hello hey ok okay yes yeah well oh thanks thank
is there's it's i'm i'd i'll i've you're we're they're what's where's who's how's let's don't can't
""".split())
# words that follow an imperative verb ("Tell me", "Book a", "List all"): a sentence-initial
# capitalised word before one of these is a verb, not a name
_VERB_CUES = set("""
a an the this that these those my your our his her its their me us him them it all every some any each both few
several many much what which who whom whose how why where when whether if out up down
""".split()) | set(_UNITS) | set(_TENS)  # "List three ...", "Name five ..."
_PRONOUN_SUBJECTS = {"i", "we", "you", "he", "she", "it", "they"}

# -- tokenising ---------------------------------------------------------------------------
_TOKEN = re.compile(
    r"(?P<num>\d+(?:[.,:]\d+)*)(?P<suffix>[^\W\d_]+(?:\.[^\W\d_]\.?)?)?"  # 9,000  1.5  10:30  10k  5pm  3rd
    r"|(?P<word>[^\W\d_]+(?:['’\-][^\W\d_]+)*)"  # words, with internal apostrophes and hyphens
    r"|(?P<stop>[.!?;:\n]+)"  # sentence (or clause / line) boundaries
)


@dataclass(frozen=True, slots=True)
class _Word:
    text: str  # as written (apostrophes normalised)
    low: str
    initial: bool  # first word of a sentence / line


def _words(text: str) -> tuple[list[_Word], list[tuple[str, str | None, int]]]:
    """The words (sentence-initial flagged) and the digit groups (with suffix and word index)."""
    words: list[_Word] = []
    digits: list[tuple[str, str | None, int]] = []
    initial = True
    for m in _TOKEN.finditer(text.replace("’", "'")):
        if m.group("stop") is not None:
            initial = True
            continue
        if m.group("num") is not None:
            digits.append((m.group("num"), m.group("suffix"), len(words)))
            initial = False
            continue
        raw = m.group("word")
        parts = raw.split("-")
        if len(parts) > 1 and parts[0].lower() in _JOINED_PREFIXES:
            parts = [parts[0] + parts[1], *parts[2:]]
        for part in parts:
            if part.lower().endswith("'s") and not part.lower().endswith("n't"):
                part = part[:-2]  # possessive / "it's" handled as a function word below
            if part:
                words.append(_Word(part, part.lower(), initial))
                initial = False
    return words, digits


# -- the signature ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MeaningSignature:
    """What must agree between two prompts for one's answer to serve the other.

    `numbers` and `dates` are sorted canonical values; `negations` counts negators;
    `entities` are the lower-cased capitalised words inside sentences (names) in order of
    first appearance, `initials` the capitalised sentence-initial words that may be names;
    `words` is every word (lower case) in order, so another prompt's names can be found in
    this one even where it writes them in lower case or at a sentence start.
    """

    numbers: tuple[str, ...]
    dates: tuple[str, ...]
    negations: int
    entities: tuple[str, ...]
    initials: tuple[str, ...]
    words: tuple[str, ...]


@lru_cache(maxsize=64)  # a lookup checks one new prompt against several cached ones
def signature(text: str) -> MeaningSignature:
    """The meaning signature of `text` (see the module docstring for what it holds)."""
    words, digits = _words(text)
    numbers = [*_digit_values(digits, words), *_word_numbers(words, {at for _, _, at in digits})]
    return MeaningSignature(
        numbers=tuple(sorted(numbers)),
        dates=tuple(sorted(_dates(words, digits))),
        negations=sum(1 for w in words if _is_negator(w.low)),
        entities=_first_seen(w.low for i, w in enumerate(words) if _entity_kind(words, i) == "name"),
        initials=_first_seen(w.low for i, w in enumerate(words) if _entity_kind(words, i) == "initial"),
        words=tuple(w.low for w in words),
    )


def meaning_conflicts(cached: str | MeaningSignature, new: str | MeaningSignature) -> tuple[str, ...]:
    """Why `new` may not be answered with `cached`'s answer; empty when they agree."""
    a = cached if isinstance(cached, MeaningSignature) else signature(cached)
    b = new if isinstance(new, MeaningSignature) else signature(new)
    out = []
    if a.numbers != b.numbers:
        out.append(f"numbers differ: {_show(a.numbers)} vs {_show(b.numbers)}")
    if a.dates != b.dates:
        out.append(f"dates differ: {_show(a.dates)} vs {_show(b.dates)}")
    if a.negations != b.negations:
        out.append(f"negation differs: {a.negations} vs {b.negations} negators")
    antonyms = _antonym_pairs(a.words, b.words)
    if antonyms:
        out.append("negated word: " + ", ".join(f"{x} vs {y}" for x, y in antonyms))
    names = set(a.entities) | set(b.entities)
    words_a, words_b = set(a.words), set(b.words)
    # a capitalised word that starts a sentence may be a name or an ordinary word: it is
    # a name when either prompt writes it capitalised inside a sentence (then its order
    # counts); the same word in both prompts agrees; one left unmatched on *both* sides
    # ("Oslo weather" / "Bergen weather") is taken as a different name, on one side only
    # as an ordinary word the other prompt rephrased ("Flights from ..." / "Which airlines ...")
    loose_a = [w for w in a.initials if w not in names and w not in words_b]
    loose_b = [w for w in b.initials if w not in names and w not in words_a]
    if names:
        order_a = _first_seen(w for w in a.words if w in names)
        order_b = _first_seen(w for w in b.words if w in names)
        if order_a != order_b:
            out.append(f"named entities differ: {_show(order_a)} vs {_show(order_b)}")
    if loose_a and loose_b:
        out.append(f"named entities differ: {_show(tuple(loose_a))} vs {_show(tuple(loose_b))}")
    return tuple(out)


def same_meaning(cached: str | MeaningSignature, new: str | MeaningSignature) -> bool:
    """True when numbers, dates, negations and named entities (with their order) agree."""
    return not meaning_conflicts(cached, new)


# -- the parts ----------------------------------------------------------------------------
def _show(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"


def _first_seen(values) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _canonical(value: Decimal) -> str:
    value = value.normalize()
    return format(value, "f") if value == value.to_integral_value() else str(value)


def _parse_digits(raw: str) -> str:
    """"9,000" -> 9000, "1,5" / "1.5" -> 1.5, "9.000.000" -> 9000000, "10:30" stays a time."""
    if ":" in raw:
        return ":".join(str(int(p)) if p.isdigit() else p for p in raw.split(":"))
    groups = re.split(r"[.,]", raw)
    seps = re.findall(r"[.,]", raw)
    if seps and all(len(g) == 3 for g in groups[1:]) and (len(set(seps)) == 1 and (len(seps) > 1 or seps[0] == ",")):
        digits = "".join(groups)  # thousands separators: 9,000  9.000.000
    elif len(seps) >= 2 and len(groups[-1]) != 3:
        digits = "".join(groups[:-1]) + "." + groups[-1]  # 1,234.5  1.234,5
    else:
        digits = raw.replace(",", ".")
    try:
        return _canonical(Decimal(digits))
    except InvalidOperation:
        return raw


def _digit_values(digits, words: list[_Word]) -> list[str]:
    out = []
    for raw, suffix, at in digits:
        value = _parse_digits(raw)
        suffix = (suffix or "").lower().rstrip(".")
        scale = _MULTIPLIER_SUFFIX.get(suffix)
        if scale is None and at < len(words) and words[at].low in _SCALES:
            scale = _SCALES[words[at].low]  # "5 million": the scale word follows the digits
        if scale is not None and ":" not in value:
            value = _canonical(Decimal(value) * scale)
        out.append(value)
    return out


def _word_numbers(words: list[_Word], digit_at: set[int]) -> list[str]:
    """Values of number-word runs ("twenty five", "three hundred and two", "a dozen", "third")."""
    out: list[str] = []
    total = current = 0
    in_run = False

    def flush() -> None:
        nonlocal total, current, in_run
        if in_run:
            out.append(str(total + current))
        total = current = 0
        in_run = False

    for i, w in enumerate(words):
        low = w.low
        prev = words[i - 1].low if i else ""
        nxt = words[i + 1].low if i + 1 < len(words) else ""
        if low in _UNITS or low in _TENS:
            value = _UNITS.get(low, _TENS.get(low, 0))
            if low == "one" and not in_run and (not nxt or nxt in _FUNCTION_WORDS) and nxt not in _SCALES:
                continue  # "which one is", "the cheaper one?", "one of": a pronoun, not a count
            if in_run and current % 100 == 0 and current:
                current += value  # three hundred (and) two
            elif in_run and current % 10 == 0 and current % 100 and low in _UNITS and value < 10:
                current += value  # twenty five
            else:
                flush()
                current, in_run = value, True
        elif low in _SCALES:
            if i in digit_at:
                continue  # "5 million": scaled with its digits
            if not in_run:
                if prev not in ("a", "one"):
                    continue  # "thousands of": no count
                current, in_run = 1, True
            if _SCALES[low] == 100:
                current = max(current, 1) * 100
            else:
                total += max(current, 1) * _SCALES[low]
                current = 0
        elif low == "and" and in_run and (nxt in _UNITS or nxt in _TENS):
            continue  # "one hundred and five"
        elif low in _DOZEN:
            if in_run:
                current *= 12  # two dozen
            elif i not in digit_at:
                current, in_run = 12, True
        elif low in _ORDINALS:
            flush()
            out.append(str(_ORDINALS[low]))
        else:
            flush()
    flush()
    return out


def _dates(words: list[_Word], digits) -> list[str]:
    out: list[str] = []
    digit_at = {at for _, _, at in digits}  # word index right after a digit group
    digit_before = {at - 1 for at in digit_at}  # word index right before a digit group
    for raw, suffix, _ in digits:
        s = (suffix or "").lower().rstrip(".")
        if s in _TIME_SUFFIX:
            out.append(s.replace(".", ""))
    for i, w in enumerate(words):
        low, prev = w.low, words[i - 1].low if i else ""
        nxt = words[i + 1].low if i + 1 < len(words) else ""
        if low in ("am", "pm") and i in digit_at:
            out.append(low)  # "5 pm"
            continue
        if low in _MONTHS:
            near_number = i in digit_at or i in digit_before or prev in _ORDINALS or nxt in _ORDINALS
            capital = w.text[0].isupper()
            if low in _AMBIGUOUS_MONTHS:
                if low == "may" and capital and nxt in _PRONOUN_SUBJECTS:
                    continue  # "May I ...": the modal
                if not (near_number or (capital and not (w.initial and low == "may")) or prev in ("in", "of", "since",
                                                                                                     "until", "by")):
                    continue
                if low in ("jan", "dec") and not (capital or near_number):
                    continue
            out.append(_MONTHS[low])
        elif low in _WEEKDAYS or (low in _WEEKDAYS_CAPITALISED_ONLY and w.text[0].isupper() and not w.initial):
            day = _WEEKDAYS.get(low) or _WEEKDAYS_CAPITALISED_ONLY[low]
            out.append(f"{prev} {day}" if prev in _RELATIVE_MODIFIERS else day)
        elif low in _DEICTIC_DAYS:
            out.append(_DEICTIC_DAYS[low])
        elif low in _DAY_PARTS or low in _SEASONS:
            out.append(f"{prev} {low}" if prev in _RELATIVE_MODIFIERS else low)
        elif low in _RELATIVE_MARKERS:
            out.append(low)
        elif low.rstrip("s") in _PERIODS and prev in _RELATIVE_MODIFIERS:
            out.append(f"{prev} {low.rstrip('s')}")  # next week, last month, this year
    return out


def _is_negator(low: str) -> bool:
    return low in _NEGATORS or low.endswith("n't") or low in _APOSTROPHELESS_NEGATIONS


def _antonym_pairs(a: tuple[str, ...], b: tuple[str, ...]) -> list[tuple[str, str]]:
    """Words of one prompt that are the other's word with an antonym prefix (unsafe / safe)."""
    set_a, set_b = set(a), set(b)
    pairs = []
    for mine, theirs, flip in ((set_a, set_b, False), (set_b, set_a, True)):
        for word in sorted(mine - theirs):
            for prefix in _ANTONYM_PREFIXES:
                stem = word[len(prefix):]
                if word.startswith(prefix) and len(stem) >= 3 and stem in theirs and stem not in mine:
                    pairs.append((stem, word) if flip else (word, stem))
                    break
    return pairs


def _entity_kind(words: list[_Word], i: int) -> str | None:
    """"name" for a capitalised word inside a sentence, "initial" for a capitalised word
    that starts one (a name or an ordinary word: "Oslo weather", "Flights from"), None for
    everything else: lower case, "I", function words ("What", "Is"), numbers, dates, and
    a sentence-initial verb before its object ("Tell me", "Book a", "List all")."""
    w = words[i]
    if not w.text[0].isupper() or w.low in ("i", "i'm", "i'd", "i'll", "i've"):
        return None
    if w.low in _FUNCTION_WORDS or _is_negator(w.low):
        return None
    if w.low in _DEICTIC_DAYS or w.low in _MONTHS or w.low in _WEEKDAYS or w.low in _WEEKDAYS_CAPITALISED_ONLY:
        return None  # compared as dates
    if w.low in _UNITS or w.low in _TENS or w.low in _ORDINALS or w.low in _SCALES or w.low in _DOZEN:
        return None  # compared as numbers
    if not w.initial:
        return "name"
    nxt = words[i + 1].low if i + 1 < len(words) else ""
    return None if nxt in _VERB_CUES else "initial"
