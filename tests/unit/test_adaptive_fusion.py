"""Relevance that knows what kind of query it has, and the conversational-query dev set."""

from __future__ import annotations

import numpy as np
import pytest

from tiered_context import Scorer, ScoringConfig
from tiered_context.core._scoring import query_share
from tiered_context.core import SignalStats
from tiered_context.errors import ConfigError
from tiered_context.evals.conversational import conversational_queries
from tiered_context.evals.datasets import Conversation, Question, Turn


@pytest.mark.parametrize("query", [
    "When is the Lisbon launch?",
    "what did Ana say about the budget",
    "Lisbon launch budget",                      # a keyword query: short
    "Tell me about the trip to Porto and everything we booked for the kids last summer",
])
def test_questions_and_keyword_queries_keep_the_configured_share(query: str) -> None:
    assert query_share(query, ScoringConfig()) == 0.5


def test_a_long_chat_message_leans_on_meaning() -> None:
    message = ("I ended up volunteering for that project at work, and honestly now I'm totally "
               "overwhelmed with meetings every single evening")
    share = query_share(message, ScoringConfig())
    assert 0 < share < 0.25
    assert query_share(message, ScoringConfig(adaptive_fusion=False)) == 0.5
    # the ablations' fixed ends stay fixed
    assert query_share(message, ScoringConfig(bm25_share=1.0)) == 1.0
    assert query_share(message, ScoringConfig(bm25_share=0.0)) == 0.0


def test_scorer_uses_the_query_share() -> None:
    bm25 = np.array([5.0, 0.0], dtype=np.float32)  # lexical says item 0
    dense = np.array([0.1, 0.9], dtype=np.float32)  # meaning says item 1
    args = dict(bm25=bm25, dense=dense, seqs=np.zeros(2, np.float32), importance=np.zeros(2, np.float32),
                latest_seq=0, stats=SignalStats(bm25_mean=0.0, bm25_std=1.25, dense_mean=0.1, dense_std=0.4))
    scorer = Scorer(ScoringConfig(recency_weight=0.0, importance_weight=0.0))
    question = scorer.score(**args, query="Which project did I volunteer for?")
    message = scorer.score(**args, query="so yeah I said yes to it after all and now every evening is gone, "
                                          "my calendar is packed and I regret it a little")
    assert question[0].relevance > question[1].relevance
    assert message[1].relevance > message[0].relevance


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        ScoringConfig(short_query_terms=0)


def _conv() -> Conversation:
    texts = [f"filler turn number {i} about weather and lunch" for i in range(30)]
    texts[3] = "My sister finally adopted a rescue greyhound."          # session 1
    texts[25] = "Walking him twice daily keeps her calmer, she says."  # session 2: refers back, no shared term
    texts[27] = "My sister adopted another greyhound!"                  # shares terms with turn 3
    turns = [Turn(id=f"t{i}", speaker="Ana" if i % 2 else "Bo", text=t, timestamp=float(i),
                  session=1 if i < 20 else 2) for i, t in enumerate(texts)]
    questions = [
        Question(id="q1", text="What pet did Ana's sister adopt?", evidence=("t3", "t25"), category="1", answer=None),
        Question(id="q2", text="How many greyhounds?", evidence=("t3", "t27"), category="1", answer=None),
        Question(id="q3", text="Single turn", evidence=("t5",), category="4", answer=None),
    ]
    return Conversation(id="c", dataset="locomo", turns=turns, questions=questions, speakers=("Bo", "Ana"))


def test_conversational_queries_are_later_evidence_without_shared_terms() -> None:
    (conv,) = conversational_queries([_conv()])
    (q,) = conv.questions
    assert conv.dataset == "conversational" and q.category == "conv:multi-hop"
    assert q.text == "Walking him twice daily keeps her calmer, she says." and q.evidence == ("t3",)
    assert [t.id for t in conv.turns] == [f"t{i}" for i in range(25)]  # history ends before the message


