"""The eval report: figures and report.md from real eval rows, old rows, RAGAS rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread

from tiered_context.evals.datasets import Conversation, Question, Turn
from tiered_context.evals.report import ci_overlap, main, reference_budget, write_report
from tiered_context.evals.retention import run_eval, write_reports

BUDGETS = (10, 20, 40)


def _conversation() -> Conversation:
    """Twelve turns, three questions in two categories: enough for curves and CIs."""
    facts = ["The launch moved to May.", "Lunch is at noon on Fridays.", "Budget approved for Berlin.",
             "The design review is on Tuesday.", "Ana adopted a cat named Miso.", "Bo runs a marathon in June."]
    turns = [Turn(id=f"t{i}", speaker="Ana" if i % 2 else "Bo", text=f"{fact} Noted, item {i}.",
                  timestamp=float(i), session=1 + i // 6) for i, fact in enumerate(facts * 2)]
    questions = [
        Question(id="q1", text="When is the launch?", evidence=("t0",), category="4", answer="May"),
        Question(id="q2", text="What is the cat called?", evidence=("t4", "t10"), category="1", answer=None),
        Question(id="q3", text="Where was the budget approved?", evidence=("t2",), category="4", answer=None),
    ]
    return Conversation(id="c", dataset="t", turns=turns, questions=questions, speakers=("Ana", "Bo"))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return run_eval({"locomo": [_conversation()]}, ["recency", "bm25"], BUDGETS, progress=False)


def _linked_images(report: Path) -> list[Path]:
    return [report.parent / name for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())]


def test_report_draws_every_figure_and_links_them_relatively(rows: list[dict], tmp_path: Path) -> None:
    report = write_report(rows, tmp_path / "out")
    assert report == tmp_path / "out" / "report.md"
    images = _linked_images(report)
    assert {p.name for p in images} == {"retention.png", "retention_tokens.png", "categories.png", "latency.png"}
    for image in images:
        pixels = imread(image)  # a real PNG, not an empty file
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    text = report.read_text()
    assert "| recency | 10 |" in text and "| bm25 | 40 |" in text  # the recall tables
    assert "95% CI" in text
    measured = next(r for r in rows if (r["strategy"], r["budget"], r["category"]) == ("bm25", 20, "all"))
    assert "| p50 ms | p95 ms |" in text
    assert f"| locomo | bm25 | {measured['latency_p50_ms']:.2f} | {measured['latency_p95_ms']:.2f} |" in text
    assert "## RAGAS" not in text


def test_report_tolerates_old_rows_and_shows_ragas_and_survival(rows: list[dict], tmp_path: Path) -> None:
    dropped = ("ci_low", "ci_high", "seconds", "latency_p50_ms", "latency_p95_ms")
    old = [{k: v for k, v in r.items() if k not in dropped} for r in rows]
    old += [
        {"dataset": "locomo", "strategy": "bm25", "budget": 20, "category": "ragas:context_recall", "recall": 0.5},
        {"dataset": "locomo", "strategy": "bm25", "budget": 20, "category": "ragas:string_similarity", "score": 0.25},
        {"dataset": "locomo", "strategy": "tiered", "budget": 0, "category": "answer_survival", "recall": 0.9,
         "ci_low": 0.8, "ci_high": 1.0, "questions": 10, "mean_tokens": 12.0, "seconds": 0.1,
         "compression_ratio": 1.9, "target_ratio": 2.0, "strict_recall": 0.7},
    ]
    text = write_report(old, tmp_path).read_text()
    assert "mean ms per question" in text  # no measured latency in old rows: the fallback, named
    assert "## RAGAS" in text and "| locomo | bm25 | 20 | 0.500 | 0.250 |" in text
    assert "answer survival" in text and "| tiered | 2x | 1.90x | 0.900 |" in text
    assert all(p.is_file() for p in _linked_images(tmp_path / "report.md"))


def test_report_without_recall_rows_still_writes_markdown(tmp_path: Path) -> None:
    only_ragas = [{"dataset": "d", "strategy": "s", "budget": 100, "category": "ragas:m", "value": 1.0}]
    text = write_report(only_ragas, tmp_path).read_text()
    assert "| d | s | 100 | 1.000 |" in text
    assert not list(tmp_path.glob("*.png"))


def test_reference_budget_prefers_2000_then_the_middle(rows: list[dict]) -> None:
    assert reference_budget(rows) == 20
    assert reference_budget([dict(r, budget=2000) for r in rows[:1]] + rows) == 2000
    assert reference_budget([]) is None


def test_ci_overlap_compares_two_strategies(rows: list[dict]) -> None:
    verdict = ci_overlap(rows, "bm25", "recency", dataset="locomo", budget=40)
    a, b = verdict["bm25"], verdict["recency"]
    assert verdict["difference"] == pytest.approx(a["recall"] - b["recall"], abs=1e-4)
    assert verdict["overlap"] == (a["ci"][0] <= b["ci"][1] and b["ci"][0] <= a["ci"][1])
    fake = [dict(r, ci_low=0.9, ci_high=1.0) if r["strategy"] == "bm25" else dict(r, ci_low=0.0, ci_high=0.1)
            for r in rows]
    assert ci_overlap(fake, "bm25", "recency", dataset="locomo", budget=40)["overlap"] is False
    with pytest.raises(KeyError, match="tiered"):
        ci_overlap(rows, "bm25", "tiered", dataset="locomo", budget=40)


def test_module_cli_redraws_from_results_json(rows: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    json_path, _ = write_reports(rows, tmp_path)
    assert main([str(json_path), "--budget", "40"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert "at budget 40" in (tmp_path / "report.md").read_text()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.json")])
