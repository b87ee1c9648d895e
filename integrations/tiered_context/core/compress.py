"""The `Compressor` seam (L2) and the offline self-information compressor.

A compressed form is a new `ContextItem` with `source_ids=(original.id,)`, tier L2 and
the original's metadata, so it always traces back to the original, which stays in L3.

`SelfInformationCompressor` drops the words that carry the least information (unigram
surprisal, ``-log2 p(word)`` from `wordfreq`, per detected language) until the item
fits its target. What it never drops: names (capitalised words inside a sentence, rare
capitalised words at its start, acronyms), numbers and number words, dates and time
words ("yesterday", "last week"), negations, quoted text, inline code, fenced code
blocks, URLs and e-mail addresses. JSON tool results are compressed by structure
(nulls and empty fields dropped, long arrays and strings shortened with a marker), code
without fences and text in scripts written without spaces (Chinese, Japanese, Thai) are
left verbatim.

Measured on one core (`python -m tiered_context.evals.bench_compress`, the 22,866 turns of
LoCoMo dev5 and QMSum val, 504k cl100k tokens): ~370k tokens/s from cold caches, 2.05x
at ratio 0.5. At 2x, 97.3% of LoCoMo single-hop answers keep every answer term (86% at
3x); see the answer-survival rows of `tiered-context eval`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from tiered_context.core.facts import (
    _FILLERS,
    _FUNCTION,
    _GENERIC,
    _GLUE,
    _HEDGES,
    MONTHS,
    NEGATIONS,
    NUMBER_WORDS,
    TEMPORAL,
    frequencies,
    ordinary_opener,
)
from tiered_context.core.items import ContextItem, Tier
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import ConfigError

__all__ = ["Compressor", "SelfInformationCompressor", "compressed_form", "form_id", "information"]


@runtime_checkable
class Compressor(Protocol):
    """Makes shorter forms of items; returns one derived item per input, in order.

    `ratio` is the share of tokens to keep (0.5 = 2x compression). A form may come back
    no shorter than its original (nothing safe to drop); callers check `tokens`.
    """

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]: ...

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]: ...


def form_id(origin_id: str, ratio: float) -> str:
    """The id of the compressed form of `origin_id` at `ratio` (stable across calls)."""
    return f"{origin_id}~L2@{ratio:.2f}"


def compressed_form(item: ContextItem, text: str, tokens: int, ratio: float) -> ContextItem:
    """`item`'s compressed form: new id, L2, same metadata, `source_ids` = its origin."""
    return ContextItem(
        id=form_id(item.origin_ids[0], ratio),
        text=text,
        role=item.role,
        timestamp=item.timestamp,
        tokens=tokens,
        tier=Tier.L2,
        importance=item.importance,
        pinned=item.pinned,
        metadata=item.metadata,
        source_ids=item.origin_ids,
        seq=item.seq,
    )


# -- lexicon -------------------------------------------------------------------------------
_PUNCT = "\"'“”‘’«»()[]{}<>.,;:!?¿¡…-–—*_~/\\|"
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'"})
_PROTECTED_WORDS = TEMPORAL | NUMBER_WORDS | NEGATIONS | frozenset(MONTHS)
_NOT_NAMES = frozenset({"i", "i'm", "i've", "i'll", "i'd", "ok", "okay"})
#: Surprisal (bits) of punctuation pieces when they stand alone: cheap to drop, commas first.
_PUNCT_BITS = {",": 1.0, "!": 1.5, "...": 1.5, "…": 1.5, "-": 2.0, "—": 2.0, "–": 2.0, ".": 3.0, "?": 3.5,
               ":": 3.0, ";": 2.5}
UNSEEN_BITS = 24.0
_CLASS_BASE = {"filler": 0.0, "hedge": 100.0, "function": 200.0, "glue": 300.0}
_CONTENT_BASE = 400.0
COHESION = 0.5
GENERIC_BASE = 396.0
#: A capitalised sentence-opening word is a name only when rarer than this (zipf ~4.3).
NAME_MAX_FREQUENCY = 2e-5
_DIGIT = re.compile(r"\d")
_SPAN = re.compile(
    r"```.*?(?:```|\Z)"  # fenced code
    r"|`[^`\n]+`"  # inline code
    r"|\"[^\"\n]{1,400}\"|“[^”\n]{1,400}”|«[^»\n]{1,400}»"  # quoted text
    r"|(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.]+",  # URLs, e-mail
    re.S,
)
#: Scripts written without spaces between words: word pruning would cut words apart.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")
_CODE_LINE = re.compile(r"^\s{4,}\S|^\t|[;{}]\s*$|^\s*(?:def|class|import|from|return|function|const|let|var|if|for|while)\b.*[:({=]|=>|::|#include")


