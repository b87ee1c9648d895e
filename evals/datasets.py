"""Readers that turn evaluation data sets into one small, framework-free model.

Every reader yields `Conversation`s: turns in chronological order and the questions
asked about them, each question naming its *evidence* (the ids of the turns that hold
the answer). Retention is then measured as: which evidence turns survive context
assembly under a token budget (see `retention.py`).

Supported inputs:

- LoCoMo (`load_locomo`): the `locomo10.json` list of conversations.
- QMSum (`load_qmsum`): a directory of meeting JSON files.
- LongMemEval (`load_longmemeval`): the official JSON list of questions (``_s_cleaned``,
  ``_oracle``, ``_m``, the older ``longmemeval_s.json``), one history per question.
- Your own data (`load_jsonl`): one conversation per line::

      {"id": "support-42",
       "speakers": ["Ana", "Bot"],                      # optional: who is "user"/"assistant"
       "turns": [{"id": "t1", "speaker": "Ana", "text": "My order #881 is late",
                  "timestamp": 1714000000.0,            # optional, default: turn index
                  "session": 1},                        # optional, default: 1
                 ...],
       "questions": [{"question": "Which order is late?", "evidence": ["t1"],
                      "id": "q1",                       # optional
                      "category": "lookup",             # optional, default "general"
                      "answer": "#881"}]}               # optional

  Turns must be listed in chronological order. As in the other readers, turns without
  text are skipped, evidence ids that name no turn are dropped, and a question left
  without evidence is skipped.

The data files are read from wherever the user keeps them; the project never vendors
their text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "LOCOMO_CATEGORIES",
    "Conversation",
    "Question",
    "Turn",
    "category_label",
    "limit",
    "load_jsonl",
    "load_locomo",
    "load_longmemeval",
    "load_qmsum",
    "split_abstention",
]

#: LoCoMo category numbers (as strings) scored for retention, and their names in the
#: official LoCoMo code. Category 5 (adversarial, false premise) has no evidence to keep.
LOCOMO_CATEGORIES: dict[str, str] = {
    "1": "multi-hop",
    "2": "temporal",
    "3": "open-domain",
    "4": "single-hop",
}


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One utterance. `timestamp` is POSIX seconds and strictly increases along a
    conversation; `session` numbers the sittings (1 when the data has none)."""

    id: str
    speaker: str
    text: str
    timestamp: float
    session: int


@dataclass(frozen=True, kw_only=True)
class Question:
    """A question about a conversation and the ids of the turns that answer it.

    `evidence_groups` (LongMemEval): the turn ids of each answer session; the question
    counts at session level when some turn of every group is in the context.
    `asked_at`: POSIX seconds of the question (None when the data has no date)."""

    id: str
    text: str
    evidence: tuple[str, ...]
    category: str
    answer: str | None
    evidence_groups: tuple[tuple[str, ...], ...] = ()
    asked_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class Conversation:
    """A whole history plus its questions. `speakers` is (first, second) for dialogues
    (the first plays "user", the second "assistant"), None for many-party data."""

    id: str
    dataset: str
    turns: list[Turn]
    questions: list[Question]
    speakers: tuple[str, str] | None


def category_label(category: str) -> str:
    """Column title for a category: ``"single-hop (4)"`` for LoCoMo, else the name."""
    name = LOCOMO_CATEGORIES.get(category)
    return f"{name} ({category})" if name else category


def limit(
    conversations: Iterable[Conversation],
    *,
    conversations_max: int | None = None,
    questions_max: int | None = None,
) -> list[Conversation]:
    """The first `conversations_max` conversations, each keeping its first
    `questions_max` questions (None keeps all). For quick runs."""
    out = list(conversations)[:conversations_max]
    if questions_max is not None:
        out = [replace(c, questions=c.questions[:questions_max]) for c in out]
    return out


# -- shared helpers -------------------------------------------------------------------
def _has_text(text: Any) -> bool:
    """Whether a raw turn says anything. Empty turns (QMSum has a few) are skipped by
    every reader: they hold no information and a memory may refuse them."""
    return isinstance(text, str) and bool(text.strip())


