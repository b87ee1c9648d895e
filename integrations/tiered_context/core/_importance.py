"""Offline importance: how much information a word, a text or an item carries.

The unigram surprisal model the compressor and the extractive summarizer share lives
here: `detect_language` (frequent function words, then script), `Surprisal` (bits per
word for one language, cached), `information(text)` (bits of the content words above
those of a common word).

Self-information of a word is ``-log2 p(word)`` under a unigram model of English
(`wordfreq`, shipped in its wheel). An item's importance is the mean surprisal of its
content words, squashed to [0, 1], plus a bonus for numbers and capitalised names: the
facts a later question is most likely to ask for. "haha thanks!" scores near 0;
"We moved the Lisbon launch to 3 May" scores high.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Protocol, runtime_checkable

from tiered_context.core._facts import (
    _FILLERS,
    _FUNCTION,
    _GENERIC,
    _GLUE,
    _HEDGES,
    MONTHS,
    NAME_MAX_FREQUENCY,
    NEGATIONS,
    NUMBER_WORDS,
    TEMPORAL,
    frequencies,
)

__all__ = ["Surprisal", "WordScorer", "detect_language", "information", "self_information", "surprisal_model", "word_surprisal"]

#: Punctuation stripped off a word before it is looked up.
PUNCT = "\"'“”‘’«»()[]{}<>.,;:!?¿¡…-–—*_~/\\|"
APOSTROPHES = str.maketrans({"’": "'", "‘": "'"})
#: Time, number and negation words: facts in themselves (the compressor never drops them).
PROTECTED_WORDS = TEMPORAL | NUMBER_WORDS | NEGATIONS | frozenset(MONTHS)
DIGIT = re.compile(r"\d")

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_NUMBER = re.compile(r"\d")
#: Surprisal (bits) given to words the unigram model has never seen.
UNSEEN_BITS = 24.0


@functools.lru_cache(maxsize=200_000)
def word_surprisal(word: str, lang: str = "en") -> float:
    """Bits of information in `word` (``-log2`` of its frequency; unseen words: 24)."""
    if lang == "en" and word.isascii() and word.isalpha() and word.islower():
        # one token as wordfreq tokenizes it: its own lookup, the same arithmetic, no tokenizer
        f = frequencies("en").get(word, 0.0)
        p = 0.0
        if f:
            p = 1.0 / (0.0 + 1.0 / f)
            p = round(p, math.floor(-math.log(p, 10)) + 3)
    else:
        from wordfreq import word_frequency

        p = word_frequency(word, lang)
    return -math.log2(p) if p > 0 else UNSEEN_BITS


def self_information(text: str, lang: str = "en") -> float:
    """Importance in [0, 1]: mean surprisal of the words plus a facts bonus."""
    words = _TOKEN.findall(text)
    if not words:
        return 0.0
    bits = list(map(word_surprisal, map(str.lower, words), repeat(lang)))
    mean = sum(bits) / len(bits)
    digit = _NUMBER.search
    facts = sum(1 for _ in filter(digit, words)) if digit(text) else 0  # words with a digit
    facts += sum(1 for w in words[1:] if w[:1].isupper() and not digit(w))
    # Frequent-word prose sits near 9 bits, dense technical or named text near 14+.
    base = 1 / (1 + math.exp(-(mean - 11.0) / 1.5))
    length = min(1.0, math.log1p(len(words)) / math.log1p(40))  # "ok" is not a fact
    return round(min(1.0, 0.6 * base * length + 0.4 * min(1.0, facts / 4)), 4)


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


class Surprisal:
    """Bits per lower-cased word for one language, cached (thread-safe enough: dict ops)."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._freq = frequencies(lang)
        self._bits: dict[str, float] = {}
        self._content: dict[str, float] = {}

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

    def content_bits(self, lower: str) -> float:
        """What `lower` adds to `information`: 0 for fillers, hedges, function and glue
        words, 12 for a number or time word, else its surprisal above 8 bits (generic
        words 4 less). Remembered per word."""
        bits = self._content.get(lower)
        if bits is None:
            if lower in _SILENT:
                bits = 0.0
            elif DIGIT.search(lower) or lower in PROTECTED_WORDS:
                bits = 12.0
            else:
                bits = max(0.0, self(lower) - (4.0 if lower in _GENERIC else 0.0) - 8.0)
            if len(self._content) < 500_000:
                self._content[lower] = bits
        return bits


_SILENT = _FILLERS | _HEDGES | _FUNCTION | _GLUE
_MODELS: dict[str, Surprisal] = {}


def surprisal_model(lang: str) -> Surprisal:
    """The process-wide `Surprisal` of `lang` (made on first use)."""
    model = _MODELS.get(lang)
    if model is None:
        model = _MODELS.setdefault(lang, Surprisal(lang))
    return model


#: Sentence boundaries: after . ! ? … and whitespace, and at line breaks.
SENTENCE = re.compile(r"(?<=[.!?…])\s+(?=[^\s])|\n+")


def sentence_words(text: str) -> list[str]:
    """`text`'s words as `information` and `detect_language` take them: punctuation
    stripped, lower-cased, apostrophes straightened."""
    # straightened before the split, in one pass over the text instead of one per word:
    # the same words, since `PUNCT` strips either form
    straight = text.replace("’", "'").replace("‘", "'")
    return [w.lower() for w in (w.strip(PUNCT) for w in straight.split()) if w]


def load_languages(texts: Iterable[str]) -> list[str]:
    """Load the word tables of every language the sentences of `texts` are detected as;
    returns their codes. A table is read once per process (0.2-0.3 s, the first time a
    sentence in its language is scored): a server that knows its traffic can call this
    at start-up so that no request pays for it."""
    found: dict[str, None] = {}
    for text in texts:
        for sentence in SENTENCE.split(text):
            found[surprisal_model(detect_language(sentence_words(sentence))).lang] = None
    return list(found)


@functools.lru_cache(maxsize=65_536)  # the same sentences are scored again as a summary grows
def information(text: str, *, ignore: frozenset[str] = frozenset(), lang: str | None = None) -> float:
    """Bits of information in the content words of `text`: each word's surprisal above
    that of a common word (8 bits), plus 12 bits per number or date word. Fillers,
    hedges, function words and `ignore` (lower-cased, e.g. the participants' names) add
    nothing: "Wow, Caroline, that's awesome!" scores near 0."""
    lowers = sentence_words(text)
    bits = surprisal_model(lang or detect_language(lowers)).content_bits
    return sum(bits(lower) for lower in lowers if lower not in ignore)


@runtime_checkable
class WordScorer(Protocol):
    """A contextual replacement for the unigram model: bits of each word given the words
    before it. `SelfInformationCompressor(scorer=...)` uses it for the words it may drop
    (word classes and protected words still apply). The local-LM implementation is
    `tiered_context.lm_importance.LMSurprisalScorer` (extra ``smollm``)."""

    def word_bits(self, words: Sequence[str]) -> list[float]: ...
