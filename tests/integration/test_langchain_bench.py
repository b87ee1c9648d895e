"""`evals/bench_langchain.py` runs (tiny size) and reports the overhead ratios."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain.agents")

from tiered_context.evals.bench_langchain import main, make_conversation, run, to_markdown  # noqa: E402


def test_conversation_is_deterministic():
    a, b = make_conversation(40, seed=3), make_conversation(40, seed=3)
    assert a == b and len(a.facts) == 8 and all(a.exchanges[f.turn].user == f.statement for f in a.facts)


def test_bench_reports_ratios_and_agents(tmp_path):
    result = run(turns=24, budget=600)
    o = result["overhead"]
    assert o["tiered"]["calls"] == 24 and o["ratio_tiered_over_summarization"]["mean"] > 0
    assert o["ratio_tiered_over_trim_messages"]["p50"] > 0
    agents = result["agents"]
    assert agents["tiered"]["tokens_per_call_max"] <= 600
    assert agents["tiered"]["summary_calls"] == 0
    assert "tiered / summarization" in to_markdown(result)
    assert main(["--turns", "12", "--budget", "500", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.json").exists() and (tmp_path / "results.md").exists()
