"""Dataset readers: LoCoMo and QMSum on the shared data, JSONL on a file written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiered_context.evals.datasets import (
    LOCOMO_CATEGORIES,
    Conversation,
    Turn,
    limit,
    load_jsonl,
    load_locomo,
    load_qmsum,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LOCOMO = DATA / "locomo" / "locomo_dev5.json"
QMSUM_VAL = DATA / "qmsum" / "val"


@pytest.fixture(scope="module")
def locomo() -> list[Conversation]:
    if not LOCOMO.is_file():
        pytest.skip(f"LoCoMo data not found at {LOCOMO}")
    return load_locomo(LOCOMO)


@pytest.fixture(scope="module")
def qmsum() -> list[Conversation]:
    if not QMSUM_VAL.is_dir():
        pytest.skip(f"QMSum data not found at {QMSUM_VAL}")
    return load_qmsum(QMSUM_VAL)


def _raw_locomo() -> list[dict]:
    return json.loads(LOCOMO.read_text(encoding="utf-8"))


def test_locomo_counts_and_speakers(locomo: list[Conversation]) -> None:
    assert [c.id for c in locomo] == ["conv-26", "conv-30", "conv-41", "conv-42", "conv-43"]
    assert all(c.dataset == "locomo" and c.speakers and len(c.speakers) == 2 for c in locomo)
    raw_turns = sum(
        len(v) for s in _raw_locomo() for k, v in s["conversation"].items()
        if k.startswith("session_") and not k.endswith("date_time")
    )
    assert sum(len(c.turns) for c in locomo) == raw_turns


def test_locomo_sessions_in_numeric_order_and_time_strict(locomo: list[Conversation]) -> None:
    for conv in locomo:
        sessions = [t.session for t in conv.turns]
        assert sessions == sorted(sessions)
        assert max(sessions) >= 10  # lexical order would put session_10 before session_2
        stamps = [t.timestamp for t in conv.turns]
        assert all(a < b for a, b in zip(stamps, stamps[1:]))
        # turn i of a session is session time + i seconds
        first, second = conv.turns[0], conv.turns[1]
        assert second.timestamp - first.timestamp == 1.0
        assert conv.turns[0].id == "D1:1"
    # "1:56 pm on 8 May, 2023" (conv-26, session 1) in UTC
    assert locomo[0].turns[0].timestamp == 1683554160.0


def test_locomo_photo_captions_in_text(locomo: list[Conversation]) -> None:
    texts = [t.text for c in locomo for t in c.turns]
    assert any(" [shares a photo: " in t for t in texts)
    assert all(isinstance(t, Turn) and t.text for c in locomo for t in c.turns)


def test_locomo_questions_filtered(locomo: list[Conversation]) -> None:
    raw = _raw_locomo()
    scored = sum(1 for s in raw for q in s["qa"] if q["category"] != 5)
    questions = [q for c in locomo for q in c.questions]
    assert {q.category for q in questions} <= set(LOCOMO_CATEGORIES)
    assert 0 < len(questions) <= scored  # category 5 gone, evidence-less ones skipped
    assert len(questions) >= scored - 5
    for conv in locomo:
        ids = {t.id for t in conv.turns}
        for q in conv.questions:
            assert q.evidence and set(q.evidence) <= ids
            assert q.answer is None or isinstance(q.answer, str)
    all_evidence = {e for q in questions for e in q.evidence}
    assert not {"D", "D:11:26", "D30:05"} & all_evidence
    # int answers become strings
    raw_int = {q["question"] for s in raw for q in s["qa"]
               if isinstance(q.get("answer"), int) and q["category"] != 5}
    assert raw_int and all(q.answer.isdigit() for q in questions if q.text in raw_int)


def test_qmsum_val(qmsum: list[Conversation]) -> None:
    assert len(qmsum) == 35
    assert [c.id for c in qmsum] == sorted(c.id for c in qmsum)
    conv = qmsum[0]
    assert [t.id for t in conv.turns[:3]] == ["0", "1", "2"]
    assert [t.timestamp for t in conv.turns[:3]] == [0.0, 1.0, 2.0]
    assert conv.speakers is None and {t.session for t in conv.turns} == {1}
    raw = json.loads((QMSUM_VAL / f"{conv.id}.json").read_text(encoding="utf-8"))
    span = raw["specific_query_list"][0]["relevant_text_span"]
    said = {str(i) for i, t in enumerate(raw["meeting_transcripts"]) if t["content"].strip()}
    expected = [str(i) for s, e in span for i in range(int(s), int(e) + 1) if str(i) in said]
    assert list(conv.questions[0].evidence) == expected
    assert all(q.category == "specific" for c in qmsum for q in c.questions)
    # empty turns are skipped everywhere (a memory may refuse them); ids keep their index
    assert all(t.text.strip() for c in qmsum for t in c.turns)
    assert sum(len(c.turns) for c in qmsum) < sum(
        len(json.loads((QMSUM_VAL / f"{c.id}.json").read_text())["meeting_transcripts"])
        for c in qmsum)


def test_jsonl_loader(tmp_path: Path) -> None:
    record = {
        "id": "c1",
        "speakers": ["Ana", "Bot"],
        "turns": [
            {"id": "a", "speaker": "Ana", "text": "My order 881 is late", "timestamp": 10},
            {"id": "b", "speaker": "Bot", "text": "Sorry, checking now"},
        ],
        "questions": [
            {"question": "Which order?", "evidence": ["a", "zz"], "answer": 881},
            {"question": "Nothing valid", "evidence": ["zz"]},
        ],
    }
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(record) + "\n\n", encoding="utf-8")
    (conv,) = load_jsonl(path)
    assert conv.id == "c1" and conv.dataset == "jsonl" and conv.speakers == ("Ana", "Bot")
    assert [t.timestamp for t in conv.turns] == [10.0, 1.0]
    (q,) = conv.questions
    assert q.evidence == ("a",) and q.category == "general" and q.answer == "881"


def test_limit(locomo: list[Conversation]) -> None:
    small = limit(locomo, conversations_max=2, questions_max=3)
    assert len(small) == 2 and all(len(c.questions) == 3 for c in small)
    assert small[0].turns is locomo[0].turns
