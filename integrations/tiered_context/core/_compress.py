"""The offline self-information compressor (the default `Compressor`, `core._forms`).

`SelfInformationCompressor` drops the words that carry the least information (unigram
surprisal, ``-log2 p(word)`` from `wordfreq`, per detected language) until the item
fits its target. What it never drops: names (capitalised words inside a sentence, rare
capitalised words at its start, acronyms), numbers and number words, dates and time
words ("yesterday", "last week"), negations, quoted text, inline code, fenced code
blocks, URLs and e-mail addresses. JSON tool results are compressed by structure
(nulls and empty fields dropped, long arrays and strings shortened with a marker), code
without fences and text in scripts written without spaces (Chinese, Japanese, Thai) are
left verbatim. The word model (surprisal, language detection) is in `core.importance`,
the JSON / code / script handling in `core.structure`; `scorer=` swaps the unigram
estimate for a contextual one (`tiered_context.lm_importance`, a local LM: slower, and
measured worse on answer survival, see its docstring).

Order of dropping (English): fillers, hedges, function words, glue words, then content
words by surprisal, with generic words ("thing", "great") 4 bits cheaper, "-ly" adverbs
and sentence-opening content words 3 bits cheaper, repeated words 4 bits cheaper, and
the words of one phrase (a run of content words) pulled halfway to the phrase's most
informative word, so "fashion internship" tends to stay or go as one.

Measured on one core (`python -m tiered_context.evals.bench_compress`, the 22,866 turns of
LoCoMo dev5 and QMSum val, 504k cl100k tokens): ~370k tokens/s from cold caches, 2.05x
at ratio 0.5. Answer survival on LoCoMo dev5 (223 single-hop answers found verbatim in
their evidence turn): 97.8% at 2x (achieved 1.96x), 86.5% at 3x (achieved 2.91x); the
issue's 3x target (93%) is not met by word-level unigram pruning; see the
answer-survival rows of `tiered-context eval`.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from tiered_context.core._facts import _FILLERS, _FUNCTION, _GENERIC, _GLUE, _HEDGES, _NOT_NAMES, ordinary_opener
from tiered_context.core._importance import (
    APOSTROPHES,
    DIGIT,
    PROTECTED_WORDS,
    PUNCT,
    Surprisal,
    WordScorer,
    detect_language,
)
from tiered_context.core._forms import compressed_form
from tiered_context.core._items import ContextItem
from tiered_context.core._lexical import terms
from tiered_context.core._structure import compress_json, looks_like_code, mostly_unspaced, parse_json
from tiered_context.core._tokens import TokenCounter
from tiered_context.errors import ConfigError

__all__ = ["SelfInformationCompressor"]


# -- lexicon -------------------------------------------------------------------------------
#: Surprisal (bits) of punctuation pieces when they stand alone: cheap to drop, commas first.
_PUNCT_BITS = {",": 1.0, "!": 1.5, "...": 1.5, "…": 1.5, "-": 2.0, "—": 2.0, "–": 2.0, ".": 3.0, "?": 3.5,
               ":": 3.0, ";": 2.5}
_CONTENT_BASE = 400.0
#: Compressed forms remembered per compressor (the oldest go first).
MEMO_ITEMS = 50_000
COHESION = 0.5
#: Bits off "-ly" adverbs (they qualify a fact, they rarely are one) and off content words
#: that open a sentence (framing: "Besides", "Mostly", "Trust me"). Measured on LoCoMo
#: answer survival: +1 answer of 223 at 2x and at 3x, and a 3x ratio of 2.91 instead of 2.90.
ADVERB_PENALTY = 3.0
OPENER_PENALTY = 3.0
GENERIC_BASE = 396.0
_PLAIN, _CAPITAL, _PROTECTED, _PUNCTUATION = range(4)  # kinds of `SelfInformationCompressor._entry`
_SPAN = re.compile(
    # a leading date and/or speaker prefix of a line: "[2023-05-08] Caroline:", "Speaker A:",
    # "[10:42]": who said what and when is never compressed away
    r"(?m:^[ \t]*(?:\[[^\]\n]{1,40}\](?:[ \t]*[^\W\d][\w'.-]*(?:[ \t][\w'.-]+){0,3}:(?=\s|$))?"
    r"|[A-Z][\w'.-]*(?:[ \t][A-Z0-9][\w'.-]*){0,3}:(?=\s|$)))"
    r"|```.*?(?:```|\Z)"  # fenced code
    r"|`[^`\n]+`"  # inline code
    r"|\"[^\"\n]{1,400}\"|“[^”\n]{1,400}”|«[^»\n]{1,400}»"  # quoted text
    r"|(?:https?://|www\.)\S+"  # URLs
    r"|[\w.+-]+@[\w-]+\.[\w.]+",  # e-mail
    re.S,
)
#: `_SPAN` without its e-mail alternative, for texts without an "@" (the same matches: the
#: alternative can only match at an "@", yet it is tried at every word character).
_SPAN_NO_EMAIL = re.compile(_SPAN.pattern[: _SPAN.pattern.rindex("|")], re.S)




class SelfInformationCompressor:
    """Drops the least informative words until an item is `ratio` of its tokens.

    Setup and use::

        compressor = SelfInformationCompressor(TokenCounter())
        forms = compressor.compress(items, ratio=0.5)          # ~2x, one form per item
        compressor.compress_text(text, target_tokens=40)         # a token budget instead

    Each form is a new item (`source_ids=(original.id,)`, tier L2, the original's
    metadata). Names, numbers, dates and time words, negations, quoted text and code
    are never dropped; when only those are left the form stays above its target.
    Items under `min_tokens` and code are kept verbatim; JSON is compressed by structure
    (`json_mode="verbatim"` keeps it as is). `lang=None` detects the language per item.
    `scorer` (a `WordScorer`, e.g. `lm_importance.LMSurprisalScorer`) replaces the
    unigram surprisal of the words it may drop with bits given the words before them.
    """

    def __init__(
        self,
        counter: TokenCounter | None = None,
        *,
        min_tokens: int = 12,
        lang: str | None = None,
        json_mode: str = "structure",
        scorer: WordScorer | None = None,
    ) -> None:
        if json_mode not in ("structure", "verbatim"):
            raise ConfigError("json_mode must be 'structure' (drop empty fields, shorten arrays) or 'verbatim'")
        if min_tokens < 0:
            raise ConfigError("min_tokens must be >= 0")
        self.counter = counter or TokenCounter()
        self.min_tokens = min_tokens
        self.lang = lang
        self.json_mode = json_mode
        self.scorer = scorer
        self._models: dict[str, Surprisal] = {}
        self._costs: dict[str, int] = {}
        self._lexicons: dict[str, dict[str, tuple]] = {}  # lang -> word -> `_entry`
        self._lock = threading.Lock()
        # (text, tokens, ratio) -> (form text, form tokens): the ladder (L1 -> L2) and the
        # assembler (forms of candidates) ask for the same items' forms; each is made once
        self._memo: OrderedDict[tuple[str, int, float], tuple[str, int]] = OrderedDict()

    # -- the Compressor interface ------------------------------------------------------
    def compress(self, items: Sequence[ContextItem], ratio: float, *, query: str | None = None) -> list[ContextItem]:
        """`query` (optional): the words of the query and their neighbours survive."""
        _check_ratio(ratio)
        return [self.compress_item(item, ratio=ratio, query=query) for item in items]

    async def acompress(self, items: Sequence[ContextItem], ratio: float, *, query: str | None = None) -> list[ContextItem]:
        return await asyncio.to_thread(self.compress, items, ratio, query=query)

    def compress_item(self, item: ContextItem, *, ratio: float = 0.5, target_tokens: int | None = None,
                      query: str | None = None) -> ContextItem:
        """One item's compressed form (to `target_tokens` if given, else to `ratio`)."""
        tokens = item.tokens or self.counter.count(item.text)
        if tokens < self.min_tokens or item.pinned:
            return compressed_form(item, item.text, tokens, ratio)
        plain = target_tokens is None and not query  # a pure function of (text, tokens, ratio): memoized
        key = (item.text, tokens, float(ratio))
        if plain and (done := self._memo.get(key)) is not None:
            return compressed_form(item, done[0], done[1], ratio)
        text = self.compress_text(item.text, ratio=ratio, target_tokens=target_tokens, tokens=tokens, query=query)
        count = tokens if text == item.text else self.counter.count(text)
        if plain:
            with self._lock:
                self._memo[key] = (text, count)
                while len(self._memo) > MEMO_ITEMS:
                    self._memo.popitem(last=False)
        return compressed_form(item, text, count, ratio)

    # -- text --------------------------------------------------------------------------
    def compress_text(self, text: str, *, ratio: float = 0.5, target_tokens: int | None = None,
                      tokens: int | None = None, query: str | None = None) -> str:
        """`text` with its least informative words dropped, to about `ratio` of its tokens
        (or to at most `target_tokens`, as far as protected words allow). With `query`,
        the words of the query (and inflections: "manages" keeps "manager") and their
        neighbours are kept: compression is query-aware."""
        wanted = frozenset(terms(query)) if query else frozenset()
        total = self.counter.count(text) if tokens is None else tokens
        target = max(1, int(round(total * ratio))) if target_tokens is None else max(1, target_tokens)
        if total <= target:
            return text
        stripped = text.strip()
        if stripped[:1] in "{[" and (parsed := parse_json(stripped)) is not None:
            return text if self.json_mode == "verbatim" else compress_json(text, parsed, target, self.counter)
        if mostly_unspaced(text):
            return text
        if "```" not in text and looks_like_code(text):
            return text
        out = self._prune(text, target, wanted)
        if target_tokens is not None:  # a hard target: check exactly, tighten if the estimate was short
            for _ in range(3):
                have = self.counter.count(out)
                if have <= target:
                    break
                out = self._prune(text, max(1, target - (have - target)), wanted)
        return out

    def _model(self, lang: str) -> Surprisal:
        model = self._models.get(lang)
        if model is None:
            with self._lock:
                model = self._models.setdefault(lang, Surprisal(lang))
        return model

    def _cost(self, piece: str) -> int:
        n = self._costs.get(piece)
        if n is None:
            n = self.counter.count(" " + piece)
            if len(self._costs) < 500_000:
                self._costs[piece] = n
        return n

    def _lexicon(self, lang: str) -> dict[str, tuple]:
        table = self._lexicons.get(lang)
        if table is None:
            table = self._lexicons.setdefault(lang, {})
        return table

    def _entry(self, word: str, lang: str) -> tuple:
        """What `_words` needs of one whitespace-separated `word` in `lang`, whatever its
        context: (piece, kind, lower, unigram bits, word-class bits, ordinary opener,
        trailing punctuation, its bits). Made once per distinct word."""
        english = lang == "en"
        core = word.strip(PUNCT)
        punct = 200.0 if english else 0.0
        if not core:
            return word, _PUNCTUATION, "", 0.0, 0.0, False, "", _PUNCT_BITS.get(word, 2.0) + punct
        lead = word[: word.index(core[0])]
        tail = word[len(lead) + len(core):]
        tail_bits = _PUNCT_BITS.get(tail, 2.0) + punct if tail else 0.0
        lower = core.lower().translate(APOSTROPHES)
        model = self._model(lang)
        if DIGIT.search(core) or lower in PROTECTED_WORDS or "_" in core or "." in core or "/" in core:
            return lead + core, _PROTECTED, lower, 0.0, 0.0, False, tail, tail_bits
        cased = lang not in ("ko", "ar", "he", "hi", "bn", "ta")
        kind, opener = _PLAIN, False
        if cased and (core[0].isupper() or core[1:2].isupper()) and lower not in _NOT_NAMES:
            kind, opener = _CAPITAL, (ordinary_opener(lower) if english else model.common(lower))
        cls = 0.0
        if english:
            cls = (0.0 if lower in _FILLERS else 100.0 if lower in _HEDGES else 200.0 if lower in _FUNCTION
                   else 300.0 if lower in _GLUE else GENERIC_BASE if lower in _GENERIC else _CONTENT_BASE)
        return lead + core, kind, lower, model(lower), cls, opener, tail, tail_bits

    def _prune(self, text: str, target: int, query: frozenset[str] = frozenset()) -> str:
        # 1. pieces: (text, bits or None if protected, joins the previous piece without a space)
        pieces: list[list[Any]] = []  # [text, bits, glue, line]
        line = 0
        cursor = 0
        for m in (_SPAN if "@" in text else _SPAN_NO_EMAIL).finditer(text):
            if not m.group().strip():
                continue
            line = self._words(text[cursor:m.start()], pieces, line, query)
            span = m.group().strip()
            glue = bool(m.start()) and not text[m.start() - 1].isspace() and span == m.group()
            pieces.append([span, None, glue, line])
            line += m.group().count("\n")
            cursor = m.end()
        self._words(text[cursor:], pieces, line, query)
        # 2. drop the least informative until the estimate meets the target
        known = self._costs
        costs = [known[p[0]] if p[0] in known else self._cost(p[0]) for p in pieces]
        have = sum(costs)
        order = sorted((i for i, p in enumerate(pieces) if p[1] is not None), key=lambda i: pieces[i][1])
        keep = [True] * len(pieces)
        for i in order:
            if have <= target:
                break
            keep[i] = False
            have -= costs[i]
        # 3. render: kept pieces, single spaces, line breaks where the original had them
        out: list[str] = []
        last_line = None
        for (piece, _, glue, ln), k in zip(pieces, keep):
            if not k:
                continue
            if last_line is not None:
                if ln != last_line:
                    out.append("\n")
                elif not glue:
                    out.append(" ")
            out.append(piece)
            last_line = ln
        return "".join(out)

    def _words(self, chunk: str, pieces: list[list[Any]], line: int, query: frozenset[str] = frozenset()) -> int:
        """Append `chunk`'s words (and their trailing punctuation) to `pieces`; words of
        `query` (stems) and their neighbours are protected."""
        lines = chunk.split("\n")
        words_all = [w for ln in lines for w in ln.split()]
        if not words_all:
            return line + len(lines) - 1
        lang = self.lang or detect_language([w.strip(PUNCT).lower() for w in words_all[:60]])
        lexicon = self._lexicon(lang)
        english = lang == "en"
        seen: set[str] = set()
        weak: set[int] = set()  # protected time, number and negation words (not names)
        first = len(pieces)
        contextual = iter(self.scorer.word_bits(words_all)) if self.scorer is not None else None
        start = not pieces or (pieces[-1][0][-1:] in ".!?:\n" if pieces else True)
        for n, ln in enumerate(lines):
            if n:
                line += 1
                start = True
            for word in ln.split():
                in_context = next(contextual) if contextual is not None else None
                entry = lexicon.get(word)
                if entry is None:
                    entry = self._entry(word, lang)
                    if len(lexicon) < 500_000:
                        lexicon[word] = entry
                piece, kind, lower, unigram, cls, opener, tail, tail_bits = entry
                if kind == _PUNCTUATION:  # punctuation or emoji alone
                    pieces.append([piece, tail_bits, False, line])
                    start = word[-1] in ".!?"
                    continue
                if kind == _PROTECTED:
                    bits = None
                    weak.add(len(pieces))
                elif kind == _CAPITAL and (not start or not opener):
                    bits = None  # a name (or an acronym)
                else:
                    bits = (unigram if in_context is None else in_context) + cls
                    if english:
                        if lower in seen and in_context is None:  # said again: predictable from the context
                            bits -= 4.0
                        if bits >= _CONTENT_BASE:
                            if lower.endswith("ly"):
                                bits -= ADVERB_PENALTY
                            if start:
                                bits -= OPENER_PENALTY
                        seen.add(lower)
                pieces.append([piece, bits, False, line])
                if tail:
                    pieces.append([tail, tail_bits, True, line])
                start = tail[-1:] in ".!?:" if tail else False
        if english and COHESION:  # words of one phrase (a run of content words) rise and fall together
            run: list[int] = []
            for i in range(first, len(pieces) + 1):
                bits = pieces[i][1] if i < len(pieces) else None
                if i < len(pieces) and (bits is None or bits >= _CONTENT_BASE) and not pieces[i][2]:
                    run.append(i)
                    continue
                if len(run) > 1:
                    # a name lifts its neighbours ("Lisbon launch"); a time, number or negation
                    # word does not ("Long time no talk")
                    top = max((_CONTENT_BASE + 24 if pieces[j][1] is None else pieces[j][1]
                               for j in run if j not in weak), default=0.0)
                    for j in run:
                        if pieces[j][1] is not None:
                            pieces[j][1] += COHESION * (top - pieces[j][1])
                run = [i] if i < len(pieces) and (bits is None or bits >= _CONTENT_BASE) else []
        # keep "of"/"the" inside names ("Game of Thrones")
        for i in range(1, len(pieces) - 1):
            if pieces[i][1] is not None and pieces[i - 1][1] is None and pieces[i + 1][1] is None and \
                    pieces[i][0] in ("of", "the", "de", "van", "von", "&") and pieces[i + 1][0][:1].isupper():
                pieces[i][1] = None
        if query:
            _protect_query(pieces, first, query)
        return line

    def __repr__(self) -> str:
        return f"SelfInformationCompressor(min_tokens={self.min_tokens}, lang={self.lang or 'auto'})"