def _question(
    *, qid: str, text: str, evidence: Iterable[str], turn_ids: set[str], category: str, answer: Any
) -> Question | None:
    """A Question keeping only evidence ids that name a turn (in order, deduplicated);
    None when nothing valid is left."""
    kept = tuple(dict.fromkeys(e for e in evidence if e in turn_ids))
    if not kept:
        return None
    return Question(
        id=qid,
        text=text,
        evidence=kept,
        category=category,
        answer=None if answer is None else str(answer),
    )


# -- LoCoMo ---------------------------------------------------------------------------
_SESSION = re.compile(r"session_(\d+)")
_DATE_FORMATS = ("%I:%M %p on %d %B %Y", "%I:%M %p on %d %b %Y", "%I:%M %p on %B %d %Y")


def _parse_locomo_time(raw: str | None) -> float | None:
    """POSIX seconds (UTC) of a LoCoMo session time like ``"1:56 pm on 8 May, 2023"``.

    Tolerates case, commas, extra spaces and ``"1:56pm"``; returns None when unparseable.
    """
    if not raw:
        return None
    text = re.sub(r"(?i)(\d)\s*([ap])\.?m\.?", r"\1 \2m", raw.replace(",", " "))
    text = " ".join(text.split())
    for fmt in _DATE_FORMATS:
        try:
            stamp = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return stamp.replace(tzinfo=timezone.utc).timestamp()
    return None


def _locomo_evidence(raw: Iterable[Any]) -> Iterator[str]:
    """Evidence ids as given; an entry like ``"D8:6; D9:17"`` holds two ids."""
    for entry in raw:
        yield from (part for part in re.split(r"[;,\s]+", str(entry)) if part)


def _locomo_conversation(sample: dict[str, Any]) -> Conversation:
    conv = sample["conversation"]
    numbers = sorted(int(m.group(1)) for k in conv if (m := _SESSION.fullmatch(k)))
    turns: list[Turn] = []
    last = float("-inf")
    for n in numbers:
        start = _parse_locomo_time(conv.get(f"session_{n}_date_time"))
        # An unparseable or out-of-order session time falls back to "right after the
        # previous turn", so turn order stays strict.
        if start is None or start <= last:
            start = 0.0 if last == float("-inf") else last + 1.0
        for i, raw in enumerate(conv[f"session_{n}"]):
            if not _has_text(raw.get("text")):
                continue
            text = raw["text"]
            if raw.get("blip_caption"):
                text += f" [shares a photo: {raw['blip_caption']}]"
            turns.append(
                Turn(id=raw["dia_id"], speaker=raw["speaker"], text=text,
                     timestamp=start + i, session=n)
            )
        if turns:
            last = turns[-1].timestamp
    turn_ids = {t.id for t in turns}
    cid = str(sample.get("sample_id", "conv"))
    questions = []
    for j, qa in enumerate(sample.get("qa", [])):
        category = str(qa.get("category"))
        if category not in LOCOMO_CATEGORIES:
            continue
        q = _question(qid=f"{cid}/q{j}", text=qa["question"],
                      evidence=_locomo_evidence(qa.get("evidence", [])), turn_ids=turn_ids,
                      category=category, answer=qa.get("answer"))
        if q is not None:
            questions.append(q)
    speakers = (conv["speaker_a"], conv["speaker_b"]) if "speaker_b" in conv else None
    return Conversation(id=cid, dataset="locomo", turns=turns, questions=questions,
                        speakers=speakers)


def load_locomo(path: str | Path) -> list[Conversation]:
    """Read a LoCoMo file (a JSON list of conversations), categories 1-4 only.

    Sessions are read in numeric order (``session_10`` after ``session_9``); turn *i* of
    a session is stamped session time + *i* seconds. A photo turn's text ends with
    ``" [shares a photo: {caption}]"``. Evidence ids naming no turn (``"D"``,
    ``"D:11:26"``) are dropped; questions left without evidence are skipped.
    """
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return [_locomo_conversation(sample) for sample in data]


