"""A real Phoenix server on loopback: the eval's assemblies, the LlamaIndex memory and the
LangChain middleware all show up as spans with their token counts, read back through
Phoenix's own client; the results land as a dataset + experiment. (~10-20 s: one server
for the module.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("phoenix.server.main")
pytest.importorskip("phoenix.client")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from tiered_context.evals.datasets import limit, load_locomo  # noqa: E402
from tiered_context.evals.phoenix import DATASET, PhoenixObserver, phoenix_session  # noqa: E402
from tiered_context.evals.retention import run_eval  # noqa: E402


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Phoenix returns attributes nested by their dotted names: flatten them back."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def spans(observer: PhoenixObserver, keep: Callable[[dict[str, Any]], bool], at_least: int,
          timeout: float = 30.0) -> list[dict[str, Any]]:
    """Flushed spans of the project that `keep` accepts, once there are `at_least` of them
    (Phoenix inserts spans in the background)."""
    observer.flush()
    deadline = time.monotonic() + timeout
    while True:
        frame = observer.client().spans.get_spans_dataframe(project_identifier=observer.project, limit=5000)
        rows = []
        for record in frame.to_dict("records"):
            attrs = flatten({k[len("attributes."):]: v for k, v in record.items()
                             if k.startswith("attributes.") and v is not None and v == v})
            rows.append({"name": record["name"], "span_kind": record["span_kind"],
                         "duration_ms": (record["end_time"] - record["start_time"]).total_seconds() * 1000,
                         **attrs})
        found = [r for r in rows if keep(r)]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixObserver]:
    with phoenix_session(tmp_path_factory.mktemp("eval")) as observer:
        yield observer


def test_server_listens_on_loopback_only(phoenix):
    assert phoenix.url.startswith("http://127.0.0.1:") and phoenix.server_pid is not None
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    listing = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    local = [line.split()[3] for line in listing.splitlines() if f"pid={phoenix.server_pid}," in line]
    assert len(local) >= 2, listing  # HTTP and the OTLP gRPC receiver
    for address in local:
        host = address.rsplit(":", 1)[0]
        assert host in {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}, f"Phoenix listens on {address}"


def test_eval_assemblies_are_spans_and_results_an_experiment(phoenix, shared_data):
    conv = limit(load_locomo(shared_data / "locomo" / "locomo_dev5.json"), conversations_max=1, questions_max=5)
    rows = run_eval({"locomo": conv}, ["bm25", "tiered"], [500], progress=False, on_assembly=phoenix)
    found = spans(phoenix, lambda r: r["name"].startswith("assemble:"), at_least=10)
    assert len(found) == 10
    questions = {q.text for q in conv[0].questions}
    for span in found:
        assert span["span_kind"] == "RETRIEVER" and span["openinference.span.kind"] == "RETRIEVER"
        assert span["input.value"] in questions and span["output.value"]
        assert 0 < span["tiered_context.tokens"] <= 500 == span["tiered_context.budget"]
        assert span["tiered_context.items"] >= 1 and span["tiered_context.latency_ms"] > 0
        assert 0.0 <= span["tiered_context.recall"] <= 1.0 and span["tiered_context.dataset"] == "locomo"
        assert any(k.startswith("retrieval.documents") for k in span)
    tiered = [s for s in found if s["tiered_context.strategy"] == "tiered"]
    assert len(tiered) == 5
    for span in tiered:
        per_tier = {k: v for k, v in span.items() if k.startswith("tiered_context.tokens.")}
        assert per_tier and sum(per_tier.values()) > 0
        assert span["tiered_context.compression_ratio"] >= 1.0
        assert span["tiered_context.tokens_in"] >= span["tiered_context.tokens"]
        assert span["tiered_context.candidates"] >= 1

    experiment = phoenix.log_results(rows)
    assert len(experiment["task_runs"]) == len(rows)
    recalls = sorted(run.result["score"] for run in experiment["evaluation_runs"])
    assert recalls == sorted(float(r["recall"]) for r in rows)
    dataset = phoenix.client().datasets.get_dataset(dataset=DATASET)
    assert len(dataset.examples) == len(rows)
    again = phoenix.log_results(rows, experiment_name="second run")  # same dataset, one more experiment
    assert again["dataset_id"] == experiment["dataset_id"]


def test_llama_index_memory_spans_carry_token_counts(phoenix):
    pytest.importorskip("openinference.instrumentation.llama_index")
    from llama_index.core.base.llms.types import ChatMessage

    from tiered_context.llama_index import TieredMemory
    from tiered_context.testing import HashEmbedder

    memory = TieredMemory.from_defaults(token_limit=120, embedder=HashEmbedder(), compaction="inline",
                                        session_id="phoenix")
    for i in range(30):
        memory.put(ChatMessage(role="user", content=f"Message {i} about the Lisbon launch planning and budget."))
    asyncio.run(memory.aget(input="Lisbon budget"))
    found = spans(phoenix, lambda r: r["name"] == "TieredMemory.aget", at_least=1)
    assert found, "no TieredMemory.aget span reached Phoenix"
    span = found[0]
    assert 0 < span["tiered_context.tokens"] <= 120 == span["tiered_context.budget"]
    assert span["tiered_context.session_id"] == "phoenix"
    assert span["tiered_context.tokens_saved"] > 0 and span["tiered_context.compression_ratio"] >= 1.0
    assert any(k.startswith("tiered_context.tokens.L") for k in span)


def test_langchain_middleware_assembly_span_carries_token_counts(phoenix):
    pytest.importorskip("openinference.instrumentation.langchain")
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.memory import InMemorySaver

    from tiered_context.langchain import TieredContextMiddleware
    from tiered_context.langchain.testing import RecordingChatModel
    from tiered_context.testing import HashEmbedder

    agent = create_agent(RecordingChatModel(responses=["ok"]), tools=[], checkpointer=InMemorySaver(),
                         middleware=[TieredContextMiddleware(max_tokens=300, embedder=HashEmbedder())])
    cfg = {"configurable": {"thread_id": "phoenix"}}
    agent.invoke({"messages": [HumanMessage("The Lisbon launch moved to 3 May.")]}, cfg)
    agent.invoke({"messages": [HumanMessage("When is the launch?")]}, cfg)
    found = spans(phoenix, lambda r: r["name"] == "TieredContextAssembly", at_least=2)
    assert len(found) == 2
    assert all(s["span_kind"] == "CHAIN" and s["tiered_context.tokens"] > 0 for s in found)
    span = next(s for s in found if "tiered_context.assembled_tokens" in s)  # the call with history
    assert 0 < span["tiered_context.assembled_tokens"] <= 300
    assert any(k.startswith("tiered_context.tokens.") for k in span)
    assert json.loads(span["output.value"])["assembled_tokens"] == span["tiered_context.assembled_tokens"]
