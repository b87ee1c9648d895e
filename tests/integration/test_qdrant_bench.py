"""The Qdrant benchmark's building blocks run (tiny sizes; the real run is the CLI)."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from tiered_context.evals import bench_qdrant  # noqa: E402
from tiered_context.evals.datasets import load_jsonl  # noqa: E402
from tiered_context.evals.retention import run_eval  # noqa: E402


def test_scale_one_measures_everything():
    row = bench_qdrant._scale_one("edge", 300, 3, 16, 5)
    for key in ("ingest_items_per_s", "single_add_per_s", "search_p95_ms", "filtered_p95_ms", "disk_mb", "rss_mb",
                "reopen_s"):
        assert row[key] > 0, key


def test_retention_factory_one_tenant_per_conversation(tmp_path):
    convs = []
    for c in range(2):
        turns = [{"id": f"t{k}", "speaker": "Ana" if k % 2 else "Bo", "text": f"conv {c} fact {k}: code {k * 7 + c}"}
                 for k in range(40)]
        questions = [{"question": f"what is the code of fact {k}?", "evidence": [f"t{k}"]} for k in (3, 17, 31)]
        convs.append(json.dumps({"id": f"c{c}", "turns": turns, "questions": questions}))
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(convs))
    opened: list = []
    factory = bench_qdrant.qdrant_strategy("tiered:qdrant", str(tmp_path / "q"), opened)
    rows = run_eval({"mine": load_jsonl(data)}, {"tiered:qdrant": factory}, [60], progress=False)
    assert rows and rows[0]["questions"] == 6
    assert len(opened) == 2 and opened[0]._handle.conn is opened[1]._handle.conn  # one engine, two tenants
    for s in opened:
        s.close()


def test_paraphrases_are_deterministic_and_different():
    q = "What did Caroline research when she started the course?"
    a, b = bench_qdrant.paraphrase(q, random.Random(1)), bench_qdrant.paraphrase(q, random.Random(1))
    assert a == b and a != q and "Caroline" in a