# -- QMSum ----------------------------------------------------------------------------
def _span_ids(spans: Sequence[Sequence[Any]], n_turns: int) -> list[str]:
    """Turn ids in the inclusive ``[["start", "end"], ...]`` ranges; bad spans ignored."""
    ids: list[str] = []
    for span in spans:
        try:
            start, end = (int(x) for x in span)
        except (TypeError, ValueError):
            continue
        ids.extend(str(i) for i in range(max(start, 0), min(end, n_turns - 1) + 1))
    return ids


def load_qmsum(directory: str | Path) -> list[Conversation]:
    """Read a QMSum split directory: one Conversation per ``*.json``, sorted by name.

    Turn ids are the transcript indices (``"0"``, ``"1"``, ...), timestamps the index
    in seconds, all in session 1; the few turns with empty content are skipped (their
    index is simply absent). Questions are the specific queries, with every turn
    of their ``relevant_text_span`` ranges as evidence; category ``"specific"``.
    """
    out = []
    for file in sorted(Path(directory).glob("*.json")):
        with open(file, encoding="utf-8") as fh:
            meeting = json.load(fh)
        transcript = meeting.get("meeting_transcripts", [])
        turns = [
            Turn(id=str(i), speaker=str(t.get("speaker", "")), text=t["content"],
                 timestamp=float(i), session=1)
            for i, t in enumerate(transcript) if _has_text(t.get("content"))
        ]
        turn_ids = {t.id for t in turns}
        questions = []
        for j, qa in enumerate(meeting.get("specific_query_list", [])):
            spans = qa.get("relevant_text_span") or []
            q = _question(qid=f"{file.stem}/q{j}", text=qa["query"],
                          evidence=_span_ids(spans, len(transcript)),
                          turn_ids=turn_ids, category="specific", answer=qa.get("answer"))
            if q is not None:
                questions.append(q)
        out.append(Conversation(id=file.stem, dataset="qmsum", turns=turns,
                                questions=questions, speakers=None))
    return out


# -- LongMemEval ----------------------------------------------------------------------
#: Suffix of LongMemEval's abstention question ids (no evidence: the answer is "not said").
ABSTENTION_SUFFIX = "_abs"
_LME_DATE = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})\s*(?:\([A-Za-z]+\))?\s*(\d{1,2}):(\d{2})")


def _parse_lme_time(raw: Any) -> float | None:
    """POSIX seconds (UTC) of a LongMemEval date like ``"2023/05/30 (Tue) 23:42"``."""
    m = _LME_DATE.search(str(raw or ""))
    if not m:
        return None
    try:
        stamp = datetime(*(int(g) for g in m.groups()), tzinfo=timezone.utc)
    except ValueError:
        return None
    return stamp.timestamp()