#: Neighbours of a query word within this many words are kept too.
QUERY_REACH = 1
QUERY_NEAR_BONUS = 150.0  # bits added to words two away: they outlast ordinary content words


def _matches(stem: str, wanted: frozenset[str]) -> bool:
    if stem in wanted:
        return True
    for w in wanted:  # inflections the light stemmer leaves apart ("manage" / "manager")
        n = max(5, min(len(w), len(stem)) - 1)
        if min(len(w), len(stem)) >= 5 and stem[:n] == w[:n]:
            return True
    return False


def _protect_query(pieces: list[list[Any]], first: int, wanted: frozenset[str]) -> None:
    """Protect the words of the query from `first` on, and their neighbours."""
    words = [i for i in range(first, len(pieces)) if pieces[i][0].strip(PUNCT)]
    hits = []
    for k, i in enumerate(words):
        stems = terms(pieces[i][0])
        if stems and _matches(stems[0], wanted):
            hits.append(k)
    for k in hits:
        for d in range(-QUERY_REACH - 1, QUERY_REACH + 2):
            j = k + d
            if 0 <= j < len(words) and pieces[words[j]][1] is not None:
                if abs(d) <= QUERY_REACH:
                    pieces[words[j]][1] = None
                else:
                    pieces[words[j]][1] += QUERY_NEAR_BONUS


def _check_ratio(ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ConfigError(f"ratio is the share of tokens to keep and must be in (0, 1], got {ratio!r}")
