"""LongMemEval in the eval: the reader, the session-level row, abstention apart, the CLI.

On a tiny synthetic file written here (no dataset text in the repository)."""

from __future__ import annotations

import json
from pathlib import Path

from tiered_context.cli import main
from tiered_context.evals.datasets import load_longmemeval, split_abstention
from tiered_context.evals.retention import SESSION_LEVEL, render_markdown, run_eval


def _record(qid: str, *, qtype: str = "multi-session") -> dict:
    return {
        "question_id": qid,
        "question_type": qtype,
        "question": "Which city did I move to, and what pet did I adopt?",
        "answer": "Porto; a cat",
        "question_date": "2023/05/30 (Tue) 23:42",
        # listed out of date order on purpose: the reader sorts by date
        "haystack_session_ids": ["s_late", "s_early", "s_mid"],
        "haystack_dates": ["2023/05/20 (Sat) 10:00", "2023/05/01 (Mon) 09:00", "2023/05/10 (Wed) 08:30"],
        "haystack_sessions": [
            [{"role": "user", "content": "We adopted a grey cat named Miso.", "has_answer": True},
             {"role": "assistant", "content": "Congratulations on Miso!"}],
            [{"role": "user", "content": "Any tips for a quiet apartment?"},
             {"role": "assistant", "content": "Rugs and bookshelves absorb sound."},
             {"role": "user", "content": "   "}],
            [{"role": "user", "content": "I finally moved to Porto last week.", "has_answer": True},
             {"role": "assistant", "content": "Porto is lovely in spring."}],
        ],
        "answer_session_ids": ["s_mid", "s_late"],
    }


def _write(tmp_path: Path) -> Path:
    abstention = _record("q2_abs", qtype="single-session-user")
    for session in abstention["haystack_sessions"]:
        for turn in session:
            turn.pop("has_answer", None)
    file = tmp_path / "lme.json"
    file.write_text(json.dumps([_record("q1"), abstention]))
    return file


def test_reader_sorts_sessions_by_date_and_keeps_evidence(tmp_path: Path) -> None:
    convs = load_longmemeval(_write(tmp_path))
    assert [c.id for c in convs] == ["q1", "q2_abs"]
    conv = convs[0]
    assert conv.dataset == "longmemeval" and conv.speakers == ("user", "assistant")
    assert [t.id for t in conv.turns] == ["s_early:0", "s_early:1", "s_mid:0", "s_mid:1", "s_late:0", "s_late:1"]
    assert [t.session for t in conv.turns] == [1, 1, 2, 2, 3, 3]
    stamps = [t.timestamp for t in conv.turns]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    (q,) = conv.questions
    assert q.category == "multi-session" and q.answer == "Porto; a cat"
    assert set(q.evidence) == {"s_mid:0", "s_late:0"}
    assert q.evidence_groups == (("s_mid:0", "s_mid:1"), ("s_late:0", "s_late:1"))
    assert q.asked_at is not None and q.asked_at > stamps[-1]


def test_abstention_is_set_apart(tmp_path: Path) -> None:
    kept, abstention = split_abstention(load_longmemeval(_write(tmp_path)))
    assert [c.id for c in kept] == ["q1"] and [c.id for c in abstention] == ["q2_abs"]
    (q,) = abstention[0].questions
    assert q.category == "abstention" and q.evidence  # its answer sessions stand in


def test_session_level_row(tmp_path: Path) -> None:
    kept, _ = split_abstention(load_longmemeval(_write(tmp_path)))
    rows = run_eval({"longmemeval": kept}, ["recency"], [20, 1000], progress=False)
    session = {r["budget"]: r for r in rows if r["category"] == SESSION_LEVEL}
    overall = {r["budget"]: r for r in rows if r["category"] == "all"}
    assert session[1000]["recall"] == 1.0 and overall[1000]["recall"] == 1.0
    # a small budget keeps only the last session: one of two answer sessions, one evidence turn
    assert session[20]["recall"] == 0.0 and overall[20]["recall"] == 0.5
    assert "all, session level" in render_markdown(rows)


def test_cli_flag(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code = main(["eval", "--data-longmemeval", str(_write(tmp_path)), "--strategies", "recency,bm25",
                 "--budgets", "1000", "--out", str(out), "--no-progress", "--no-ragas"])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())
    assert {r["dataset"] for r in rows} == {"longmemeval", "longmemeval:abstention"}
    assert any(r["category"] == SESSION_LEVEL for r in rows)
    assert "### longmemeval (1 questions)" in capsys.readouterr().out


def test_bench_long_ingest_rows(tmp_path: Path) -> None:
    from tiered_context.evals.bench_speed import bench_long_ingest, render_bench

    histories = [c.turns for c in load_longmemeval(_write(tmp_path))]
    assert len(histories) >= 2
    assert "skipped" in bench_long_ingest(histories[:1])[0]  # nothing to time after the warm-up
    rows = bench_long_ingest(histories, runs=1)
    assert [r["mode"] for r in rows] == ["put_many", "put"] and all(r["histories"] == 1 for r in rows)
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["tokens_per_cpu_s"] > 0 for r in rows)
    assert "Ingest of a long history" in render_bench(rows)