def test_time_window_reads_relative_dates() -> None:
    from datetime import datetime, timezone

    from tiered_context.core._dates import time_window

    now = datetime(2023, 5, 30, 23, 42, tzinfo=timezone.utc).timestamp()  # a Tuesday
    day = 86400.0

    def inside(query: str, when: datetime) -> bool:
        window = time_window(query, now)
        assert window is not None, query
        return window[0] <= when.timestamp() <= window[1]

    assert inside("Who came with me to the concert last Saturday?", datetime(2023, 5, 27, 20, 0, tzinfo=timezone.utc))
    assert not inside("Who came with me to the concert last Saturday?", datetime(2023, 5, 20, 20, 0, tzinfo=timezone.utc))
    assert inside("the race I ran two weeks ago", datetime(2023, 5, 16, 9, 0, tzinfo=timezone.utc))
    assert inside("what did I cook yesterday", datetime(2023, 5, 29, 19, 0, tzinfo=timezone.utc))
    assert time_window("When is the Lisbon launch?", now) is None
    start, end = time_window("3 days ago", now)
    assert start < now - 3 * day < end


def test_time_window_reads_absolute_dates() -> None:
    from datetime import datetime, timezone

    from tiered_context.core._dates import time_window

    def day(y: int, m: int, d: int) -> float:
        return datetime(y, m, d, 12, 0, tzinfo=timezone.utc).timestamp()

    def inside(query: str, when: float, now: float | None = None) -> bool:
        window = time_window(query, now)
        assert window is not None, query
        return window[0] <= when <= window[1]

    # a whole date needs no `now`: the day before to two days after
    for query in ("What did she paint on 13 October, 2023?", "on October 13, 2023", "Oct. 13th 2023",
                  "the 13th of October 2023", "on 2023-10-13", "December 1,2023 and October 13 2023"):
        assert inside(query, day(2023, 10, 13)), query
    assert not inside("What did she paint on 13 October, 2023?", day(2023, 10, 20))
    # a month runs a week past its end (told of afterwards)
    assert inside("What did Joanna finish in January 2022?", day(2022, 2, 5))
    assert not inside("What did Joanna finish in January 2022?", day(2022, 2, 12))
    assert inside("What did John organize in 2024?", day(2024, 6, 1))
    # no year: the latest one before `now`, and nothing without `now`
    now = day(2023, 7, 20)
    assert inside("When did Melanie go camping in June?", day(2023, 6, 15), now)
    assert not inside("When did Melanie go camping in June?", day(2022, 6, 15), now)
    assert inside("What did they give him on Aug 15th?", day(2022, 8, 15), now)
    assert time_window("When did Melanie go camping in June?", None) is None
    # "may" is a verb; a number that is no date names nothing
    assert time_window("May I ask what you may have meant?", now) is None
    assert time_window("On 31 February, 2023 I ...", None) is None
    assert time_window("I have 2023 photos", None) is None
    # the ends of the calendar: no window rather than an error
    first_days = datetime(1, 1, 5, tzinfo=timezone.utc).timestamp()
    assert time_window("camping in June", first_days) is None
    assert time_window("on Dec 31st", first_days) is None


def test_an_absolute_date_prefers_items_from_then_without_asked_at() -> None:
    from datetime import datetime, timezone

    from tiered_context import TieredContext
    from tiered_context.testing import HashEmbedder

    then = datetime(2023, 10, 13, 15, 0, tzinfo=timezone.utc).timestamp()

    def values(boost: float) -> dict[str, float]:
        ctx = TieredContext(session_id="t", embedder=HashEmbedder(), compaction="inline",
                            scoring=ScoringConfig(recency_weight=0.0, time_match_boost=boost))
        ctx.put("I painted a lake at sunrise.", timestamp=then - 90 * 86400, id="before")
        ctx.put("I painted a lake at sunrise.", timestamp=then, id="then")
        ctx.put("I painted a lake at sunrise.", timestamp=then + 90 * 86400, id="after")
        for i in range(20):
            ctx.put(f"Filler note {i} about groceries and plans.", timestamp=then + (100 + i) * 86400)
        scores = ctx.assemble("What did I paint on 13 October, 2023?", budget=1000).report.scores
        return {k: scores[k]["value"] for k in ("before", "then", "after")}

    off, on = values(0.0), values(1.0)
    assert off["then"] == pytest.approx(off["before"]) and off["then"] == pytest.approx(off["after"])
    assert on["then"] > on["before"] and on["then"] > on["after"]