def _lme_question(record: dict[str, Any], index: int) -> Conversation:
    qid = str(record.get("question_id", f"q{index}"))
    sessions = record.get("haystack_sessions") or []
    session_ids = [str(s) for s in (record.get("haystack_session_ids") or range(len(sessions)))]
    dates = list(record.get("haystack_dates") or [])
    stamps = [_parse_lme_time(dates[i]) if i < len(dates) else None for i in range(len(sessions))]
    # the files list sessions out of date order for about half the questions: sort (stable,
    # undated sessions keep their place after the previous dated one)
    order, last_key = [], float("-inf")
    for i, stamp in enumerate(stamps):
        key = stamp if stamp is not None else last_key
        order.append((key, i))
        last_key = key
    order.sort()
    turns: list[Turn] = []
    by_session: dict[str, list[str]] = {}
    evidence: list[str] = []
    last = float("-inf")
    for number, (_, i) in enumerate(order, 1):
        start = stamps[i]
        if start is None or start <= last:
            start = 0.0 if last == float("-inf") else last + 1.0
        sid = session_ids[i] if i < len(session_ids) else str(i)
        for j, raw in enumerate(sessions[i] or []):
            if not isinstance(raw, dict) or not _has_text(raw.get("content")):
                continue
            tid = f"{sid}:{j}"
            turns.append(Turn(id=tid, speaker=str(raw.get("role", "user")), text=raw["content"],
                              timestamp=start + j, session=number))
            by_session.setdefault(sid, []).append(tid)
            if raw.get("has_answer") is True:
                evidence.append(tid)
        if turns:
            last = turns[-1].timestamp
    groups = tuple(tuple(by_session[s]) for s in dict.fromkeys(str(a) for a in record.get("answer_session_ids") or [])
                   if by_session.get(s))
    abstention = qid.endswith(ABSTENTION_SUFFIX)
    category = str(record.get("question_type", "general"))
    question = Question(
        id=qid, text=str(record.get("question", "")),
        # an abstention question has no evidence turn: its answer sessions stand in, and it
        # is reported apart (`split_abstention`)
        evidence=tuple(t for g in groups for t in g) if abstention else tuple(dict.fromkeys(evidence)),
        category="abstention" if abstention else category,
        answer=None if record.get("answer") is None else str(record["answer"]),
        evidence_groups=groups, asked_at=_parse_lme_time(record.get("question_date")),
    )
    keep = bool(question.evidence) and bool(question.text.strip())
    return Conversation(id=qid, dataset="longmemeval", turns=turns, questions=[question] if keep else [],
                        speakers=("user", "assistant"))


def load_longmemeval(path: str | Path) -> list[Conversation]:
    """Read an official LongMemEval file (a JSON list of questions): one Conversation per
    question, holding that question's own history.

    Sessions are put in `haystack_dates` order (the files list about half of them out of
    order), turn *j* of a session is stamped session time + *j* seconds, turn ids are
    ``"{session_id}:{j}"``, speakers the roles ("user" plays user). Evidence is the turns
    with ``has_answer: true``; `evidence_groups` the turns of each answer session (the
    session-level row); category the `question_type`; `asked_at` the `question_date`.
    Abstention questions (``question_id`` ending in ``_abs``) have no evidence turn: they
    get category ``"abstention"`` and their answer sessions' turns as evidence, and
    `split_abstention` sets them apart. A question with no evidence at all is skipped
    (its Conversation keeps no question).
    """
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data, dict):  # a single question
        data = [data]
    return [_lme_question(record, i) for i, record in enumerate(data)]


def split_abstention(conversations: Iterable[Conversation]) -> tuple[list[Conversation], list[Conversation]]:
    """(questions with evidence, abstention questions): LongMemEval reports them apart."""
    kept, abstention = [], []
    for conv in conversations:
        if not conv.questions:
            continue
        (abstention if conv.questions[0].category == "abstention" else kept).append(conv)
    return kept, abstention


# -- JSONL (your own data) -------------------------------------------------------------
def load_jsonl(path: str | Path, *, dataset: str = "jsonl") -> list[Conversation]:
    """Read your own conversations, one JSON object per line (format in the module
    docstring). Blank lines are ignored."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            cid = str(record.get("id", f"conv-{lineno}"))
            turns = [
                Turn(id=str(t["id"]), speaker=str(t.get("speaker", "")), text=t["text"],
                     timestamp=float(t.get("timestamp", i)), session=int(t.get("session", 1)))
                for i, t in enumerate(record.get("turns", [])) if _has_text(t.get("text"))
            ]
            turn_ids = {t.id for t in turns}
            questions = []
            for j, qa in enumerate(record.get("questions", [])):
                q = _question(qid=str(qa.get("id", f"{cid}/q{j}")), text=qa["question"],
                              evidence=(str(e) for e in qa.get("evidence", [])),
                              turn_ids=turn_ids, category=str(qa.get("category", "general")),
                              answer=qa.get("answer"))
                if q is not None:
                    questions.append(q)
            speakers = record.get("speakers")
            out.append(Conversation(
                id=cid, dataset=dataset, turns=turns, questions=questions,
                speakers=(str(speakers[0]), str(speakers[1])) if speakers else None,
            ))
    return out
