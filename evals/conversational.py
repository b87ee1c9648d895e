"""A dev set of conversational queries: the latest message as the query, not a question.

In a chat app the query `assemble` gets is the user's latest message, and the earlier turn
that matters can share no content word with it. This module derives such queries from
data sets that already link turns by hand (the evidence annotations), without writing
any text of its own:

1. For every question with evidence turns in at least two different sessions, take its
   *latest* evidence turn B as the message, and each *earlier* evidence turn A (in an
   earlier session) as what the message should bring back: the annotators linked both to
   one fact or story (one question), so B refers back to A in meaning.
2. Keep a pair only when A and B share no *distinctive* content term: every term they
   share (`lexical.terms`: stop words out, light stemming) occurs in more than
   `common_df` of the conversation's turns (and more than two; "feel", "time", ...), so BM25 cannot link them
   on its own.
3. One query per message B (its A's together are the evidence); the history is every
   turn *before* B (B is the latest message), so recency is as in a live chat.

Category: ``"conv:<source category>"`` (LoCoMo multi-hop, open-domain, ...; LongMemEval
question types). Built from the dev files only; the held-out data stays unseen::

    convs = conversational_queries(load_locomo(path))       # list[Conversation]
    tiered-context eval --data-locomo ... --conversational  # the same, as its own table

LongMemEval's user turns are long and topical, so strictly "no distinctive shared term"
keeps almost none of its pairs (1 of 76 on the dev file); LoCoMo's short chat turns give
most of the set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from tiered_context.core import terms
from tiered_context.evals.datasets import LOCOMO_CATEGORIES, Conversation, Question

__all__ = ["conversational_queries"]


def conversational_queries(conversations: Iterable[Conversation], *, common_df: float = 0.02,
                           min_history: int = 20) -> list[Conversation]:
    """The conversational queries derivable from `conversations` (see the module doc):
    one Conversation per query, its history cut just before the message."""
    out: list[Conversation] = []
    for conv in conversations:
        order = {t.id: i for i, t in enumerate(conv.turns)}
        bags = [set(terms(t.text)) for t in conv.turns]
        df = Counter(term for bag in bags for term in bag)
        common = {term for term, n in df.items() if n > max(2.0, common_df * len(conv.turns))}
        targets: dict[int, dict[int, str]] = {}  # message index -> {evidence index: category}
        for q in conv.questions:
            if q.category == "abstention":
                continue
            idx = sorted(order[e] for e in q.evidence if e in order)
            if len(idx) < 2:
                continue
            b = idx[-1]
            for a in idx[:-1]:
                if conv.turns[a].session == conv.turns[b].session:
                    continue
                if (bags[a] & bags[b]) - common:
                    continue
                targets.setdefault(b, {})[a] = q.category
        for b, found in sorted(targets.items()):
            if b < min_history:
                continue
            message = conv.turns[b]
            category = Counter(found.values()).most_common(1)[0][0]
            name = LOCOMO_CATEGORIES.get(category, category) if conv.dataset == "locomo" else category
            query = Question(id=f"{conv.id}/msg:{message.id}", text=message.text,
                             evidence=tuple(conv.turns[a].id for a in sorted(found)),
                             category=f"conv:{name}", answer=None)
            out.append(replace(conv, id=f"{conv.id}@{message.id}", dataset="conversational",
                               turns=conv.turns[:b], questions=[query]))
    return out