def test_a_relative_date_prefers_items_from_then() -> None:
    from tiered_context import ScoringConfig, TieredContext
    from tiered_context.testing import HashEmbedder

    day = 86400.0
    now = 1_685_490_000.0
    outputs = {}
    for boost in (0.0, 1.0):
        ctx = TieredContext(session_id="t", embedder=HashEmbedder(), compaction="inline",
                            scoring=ScoringConfig(time_match_boost=boost, recency_weight=0.0))
        ctx.put("We watched the football match at the stadium.", timestamp=now - 40 * day, id="old")
        ctx.put("We watched the football match at the stadium with Sam.", timestamp=now - 14 * day, id="then")
        for i in range(40):
            ctx.put(f"Filler note {i} about groceries and plans.", timestamp=now - 13 * day + i * 3600, id=f"f{i}")
        ctx.put("Good morning!", timestamp=now, id="latest")
        question = "What football match did I watch at the stadium two weeks ago?"
        out = ctx.assemble(question, budget=1000, asked_at=now)
        outputs[boost] = out.report.scores
        unasked = ctx.assemble(question, budget=1000).report.scores  # no asked_at: no boost
    assert outputs[1.0]["then"]["value"] > outputs[0.0]["then"]["value"]
    assert outputs[1.0]["then"]["value"] > outputs[1.0]["old"]["value"]
    assert unasked["then"]["value"] < outputs[1.0]["then"]["value"]


def test_speakers_named_by_a_word_no_other_speaker_shares() -> None:
    from tiered_context.core._scoring import speakers_named

    people = ["Professor C", "Grad A", "Grad B", "Melanie"]
    assert speakers_named("What did C think about the budget?", people) == {"Professor C"}
    assert speakers_named("what did the professor say", people) == {"Professor C"}
    assert speakers_named("Where has melanie camped?", people) == {"Melanie"}
    assert speakers_named("a grad asked a question", people) == set()  # a shared word; the article "a"
    assert speakers_named("What did Ana say?", ["Ana\x00Lee", "Bo"]) == {"Ana\x00Lee"}  # any characters
    # the person addressed is not the one asked about: "Thanks Maria!" names nobody
    assert speakers_named("Thanks Melanie! I finally painted the lake.", people) == set()
    assert speakers_named("Hey melanie! what did Melanie paint?", people) == {"Melanie"}


def test_a_speaker_the_query_names_gains_on_her_relevant_turns() -> None:
    from tiered_context import TieredContext

    def value_of_her_turn(boost: float) -> float:
        ctx = TieredContext(session_id="s", scoring=ScoringConfig(speaker_boost=boost, neighbour_decay=0.0),  # her own value
                            compaction="inline")
        ctx.put("Melanie, did you enjoy painting the sunset?", metadata={"speaker": "Caroline"})
        hers = ctx.put("I painted a lake at dawn with the kids.", metadata={"speaker": "Melanie"})
        for k in range(20):
            ctx.put(f"Unrelated chat number {k} about the weather.", metadata={"speaker": "Caroline"})
        out = ctx.assemble("What did Melanie paint?", budget=400)
        return out.report.scores[hers.id]["value"]

    assert value_of_her_turn(0.5) > 1.1 * value_of_her_turn(0.0)
    with pytest.raises(ConfigError, match="speaker_boost"):
        ScoringConfig(speaker_boost=-1.0)


def test_without_speakers_drops_the_names_the_query_uses() -> None:
    from tiered_context.core._scoring import without_speakers

    people = ["Melanie", "Caroline", "Professor C"]
    assert without_speakers("What do Melanie's kids like?", people) == "What do kids like?"
    assert without_speakers("what did melanie and Caroline paint?", people) == "what did and paint?"
    assert without_speakers("What did C think of the budget?", people) == "What did think of the budget?"
    assert without_speakers("Where is Sara?", people) == "Where is Sara?"  # names no speaker
    assert without_speakers("Melanie?", people) == "Melanie?"  # nothing but a name: kept whole
    # the person addressed stays (the sender greets her the same way in earlier turns)
    assert without_speakers("Thanks Caroline! How is Melanie?", people) == "Thanks Caroline! How is ?"
    assert without_speakers("Wow, Melanie, what a day", people) == "Wow, Melanie, what a day"


