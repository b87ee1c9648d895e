"""`evals/bench_llama_index.py` runs (tiny size) and reports the `aget` latency ratio."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("llama_index.core")

from tiered_context.evals.bench_llama_index import _synthetic, bench_aget, main  # noqa: E402


def test_bench_reports_the_ratio_on_the_same_history():
    result = asyncio.run(bench_aget(_synthetic(turns=80, questions=6), token_limit=400, queries=6, warmup=1))
    assert result["messages"] == 80 and result["queries"] == 6
    assert result["ratio_p50"] > 0 and result["ratio_mean"] > 0
    for name in ("tiered", "llama_index_memory"):
        assert result[name]["p50"] > 0 and result[name]["mean_tokens_returned"] > 0
    assert result["tiered"]["mean_tokens_returned"] <= 400


def test_cli_writes_json(tmp_path):
    out = tmp_path / "r.json"
    main(["--token-limit", "300", "--queries", "3", "--out", str(out)])
    assert json.loads(out.read_text())["token_limit"] == 300
