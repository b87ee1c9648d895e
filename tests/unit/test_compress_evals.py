"""The retention eval's compression rows: strategies, `compression_ratio`, answer survival."""

from __future__ import annotations

import pytest

from tiered_context import SelfInformationCompressor
from tiered_context.evals.datasets import Conversation, Question, Turn
from tiered_context.evals.retention import render_markdown, run_eval
from tiered_context.evals.survival import answer_survival
from tiered_context.evals.strategies import STRATEGIES, counter

FILLER = "Honestly, I think that it was really quite a nice day and we just had a lot of fun together, you know."


def conversation() -> Conversation:
    facts = [
        ("t1", "Ana", f"{FILLER} I adopted a greyhound called Biscuit from the shelter in Leeds last spring.", "Biscuit"),
        ("t2", "Bo", f"{FILLER} My sister moved to Lisbon and opened a small bakery near the river.", "a small bakery"),
        ("t3", "Ana", f"{FILLER} We booked the cabin for 3 nights in the Lake District in June.", "3 nights"),
        ("t4", "Bo", f"{FILLER} I finally finished painting the sunset over the harbour for my mum.", "the sunset over the harbour"),
    ]
    turns = [Turn(id=tid, speaker=who, text=text, timestamp=1_700_000_000 + 60 * k, session=1)
             for k, (tid, who, text, _) in enumerate(facts)]
    turns += [Turn(id=f"f{k}", speaker="Ana" if k % 2 else "Bo", text=f"{FILLER} Number {k}.",
                   timestamp=1_700_001_000 + 60 * k, session=2) for k in range(30)]
    questions = [Question(id=f"q{k}", text=f"Question about {answer}?", evidence=(tid,), category="4", answer=answer)
                 for k, (tid, _, _, answer) in enumerate(facts)]
    questions.append(Question(id="qx", text="Not verbatim?", evidence=("t1",), category="4", answer="a dog"))
    return Conversation(id="c", dataset="t", turns=turns, questions=questions, speakers=("Ana", "Bo"))


def test_answer_survival_row() -> None:
    row = answer_survival([conversation()], SelfInformationCompressor(counter()), 0.5)
    assert row is not None and row["category"] == "answer_survival" and row["budget"] == 0
    assert row["questions"] == 4  # "a dog" is not in its evidence: not counted
    assert row["target_ratio"] == 2.0 and row["compression_ratio"] > 1.5
    assert 0.75 <= row["recall"] <= 1.0 and 0.0 <= row["strict_recall"] <= row["recall"]
    assert row["ci_low"] <= row["recall"] <= row["ci_high"]


def test_no_answers_no_row() -> None:
    conv = conversation()
    conv.questions[:] = [q for q in conv.questions if q.id == "qx"]
    assert answer_survival([conv], SelfInformationCompressor(counter()), 0.5) is None


def test_compression_strategies_in_the_runner() -> None:
    for name in ("tiered:no-compress", "tiered:l2-only", "tiered:compress", "tiered:summaries"):
        assert name in STRATEGIES
    rows = run_eval({"t": [conversation()]}, ["tiered:no-compress", "tiered:compress"], [120], progress=False)
    overall = {r["strategy"]: r for r in rows if r["category"] == "all"}
    assert "compression_ratio" not in overall["tiered:no-compress"]
    assert overall["tiered:compress"]["compression_ratio"] >= 1.0
    survival = [r for r in rows if r["category"] == "answer_survival"]
    assert [(r["strategy"], r["target_ratio"]) for r in survival] == [("tiered:compress", 2.0), ("tiered:compress", 3.0)]
    assert overall["tiered:compress"]["recall"] >= overall["tiered:no-compress"]["recall"]
    table = render_markdown(rows)
    assert "answer survival" in table and "| tiered:compress | 2x |" in table and "compression" in table


@pytest.mark.parametrize("name", ["tiered:no-compress", "tiered:summaries"])
def test_strategies_respect_the_budget(name: str) -> None:
    strategy = STRATEGIES[name]()
    conv = conversation()
    strategy.ingest(conv)
    for q in conv.questions:
        packed = strategy.context(q, 80)
        assert counter().count(packed.text) <= 80


def test_survival_analysis_breaks_the_cases_down() -> None:
    from tiered_context.evals.survival import CLASSES, analyse, render, word_class

    assert word_class("Biscuit", opens_sentence=False) == "protected"
    assert word_class("awesome!", opens_sentence=False) == "evaluative"
    assert word_class("the", opens_sentence=True) == "function" and word_class("…", False) == "punctuation"
    result = analyse([conversation()], examples=2)
    assert result["cases"] == 4 and set(result["shares"]) == set(CLASSES)
    assert abs(sum(result["shares"].values()) - 1.0) < 0.01
    for part in result["ratios"].values():
        assert sum(n for _, n in part["by_kind"].values()) == 4
        assert len(part["lost"]) == sum(n - kept for kept, n in part["by_kind"].values()) or len(part["lost"]) == 2
    assert result["ratios"]["2x"]["by_kind"]["other"][0] >= result["ratios"]["3x"]["by_kind"]["other"][0]
    assert all(0 <= part["sentence_oracle"] <= 4 for part in result["ratios"].values())
    assert "| 3x | long |" in render(result) and "told which sentence" in render(result)
