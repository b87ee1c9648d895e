"""Who said an item, which speakers a query names, and the query without their names.

A question that names a speaker ("What did Melanie paint?") is about her turns, which
rarely contain her name: the assembler weighs her items apart (`ScoringConfig.speaker_boost`)
and embeds the query without the name (`ScoringConfig.name_free_dense`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tiered_context.core._lexical import STOPWORDS

__all__ = ["speaker_of", "speakers_of", "speakers_named", "without_speakers"]

_NAME_WORD = re.compile(r"[^\W_]+")


def speaker_of(item: Any) -> str | None:
    """The speaker an item's metadata names (``speaker``, else ``name``); None for a bare role."""
    name = item.metadata.get("speaker") or item.metadata.get("name")
    return name if isinstance(name, str) and name.strip() else None


def speakers_of(items: Iterable[Any]) -> set[str]:
    """The speakers of `items` (`speaker_of`)."""
    return {w for i in items if (w := speaker_of(i)) is not None}


#: A name set off by "," or "!" right after it: the person addressed ("Thanks Maria!").
_ADDRESSED = re.compile(r"[^\W_]+(?=(?:['’]s)?\s*[,!])")


def _naming_words(query: str, speakers: Iterable[str]) -> dict[str, str]:
    """The words of `query` that name one of `speakers` (see `speakers_named`): each
    written word that names someone -> whom it names. A word only ever written as the
    person addressed ("Thanks Maria!", "Hey Caroline, ...") names nobody: the query is
    not about her (a chat message's sender talks to her, and his own turns are the ones
    it needs)."""
    written = set(_NAME_WORD.findall(_ADDRESSED.sub(" ", query)))
    folded = {w.casefold() for w in written if len(w) >= 3}
    owners: dict[str, set[str]] = {}
    for name in set(speakers):
        for word in set(_NAME_WORD.findall(name)):
            owners.setdefault(word, set()).add(name)
    out: dict[str, str] = {}
    for word, who in owners.items():
        if len(who) != 1:
            continue
        (owner,) = who
        if len(word) >= 3:
            if word.casefold() in folded and word.casefold() not in STOPWORDS:
                out.update((w, owner) for w in written if w.casefold() == word.casefold())
        elif word.isupper() and word in written:
            out[word] = owner
    return out


def speakers_named(query: str, speakers: Iterable[str]) -> set[str]:
    """The `speakers` that `query` names, by a word of the name no other speaker shares.

    A word of three or more letters matches in any case unless it is a stop word
    ("Melanie", "professor"); a shorter one only as written in capitals, so "What did C
    think" names "Professor C" while the article "a" never names "Grad A".

    >>> sorted(speakers_named("What did C think of it?", ["Professor C", "Grad A"]))
    ['Professor C']
    >>> speakers_named("a question for the grads", ["Grad A", "Grad B"])
    set()
    """
    return set(_naming_words(query, speakers).values())


def without_speakers(query: str, speakers: Iterable[str]) -> str:
    """`query` without the words that name one of `speakers` (and their possessive "'s").

    What the dense side embeds: in a static embedding a name weighs as much as every other
    word of a short question, and a speaker's own turns rarely contain her name, so "What
    does Melanie like to do?" embedded whole lands nearest the turns that greet Melanie,
    not the ones where she says what she likes. (The speaker is weighed apart:
    `ScoringConfig.speaker_boost`.) Returns `query` unchanged when it names nobody or is
    nothing but names. A name set off by "," or "!" is the person addressed ("Thanks
    Maria!", "Hey Caroline, how was it?"), not the subject, and stays: the sender's own
    earlier turns greet her the same way (stripped too, 3 of the 129 conversational
    queries lost their evidence at 2k and none gained).

    >>> without_speakers("What did Melanie's kids like?", ["Melanie", "Caroline"])
    'What did kids like?'
    >>> without_speakers("Thanks Melanie! What did you paint?", ["Melanie", "Caroline"])
    'Thanks Melanie! What did you paint?'
    """
    words = _naming_words(query, speakers)
    if not words:
        return query
    names = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    pattern = r"\b(?:" + names + r")(?:['’]s)?\b(?!\s*[,!])\s*"
    stripped = re.sub(pattern, "", query).strip()
    return stripped if _NAME_WORD.search(stripped) else query
