"""With `openinference-instrumentation-langchain`, the assembly is a CHAIN span whose
output carries the token counts (what Phoenix shows). Skipped when it is not installed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("openinference.instrumentation.langchain")
pytest.importorskip("opentelemetry.sdk")


def test_openinference_shows_the_assembly_with_token_counts():
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tiered_context.langchain import TieredContextMiddleware
    from tiered_context.langchain.testing import RecordingChatModel
    from tiered_context.testing import HashEmbedder

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        agent = create_agent(RecordingChatModel(responses=["ok"]), tools=[], checkpointer=InMemorySaver(),
                             middleware=[TieredContextMiddleware(max_tokens=300, embedder=HashEmbedder())])
        cfg = {"configurable": {"thread_id": "traced"}}
        agent.invoke({"messages": [HumanMessage("The Lisbon launch moved to 3 May.")]}, cfg)
        agent.invoke({"messages": [HumanMessage("When is the launch?")]}, cfg)
    finally:
        instrumentor.uninstrument()
    spans = [s for s in exporter.get_finished_spans() if s.name == "TieredContextAssembly"]
    assert len(spans) == 2
    attrs = spans[-1].attributes
    assert attrs["openinference.span.kind"] == "CHAIN"
    out = json.loads(attrs["output.value"])
    assert 0 < out["tokens"] <= out["max_tokens"] == 300
    assert out["assembled_tokens"] > 0 and "tokens_per_tier" in out
    assert json.loads(attrs["metadata"])["tiered_context"] is True
