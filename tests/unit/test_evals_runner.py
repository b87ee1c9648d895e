"""Strategies, the retention runner and the `tiered-context eval` CLI, on small slices."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tiered_context.cli import main
from tiered_context.evals.datasets import Conversation, Question, Turn, load_locomo, load_qmsum
from tiered_context.evals.retention import (
    ROW_KEYS,
    Assembly,
    BudgetViolation,
    fan_out,
    bootstrap_ci,
    render_markdown,
    run_eval,
    write_reports,
)
from tiered_context.evals.strategies import (
    llm_free,
    STRATEGIES,
    BM25Strategy,
    Packed,
    RecencyStrategy,
    Strategy,
    counter,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LOCOMO = DATA / "locomo" / "locomo_dev5.json"
QMSUM_VAL = DATA / "qmsum" / "val"
BUDGETS = (50, 200, 500, 1000)


@pytest.fixture(scope="module")
def locomo_slice() -> Conversation:
    if not LOCOMO.is_file():
        pytest.skip(f"LoCoMo data not found at {LOCOMO}")
    conv = load_locomo(LOCOMO)[1]
    return replace(conv, questions=conv.questions[:25])


@pytest.fixture(scope="module")
def qmsum_slice() -> Conversation:
    if not QMSUM_VAL.is_dir():
        pytest.skip(f"QMSum data not found at {QMSUM_VAL}")
    conv = load_qmsum(QMSUM_VAL)[0]
    return replace(conv, questions=conv.questions[:10])


def _tiny() -> Conversation:
    turns = [
        Turn(id="t1", speaker="Ana", text="The launch moved to May.", timestamp=1.0, session=1),
        Turn(id="t2", speaker="Bo", text="Lunch is at noon.", timestamp=2.0, session=1),
        Turn(id="t3", speaker="Ana", text="Budget approved for Berlin.", timestamp=3.0, session=2),
    ]
    q = Question(id="q", text="When is the launch?", evidence=("t1",), category="x", answer=None)
    return Conversation(id="tiny", dataset="t", turns=turns, questions=[q], speakers=("Ana", "Bo"))


@pytest.mark.parametrize("factory", [RecencyStrategy, BM25Strategy])
@pytest.mark.parametrize("which", ["locomo_slice", "qmsum_slice"])
def test_baselines_respect_budget(
    factory: type, which: str, request: pytest.FixtureRequest
) -> None:
    conv: Conversation = request.getfixturevalue(which)
    strategy = factory()
    assert isinstance(strategy, Strategy)
    strategy.ingest(conv)
    ids = [t.id for t in conv.turns]
    for budget in BUDGETS:
        for q in conv.questions:
            packed = strategy.context(q, budget)
            assert packed.tokens == counter().count(packed.text) <= budget
            assert packed.covered <= set(ids)
            recall = len(packed.covered & set(q.evidence)) / len(q.evidence)
            assert 0.0 <= recall <= 1.0
            # whole lines only, in chronological order
            lines = packed.text.split("\n") if packed.text else []
            assert len(lines) == len(packed.covered)
            order = sorted(packed.covered, key=ids.index)
            speakers = {t.id: t for t in conv.turns}
            assert lines == [f"{speakers[i].speaker}: {speakers[i].text}" for i in order]


def test_recency_keeps_a_contiguous_tail() -> None:
    strategy = RecencyStrategy()
    conv = _tiny()
    strategy.ingest(conv)
    packed = strategy.context(conv.questions[0], budget=15)
    assert packed.covered == {"t2", "t3"}
    assert packed.text == "Bo: Lunch is at noon.\nAna: Budget approved for Berlin."
    assert strategy.context(conv.questions[0], budget=0) == Packed(text="", tokens=0, covered=set())


def test_bm25_packs_relevant_turns_only() -> None:
    strategy = BM25Strategy()
    conv = _tiny()
    strategy.ingest(conv)
    packed = strategy.context(conv.questions[0], budget=1000)
    assert packed.covered == {"t1"}  # zero-score turns are never packed


def test_run_eval_rows_and_ci(locomo_slice: Conversation) -> None:
    rows = run_eval({"locomo": [locomo_slice]}, ["recency", "bm25"], [200, 1000], progress=False)
    assert rows and all(tuple(r) == ROW_KEYS for r in rows)
    overall = {(r["strategy"], r["budget"]): r for r in rows if r["category"] == "all"}
    assert set(overall) == {(s, b) for s in ("recency", "bm25") for b in (200, 1000)}
    for r in rows:
        assert 0.0 <= r["ci_low"] <= r["recall"] <= r["ci_high"] <= 1.0
        assert r["mean_tokens"] <= r["budget"] and r["seconds"] >= 0
    assert overall[("bm25", 1000)]["questions"] == len(locomo_slice.questions)
    assert overall[("bm25", 1000)]["recall"] >= overall[("recency", 1000)]["recall"]
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    assert bootstrap_ci([0.0, 1.0] * 20) == bootstrap_ci([0.0, 1.0] * 20)  # fixed seed


def test_run_eval_rejects_a_budget_breach() -> None:
    class Cheater(RecencyStrategy):
        name = "cheater"

        def context(self, question: Question, budget: int) -> Packed:
            text = "word " * (budget + 10)
            return Packed(text=text, tokens=budget, covered=set())

    with pytest.raises(BudgetViolation, match="cheater"):
        run_eval({"t": [_tiny()]}, {"cheater": Cheater}, [20], progress=False)


def test_reports(tmp_path: Path) -> None:
    rows = run_eval({"t": [_tiny()]}, {"bm25": BM25Strategy}, [100], progress=False)
    json_path, md_path = write_reports(rows, tmp_path / "out")
    assert json.loads(json_path.read_text()) == rows
    table = md_path.read_text()
    assert table == render_markdown(rows)
    assert "| bm25 | 100 | 1.000 | 1.000 |" in table


def test_registry() -> None:
    assert {"recency", "bm25", "tiered"} <= set(STRATEGIES)


def test_tiered_strategy_on_a_slice(locomo_slice: Conversation) -> None:
    try:
        from tiered_context import TieredContext  # noqa: F401
    except ImportError:
        pytest.skip("tiered_context.TieredContext is not available yet")
    conv = replace(locomo_slice, turns=[t for t in locomo_slice.turns if t.session <= 2])
    ids = {t.id for t in conv.turns}
    conv = replace(conv, questions=[q for q in conv.questions if set(q.evidence) <= ids][:5])
    if not conv.questions:
        pytest.skip("no question of the slice has its evidence in sessions 1-2")
    strategy = STRATEGIES["tiered"]()
    strategy.ingest(conv)
    for q in conv.questions:
        for budget in (200, 1000):
            packed = strategy.context(q, budget)
            assert counter().count(packed.text) <= budget and packed.tokens <= budget
            assert packed.covered <= ids


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not LOCOMO.is_file():
        pytest.skip(f"LoCoMo data not found at {LOCOMO}")
    out = tmp_path / "eval"
    code = main(["eval", "--data-locomo", str(LOCOMO), "--strategies", "recency,bm25",
                 "--limit-conversations", "1", "--limit-questions", "5", "--budgets", "500",
                 "--out", str(out), "--no-progress", "--no-ragas"])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())
    assert rows and all(set(r) == set(ROW_KEYS) for r in rows)
    assert {r["strategy"] for r in rows} == {"recency", "bm25"}
    assert all(r["budget"] == 500 and r["dataset"] == "locomo" for r in rows)
    overall = next(r for r in rows if r["category"] == "all" and r["strategy"] == "bm25")
    assert overall["questions"] == 5
    printed = capsys.readouterr().out
    assert "| bm25 | 500 |" in printed and str(out / "results.json") in printed
    assert (out / "results.md").is_file()


def test_cli_adds_ragas_rows_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ragas")
    pytest.importorskip("tiered_context.evals.ragas_eval")
    conv = tmp_path / "mine.jsonl"
    conv.write_text(json.dumps({
        "id": "c1", "speakers": ["Ana", "Bo"],
        "turns": [{"id": "t1", "speaker": "Ana", "text": "The launch moved to May."},
                  {"id": "t2", "speaker": "Bo", "text": "Lunch is at noon."}],
        "questions": [{"question": "When is the launch?", "evidence": ["t1"], "answer": "May"}],
    }) + "\n")
    assert main(["eval", "--data-jsonl", str(conv), "--strategies", "bm25", "--budgets", "100",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    ragas = {r["category"]: r for r in rows if r["category"].startswith("ragas:")}
    assert ragas["ragas:non_llm_context_recall"]["recall"] == 1.0
    assert "RAGAS metrics" in capsys.readouterr().out


def test_cli_without_ragas_skips_it_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ragas" else find_spec(name, *a))
    assert main(["eval", "--data-jsonl", _jsonl(tmp_path), "--strategies", "bm25", "--budgets", "100",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rows and not any(r["category"].startswith("ragas:") for r in rows)
    assert 'pip install "tiered-context[evals]"' in capsys.readouterr().err


def _jsonl(tmp_path: Path) -> str:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "c", "turns": [{"id": "t", "speaker": "A", "text": "hi"}],
                                "questions": [{"question": "hi?", "evidence": ["t"]}]}) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["eval", "--data-locomo", "/no/such/locomo.json"], "--data-locomo"),
        (["eval", "--data-qmsum", "/no/such/dir"], "--data-qmsum"),
        (["eval"], "--data-locomo"),
        (["eval", "--data-jsonl", "JSONL", "--strategies", "bm25,nope"], "unknown nope"),
        (["eval", "--data-jsonl", "JSONL", "--strategies", "llmlingua"], "--llmlingua-model PATH"),
        (["eval", "--data-jsonl", "JSONL", "--judge", "no_colon"], "--judge takes MODULE:ATTR"),
        (["eval", "--data-jsonl", "JSONL", "--judge", "no_such_module_x:llm"], "--judge no_such_module_x:llm"),
        (["eval", "--data-jsonl", "JSONL", "--judge", "json:loads", "--no-ragas"], "drop --no-ragas"),
        (["eval", "--data-jsonl", "JSONL", "--budgets", "0"], "--budgets"),
    ],
)
def test_cli_errors_name_the_flag(argv: list[str], flag: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = [_jsonl(tmp_path) if a == "JSONL" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "tiered_context.cli", "eval", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--data-qmsum" in done.stdout


def test_on_assembly_sees_every_assembly(locomo_slice: Conversation) -> None:
    seen: list[Assembly] = []
    also: list[Assembly] = []
    conv = replace(locomo_slice, questions=locomo_slice.questions[:6])
    rows = run_eval({"locomo": [conv]}, ["recency", "bm25"], [200, 1000], progress=False,
                    on_assembly=fan_out(seen.append, None, also.append))
    assert seen == also and len(seen) == 2 * 2 * len(conv.questions)
    keys = {(a.question_id, a.strategy, a.budget) for a in seen}
    assert len(keys) == len(seen)
    texts = {t.id: t.text for t in conv.turns}
    for a in seen:
        assert a.dataset == "locomo" and a.conversation_id == conv.id
        assert a.tokens == counter().count(a.context) <= a.budget
        assert isinstance(a.covered, frozenset) and a.report is None
        assert a.evidence_texts == tuple(texts[e] for e in a.evidence)
        assert a.recall == len(a.covered & set(a.evidence)) / len(a.evidence)
        assert a.latency_ms >= 0
    for r in rows:
        assert 0 <= r["latency_p50_ms"] <= r["latency_p95_ms"]
    assert fan_out(None) is None and fan_out(seen.append) == seen.append


def test_tiered_assemblies_carry_the_report() -> None:
    pytest.importorskip("tiered_context").TieredContext  # noqa: B018
    seen: list[Assembly] = []
    run_eval({"t": [_tiny()]}, ["tiered"], [100], progress=False, on_assembly=seen.append)
    (a,) = seen
    assert a.report is not None and set(a.report) == {
        "tokens_per_tier", "candidates", "dropped", "compression_ratio", "seconds"}
    assert sum(a.report["tokens_per_tier"].values()) <= 100


def test_all_means_every_llm_free_strategy() -> None:
    assert "llmlingua" in STRATEGIES and "llmlingua" not in llm_free()
    assert {"recency", "bm25", "tiered", "langchain_trim_messages", "llama_index_chat_memory_buffer",
            "llama_index_memory", "tiered:no-compress", "tiered:summaries"} <= set(llm_free())


def test_mcp_subcommand_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "mcp" in capsys.readouterr().out


def test_jobs_give_the_same_rows_and_assemblies(locomo_slice: Conversation) -> None:
    conv = replace(locomo_slice, questions=locomo_slice.questions[:6])
    timing = {"seconds", "latency_p50_ms", "latency_p95_ms"}
    runs = []
    for jobs in (1, 2):
        seen: list[Assembly] = []
        rows = run_eval({"locomo": [conv]}, ["recency", "bm25", "tiered"], [300, 1000], progress=False,
                        on_assembly=seen.append, jobs=jobs)
        runs.append(([{k: v for k, v in r.items() if k not in timing} for r in rows],
                     sorted((a.strategy, a.budget, a.question_id, a.context) for a in seen)))
    assert runs[0] == runs[1]


def test_bench_workers_threads_rows(tmp_path: Path) -> None:
    """`tiered-context bench workers --only-threads`: a row per store, with the ladder off
    (the put path alone) and on, shares of the in-memory row with the same ladder."""
    assert main(["bench", "workers", "--only-threads", "--threads", "2", "--puts", "3", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "threads.json").read_text())
    assert [(r["store"], r["ladder"]) for r in rows] == [
        (store, ladder) for ladder in (False, True) for store in ("memory", "journal", "qdrant")]
    assert all(r["threads"] == 2 and r["puts_per_s"] > 0 and r["sustained_per_s"] > 0 for r in rows)
    md = (tmp_path / "threads.md").read_text()
    assert "| journal | off | 2 |" in md and "| journal | on | 2 |" in md