#: The most frequent function words of common Latin-script languages: a cheap detector.
_STOP_WORDS = {
    "en": "the and to of a in is you that it i for was with this",
    "es": "el la que de los las por una para con es y del se",
    "fr": "le la les des est et une pour dans que qui pas du je",
    "de": "der die das und ist nicht ich ein eine mit auf für den zu",
    "it": "il che di la non per una sono della con è gli le del",
    "pt": "que não uma com para os do da em é um são se no",
    "nl": "de het een en van dat niet ik op zijn voor met je te",
    "sv": "och att det som är för på inte jag med av en till",
    "da": "og det er til på med af ikke jeg som har en de",
    "pl": "nie się że na jest do to jak ale w z co",
    "tr": "ve bir bu da için ile de ne çok ama gibi mi",
    "id": "yang dan di ini itu dengan untuk tidak dari ke akan ada",
    "fi": "ja on ei se että oli mutta kun niin hän ovat kanssa",
    "cs": "a je se na že to v s jsem ale jako by",
    "ro": "și în de la nu este cu că o pe un mai",
    "hu": "a az és hogy nem is egy de meg van volt csak",
}


@functools.lru_cache(maxsize=1)
def _stop_languages() -> dict[str, tuple[str, ...]]:
    english = frequencies("en")
    table: dict[str, list[str]] = {}
    for lang, words in _STOP_WORDS.items():
        for word in words.split():  # "no", "a", "to", "on" say nothing against English
            if lang == "en" or english.get(word, 0.0) < 1e-5:
                table.setdefault(word, []).append(lang)
    return {w: tuple(langs) for w, langs in table.items()}


_SCRIPTS = ((0x0400, 0x04FF, "ru"), (0x0370, 0x03FF, "el"), (0x0600, 0x06FF, "ar"), (0x0590, 0x05FF, "he"),
            (0x0900, 0x097F, "hi"), (0xAC00, 0xD7AF, "ko"), (0x0980, 0x09FF, "bn"), (0x0B80, 0x0BFF, "ta"))


def detect_language(words: Sequence[str]) -> str:
    """The wordfreq language code of lower-cased `words` (by frequent words, then script)."""
    table = _stop_languages()
    votes: dict[str, int] = {}
    for word in words[:60]:
        for lang in table.get(word, ()):
            votes[lang] = votes.get(lang, 0) + 1
    if votes:
        best = max(votes.items(), key=lambda kv: (kv[1], kv[0] == "en"))[0]
        if best == "en" or (votes[best] >= 2 and votes[best] > votes.get("en", 0)):
            return best
        return "en"
    for word in words[:20]:
        if not word:
            continue
        code = ord(word[0])
        for low, high, lang in _SCRIPTS:
            if low <= code <= high:
                return lang
    return "en"


class _Surprisal:
    """Bits per lower-cased word for one language, cached (thread-safe enough: dict ops)."""

    def __init__(self, lang: str) -> None:
        self._freq = frequencies(lang)
        self._bits: dict[str, float] = {}

    def __call__(self, word: str) -> float:
        bits = self._bits.get(word)
        if bits is None:
            p = self._freq.get(word, 0.0)
            if not p and word.endswith(("'s", "'")):  # possessives: "lot's", "kids'"
                p = self._freq.get(word.rstrip("'s") if word.endswith("'") else word[:-2], 0.0)
            if not p and "-" in word.strip("-"):  # compounds: as informative as their rarest part
                parts = [self(part) for part in word.split("-") if part]
                bits = max(parts) + 2.0 if parts else UNSEEN_BITS
            else:
                bits = -math.log2(p) if p > 0 else UNSEEN_BITS
            if len(self._bits) < 500_000:
                self._bits[word] = bits
        return bits

    def common(self, word: str) -> bool:
        return self._freq.get(word, 0.0) > NAME_MAX_FREQUENCY


_MODELS: dict[str, _Surprisal] = {}


def _shared_model(lang: str) -> _Surprisal:
    model = _MODELS.get(lang)
    if model is None:
        model = _MODELS.setdefault(lang, _Surprisal(lang))
    return model