def test_the_dense_side_embeds_the_query_without_the_speakers_it_names() -> None:
    from tiered_context import TieredContext

    def dense_of(name_free: bool) -> dict[str, float]:
        ctx = TieredContext(session_id="s", scoring=ScoringConfig(name_free_dense=name_free), compaction="inline")
        greeting = ctx.put("Hey Melanie! Good to see you, Melanie!", metadata={"speaker": "Caroline"})
        hers = ctx.put("I love pottery and swimming with the kids.", metadata={"speaker": "Melanie"})
        scores = ctx.assemble("What activities does Melanie love?", budget=400).report.scores
        return {"greeting": scores[greeting.id]["dense"], "hers": scores[hers.id]["dense"]}

    named, free = dense_of(False), dense_of(True)
    assert free["hers"] - free["greeting"] > named["hers"] - named["greeting"]
    assert free["greeting"] < named["greeting"]


def test_a_turn_the_named_speaker_said_beside_any_hit_gains() -> None:
    from tiered_context import TieredContext

    def ratio(boost: float, hit_by: str, beside_by: str, spreads: bool | None = None, chat: bool = False) -> float:
        """value of the turn beside the hit / value of the hit; `chat`: turns of a chat
        message's length (a step each), else a transcript's short utterances."""
        tail = " It was a long day, and we talked about it for a good while afterwards over dinner." * 2 if chat else ""
        scoring = ScoringConfig(speaker_boost=boost, speaker_gain_spreads=spreads)
        ctx = TieredContext(session_id="s", scoring=scoring, compaction="inline")
        for k in range(20):
            ctx.put(f"Unrelated chat number {k} about the weather.{tail}", metadata={"speaker": "Ana"})
        hit = ctx.put(f"What did you paint at the lake by the old mill?{tail}", metadata={"speaker": hit_by})
        beside = ctx.put(f"Oh, just a quiet sunrise over the water.{tail}", metadata={"speaker": beside_by})
        for k in range(20):
            ctx.put(f"More unrelated talk number {k} about groceries.{tail}", metadata={"speaker": "Ana"})
        scores = ctx.assemble("What did Melanie paint at the lake by the old mill?", budget=4000).report.scores
        return scores[beside.id]["value"] / scores[hit.id]["value"]

    # her reply beside the other speaker's hit gains, whether or not the gain spreads
    assert ratio(0.5, "Caroline", "Melanie") == pytest.approx(1.5 * ratio(0.0, "Caroline", "Melanie"), rel=0.02)
    assert ratio(0.5, "Caroline", "Melanie", spreads=False) == pytest.approx(ratio(0.5, "Caroline", "Melanie"), rel=0.02)
    # the other speaker's turn beside her hit: her gain spreads to it when forced, never when off
    assert ratio(0.5, "Melanie", "Caroline", spreads=True) == pytest.approx(ratio(0.0, "Melanie", "Caroline"), rel=0.02)
    assert ratio(0.5, "Melanie", "Caroline", spreads=False) == pytest.approx(ratio(0.0, "Melanie", "Caroline") / 1.5,
                                                                             rel=0.02)
    # by default, as far as the turns are shorter than a step: a transcript's region around
    # her utterance is hers, a chat message beside hers is its sender's
    assert ratio(0.5, "Melanie", "Caroline") == pytest.approx(ratio(0.5, "Melanie", "Caroline", spreads=True), rel=0.02)
    assert ratio(0.5, "Melanie", "Caroline", chat=True) == pytest.approx(
        ratio(0.5, "Melanie", "Caroline", spreads=False, chat=True), rel=0.02)
    assert ratio(0.5, "Melanie", "Caroline", chat=True) < ratio(0.5, "Melanie", "Caroline", spreads=True, chat=True) / 1.4
    from tiered_context.errors import ConfigError

    with pytest.raises(ConfigError, match="speaker_gain_spreads"):
        ScoringConfig(speaker_gain_spreads="sometimes")  # type: ignore[arg-type]
