"""Offline importance: how much information an item carries.

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

__all__ = ["self_information", "word_surprisal"]

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_NUMBER = re.compile(r"\d")
#: Surprisal (bits) given to words the unigram model has never seen.
UNSEEN_BITS = 24.0


@functools.lru_cache(maxsize=200_000)
def word_surprisal(word: str, lang: str = "en") -> float:
    """Bits of information in `word` (``-log2`` of its frequency; unseen words: 24)."""
    from wordfreq import word_frequency

    p = word_frequency(word, lang)
    return -math.log2(p) if p > 0 else UNSEEN_BITS


def self_information(text: str, lang: str = "en") -> float:
    """Importance in [0, 1]: mean surprisal of the words plus a facts bonus."""
    words = _TOKEN.findall(text)
    if not words:
        return 0.0
    bits = [word_surprisal(w.lower(), lang) for w in words]
    mean = sum(bits) / len(bits)
    facts = sum(1 for i, w in enumerate(words) if _NUMBER.search(w) or (i > 0 and w[:1].isupper()))
    # Frequent-word prose sits near 9 bits, dense technical or named text near 14+.
    base = 1 / (1 + math.exp(-(mean - 11.0) / 1.5))
    length = min(1.0, math.log1p(len(words)) / math.log1p(40))  # "ok" is not a fact
    return round(min(1.0, 0.6 * base * length + 0.4 * min(1.0, facts / 4)), 4)