def information(text: str, *, ignore: frozenset[str] = frozenset(), lang: str | None = None) -> float:
    """Bits of information in the content words of `text`: each word's surprisal above
    that of a common word (8 bits), plus 12 bits per number or date word. Fillers,
    hedges, function words and `ignore` (lower-cased, e.g. the participants' names) add
    nothing: "Wow, Caroline, that's awesome!" scores near 0."""
    words = [w.strip(_PUNCT) for w in text.split()]
    lowers = [w.lower().translate(_APOSTROPHES) for w in words if w]
    model = _shared_model(lang or detect_language(lowers))
    total = 0.0
    for word, lower in zip((w for w in words if w), lowers):
        if lower in ignore or lower in _FILLERS or lower in _HEDGES or lower in _FUNCTION or lower in _GLUE:
            continue
        if _DIGIT.search(word) or lower in _PROTECTED_WORDS:
            total += 12.0
            continue
        bits = model(lower) - (4.0 if lower in _GENERIC else 0.0)
        total += max(0.0, bits - 8.0)
    return total


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
    """

    def __init__(
        self,
        counter: TokenCounter | None = None,
        *,
        min_tokens: int = 12,
        lang: str | None = None,
        json_mode: str = "structure",
    ) -> None:
        if json_mode not in ("structure", "verbatim"):
            raise ConfigError("json_mode must be 'structure' (drop empty fields, shorten arrays) or 'verbatim'")
        if min_tokens < 0:
            raise ConfigError("min_tokens must be >= 0")
        self.counter = counter or TokenCounter()
        self.min_tokens = min_tokens
        self.lang = lang
        self.json_mode = json_mode
        self._models: dict[str, _Surprisal] = {}
        self._costs: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- the Compressor interface ------------------------------------------------------
    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        _check_ratio(ratio)
        return [self.compress_item(item, ratio=ratio) for item in items]

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        return await asyncio.to_thread(self.compress, items, ratio)

    def compress_item(self, item: ContextItem, *, ratio: float = 0.5, target_tokens: int | None = None) -> ContextItem:
        """One item's compressed form (to `target_tokens` if given, else to `ratio`)."""
        tokens = item.tokens or self.counter.count(item.text)
        if tokens < self.min_tokens or item.pinned:
            return compressed_form(item, item.text, tokens, ratio)
        text = self.compress_text(item.text, ratio=ratio, target_tokens=target_tokens, tokens=tokens)
        return compressed_form(item, text, tokens if text == item.text else self.counter.count(text), ratio)

    # -- text --------------------------------------------------------------------------
    def compress_text(self, text: str, *, ratio: float = 0.5, target_tokens: int | None = None,
                      tokens: int | None = None) -> str:
        """`text` with its least informative words dropped, to about `ratio` of its tokens
        (or to at most `target_tokens`, as far as protected words allow)."""
        total = self.counter.count(text) if tokens is None else tokens
        target = max(1, int(round(total * ratio))) if target_tokens is None else max(1, target_tokens)
        if total <= target:
            return text
        stripped = text.strip()
        if stripped[:1] in "{[" and (parsed := _json(stripped)) is not None:
            return text if self.json_mode == "verbatim" else self._compress_json(text, parsed, target)
        if _UNSPACED.search(text) and len(_UNSPACED.findall(text)) * 3 > len(text):
            return text
        if "```" not in text and _looks_like_code(text):
            return text
        out = self._prune(text, target)
        if target_tokens is not None:  # a hard target: check exactly, tighten if the estimate was short
            for _ in range(3):
                have = self.counter.count(out)
                if have <= target:
                    break
                out = self._prune(text, max(1, target - (have - target)))
        return out

    def _model(self, lang: str) -> _Surprisal:
        model = self._models.get(lang)
        if model is None:
            with self._lock:
                model = self._models.setdefault(lang, _Surprisal(lang))
        return model

    def _cost(self, piece: str) -> int:
        n = self._costs.get(piece)
        if n is None:
            n = self.counter.count(" " + piece)
            if len(self._costs) < 500_000:
                self._costs[piece] = n
        return n

    def _prune(self, text: str, target: int) -> str:
        # 1. pieces: (text, bits or None if protected, joins the previous piece without a space)
        pieces: list[list[Any]] = []  # [text, bits, glue, line]
        line = 0
        cursor = 0
        for m in _SPAN.finditer(text):
            line = self._words(text[cursor:m.start()], pieces, line)
            pieces.append([m.group(), None, bool(m.start()) and not text[m.start() - 1].isspace(), line])
            line += m.group().count("\n")
            cursor = m.end()
        self._words(text[cursor:], pieces, line)
        # 2. drop the least informative until the estimate meets the target
        costs = [self._cost(p[0]) for p in pieces]
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

    def _words(self, chunk: str, pieces: list[list[Any]], line: int) -> int:
        """Append `chunk`'s words (and their trailing punctuation) to `pieces`."""
        lines = chunk.split("\n")
        words_all = [w for ln in lines for w in ln.split()]
        if not words_all:
            return line + len(lines) - 1
        lang = self.lang or detect_language([w.strip(_PUNCT).lower() for w in words_all[:60]])
        model = self._model(lang)
        cased = lang not in ("ko", "ar", "he", "hi", "bn", "ta")
        english = lang == "en"
        seen: set[str] = set()
        first = len(pieces)
        start = not pieces or (pieces[-1][0][-1:] in ".!?:\n" if pieces else True)
        for n, ln in enumerate(lines):
            if n:
                line += 1
                start = True
            for word in ln.split():
                core = word.strip(_PUNCT)
                if not core:  # punctuation or emoji alone
                    pieces.append([word, _PUNCT_BITS.get(word, 2.0) + (200.0 if english else 0.0), False, line])
                    start = word[-1] in ".!?"
                    continue
                lead = word[: word.index(core[0])]
                tail = word[len(lead) + len(core):]
                lower = core.lower().translate(_APOSTROPHES)
                if _DIGIT.search(core) or lower in _PROTECTED_WORDS or "_" in core or "." in core or "/" in core:
                    bits = None
                elif cased and (core[0].isupper() or core[1:2].isupper()) and lower not in _NOT_NAMES and (
                    not start or not (ordinary_opener(lower) if english else model.common(lower))
                ):
                    bits = None  # a name (or an acronym)
                else:
                    bits = model(lower)
                    if english:
                        bits += (0.0 if lower in _FILLERS else 100.0 if lower in _HEDGES else 200.0
                                 if lower in _FUNCTION else 300.0 if lower in _GLUE else GENERIC_BASE if lower in _GENERIC
                                 else _CONTENT_BASE)
                        if lower in seen:  # said again: predictable from the context
                            bits -= 4.0
                        seen.add(lower)
                pieces.append([lead + core, bits, False, line])
                if tail:
                    pieces.append([tail, _PUNCT_BITS.get(tail, 2.0) + (200.0 if english else 0.0), True, line])
                start = tail[-1:] in ".!?:" if tail else False
        if english and COHESION:  # words of one phrase (a run of content words) rise and fall together
            run: list[int] = []
            for i in range(first, len(pieces) + 1):
                bits = pieces[i][1] if i < len(pieces) else None
                if i < len(pieces) and (bits is None or bits >= _CONTENT_BASE) and not pieces[i][2]:
                    run.append(i)
                    continue
                if len(run) > 1:
                    top = max(_CONTENT_BASE + 24 if pieces[j][1] is None else pieces[j][1] for j in run)
                    for j in run:
                        if pieces[j][1] is not None:
                            pieces[j][1] += COHESION * (top - pieces[j][1])
                run = [i] if i < len(pieces) and (bits is None or bits >= _CONTENT_BASE) else []
        # keep "of"/"the" inside names ("Game of Thrones")
        for i in range(1, len(pieces) - 1):
            if pieces[i][1] is not None and pieces[i - 1][1] is None and pieces[i + 1][1] is None and \
                    pieces[i][0] in ("of", "the", "de", "van", "von", "&") and pieces[i + 1][0][:1].isupper():
                pieces[i][1] = None
        return line

    # -- JSON ----------------------------------------------------------------------------
    def _compress_json(self, text: str, value: Any, target: int) -> str:
        """Drop null / empty fields, then shorten long arrays and strings until `target`."""
        value = _drop_empty(value)
        out = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if self.counter.count(out) <= target:
            return out
        for items, chars in ((8, 400), (4, 200), (2, 120), (1, 60)):
            out = json.dumps(_shorten(value, items, chars), ensure_ascii=False, separators=(",", ":"))
            if self.counter.count(out) <= target:
                break
        return out if self.counter.count(out) < self.counter.count(text) else text

    def __repr__(self) -> str:
        return f"SelfInformationCompressor(min_tokens={self.min_tokens}, lang={self.lang or 'auto'})"


def _check_ratio(ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ConfigError(f"ratio is the share of tokens to keep and must be in (0, 1], got {ratio!r}")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _looks_like_code(text: str) -> bool:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2:
        return False
    return sum(1 for ln in lines if _CODE_LINE.search(ln)) * 3 >= len(lines)


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


def _shorten(value: Any, items: int, chars: int) -> Any:
    if isinstance(value, dict):
        return {k: _shorten(v, items, chars) for k, v in value.items()}
    if isinstance(value, list):
        head = [_shorten(v, items, chars) for v in value[:items]]
        return head + [f"… {len(value) - items} more"] if len(value) > items else head
    if isinstance(value, str) and len(value) > chars:
        return value[:chars] + "…"
    return value
