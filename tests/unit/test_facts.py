"""Fact extraction (names, numbers, dates) and the fact-retention check of summaries."""

from __future__ import annotations

import pytest

from tiered_context import ContextItem, Fact, FactCheck, check_facts
from tiered_context.core._facts import FactKind, extract_facts


def kinds(text: str) -> dict[str, FactKind]:
    return {t: k for k, t, _, _ in extract_facts(text)}


def test_names_numbers_and_dates() -> None:
    found = kinds("Hey Mel! We moved the Lisbon launch to 3 May 2024; it costs $1,200 or 15% more, said Ana.")
    assert found["Mel"] == FactKind.NAME and found["Lisbon"] == FactKind.NAME and found["Ana"] == FactKind.NAME
    assert found["3 May 2024"] == FactKind.DATE
    assert found["$1,200"] == FactKind.NUMBER and found["15%"] == FactKind.NUMBER
    assert "Hey" not in found and "We" not in found  # common words opening a sentence


@pytest.mark.parametrize("text, date", [
    ("The review is on 2024-05-03 at noon.", "2024-05-03"),
    ("Send it by 5/3/24 please.", "5/3/24"),
    ("We met on May 8, 2023 in town.", "May 8, 2023"),
    ("I started three years ago with them.", "three years ago"),
    ("See you next Friday then.", "next Friday"),
    ("It was back in 1999 or so.", "1999"),
])
def test_date_forms(text: str, date: str) -> None:
    assert kinds(text).get(date) == FactKind.DATE


def test_multiword_names_and_acronyms() -> None:
    found = kinds("I read Harry Potter and Game of Thrones, then joined the LGBTQ group at the UN.")
    assert {"Harry Potter", "Game of Thrones", "LGBTQ", "UN"} <= set(found)


def test_no_names_in_lowercase_or_uncased_text() -> None:
    assert not [f for f in extract_facts("we went to the park and had lunch") if f[0] == FactKind.NAME]
    assert [f for f in extract_facts("東京 2024") if f[0] == FactKind.NAME] == []


def item(text: str, id: str = "i1", importance: float = 0.8) -> ContextItem:
    return ContextItem.create(text, id=id, importance=importance, timestamp=1_714_000_000)


def test_check_lists_what_the_summary_dropped() -> None:
    originals = [item("We moved the Lisbon launch to 3 May 2024 with Ana and 12 people.", "a"),
                 item("Bob booked flights to Oslo for $480.", "b")]
    check = check_facts(originals, "Ana moved the Lisbon launch to May 3rd, 2024. Flights to Oslo booked.")
    assert isinstance(check, FactCheck)
    missing = {f.text for f in check.missing}
    assert missing == {"12", "Bob", "$480"}
    assert check.total == 7 and check.kept == 4 and check.retention == pytest.approx(4 / 7)
    assert {f.source_id for f in check.missing} == {"a", "b"}
    assert all(0 <= f.score <= 1 for f in check.missing)
    view = check.as_dict()
    assert view["facts"] == 7 and view["kept"] == 4 and len(view["missing"]) == 3
    assert all(":" in m for m in view["missing"])


def test_high_scoring_facts_are_selected() -> None:
    originals = [item("Zanzibar trip costs 900 euros.", "a", importance=1.0), item("We talked to Tom.", "b", importance=0.0)]
    check = check_facts(originals, "A trip was discussed.")
    high = check.high(0.7)
    assert high and all(f.score >= 0.7 for f in high)
    assert {f.source_id for f in high} == {"a"}


def test_a_perfect_summary_and_no_facts() -> None:
    assert check_facts([item("Ana paid 40 euros on Friday.")], "Ana paid 40 euros on Friday.").missing == ()
    empty = check_facts([item("ok thanks")], "thanks")
    assert empty.total == 0 and empty.retention == 1.0
    assert Fact(FactKind.NAME, "Ana").key == "ana"
