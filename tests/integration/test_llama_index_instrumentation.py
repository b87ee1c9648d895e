"""Spans and events through LlamaIndex's instrumentation dispatcher, and the guard that
names the extra when llama-index-core is missing."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Optional

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.span import BaseSpan  # noqa: E402
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler  # noqa: E402
from llama_index.core.schema import NodeWithScore, TextNode  # noqa: E402

from tiered_context.llama_index import TieredAssemblyEvent, TieredCompressionEvent, TieredLadderEvent
from tiered_context.llama_index._instrumentation import dispatcher
from tiered_context.llama_index import TieredMemory  # noqa: E402
from tiered_context.llama_index import CompressionPostprocessor  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402


class AttributeSpan(BaseSpan):
    """A span that takes attributes like OpenInference's (``span[key] = value``)."""

    name: str = ""
    attributes: Dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.attributes[key] = value


class Spans(BaseSpanHandler[AttributeSpan]):
    def new_span(self, id_: str, bound_args: inspect.BoundArguments, instance: Optional[Any] = None,
                 parent_span_id: Optional[str] = None, tags: Optional[Dict[str, Any]] = None, **kwargs: Any) -> AttributeSpan:
        return AttributeSpan(id_=id_, parent_id=parent_span_id, name=id_.partition("-")[0], attributes={})

    def prepare_to_exit_span(self, id_: str, bound_args: inspect.BoundArguments, instance: Optional[Any] = None,
                             result: Optional[Any] = None, **kwargs: Any) -> AttributeSpan:
        with self.lock:
            span = self.open_spans[id_]
            self.completed_spans.append(span)
        return span

    def prepare_to_drop_span(self, id_: str, bound_args: inspect.BoundArguments, instance: Optional[Any] = None,
                             err: Optional[BaseException] = None, **kwargs: Any) -> Optional[AttributeSpan]:
        return self.open_spans.get(id_)


class Events(BaseEventHandler):
    events: List[Any] = []

    @classmethod
    def class_name(cls) -> str:
        return "Events"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def handlers():
    spans, events = Spans(), Events(events=[])
    dispatcher.add_span_handler(spans)
    dispatcher.add_event_handler(events)
    yield spans, events
    dispatcher.span_handlers.remove(spans)
    dispatcher.event_handlers.remove(events)


def test_memory_get_is_a_span_with_assembly_attributes(handlers):
    spans, events = handlers
    memory = TieredMemory.from_defaults(token_limit=120, embedder=HashEmbedder(), compaction="inline", session_id="obs")
    for i in range(40):
        memory.put(ChatMessage(role="user", content=f"Message {i} about the Lisbon launch planning and budget."))
    asyncio.run(memory.aget(input="Lisbon budget"))
    memory.get()
    assembled = [e for e in events.events if isinstance(e, TieredAssemblyEvent)]
    assert len(assembled) == 2
    event = assembled[0]
    assert event.session_id == "obs" and event.budget == 120 and 0 < event.tokens <= 120
    assert event.history_tokens > event.tokens and event.tokens_saved == event.history_tokens - event.tokens
    assert event.compression_ratio >= 1.0 and event.messages and event.candidates >= event.items
    names = [s.name for s in spans.completed_spans]
    assert "TieredMemory.aget" in names and "TieredMemory.get" in names
    span = next(s for s in spans.completed_spans if s.name == "TieredMemory.aget")
    assert event.span_id == span.id_
    assert span.attributes["tiered_context.tokens"] == event.tokens
    assert span.attributes["tiered_context.compression_ratio"] == event.compression_ratio
    assert span.attributes["tiered_context.tokens_saved"] == event.tokens_saved
    assert "tiered_context.tokens.L1" in span.attributes


def test_compression_and_ladder_events(handlers):
    _, events = handlers
    long = "The quarterly planning offsite will take place in Lisbon on 3 May, with a long discussion about venues. " * 3
    CompressionPostprocessor(ratio=0.5).postprocess_nodes([NodeWithScore(node=TextNode(text=long), score=1.0)])
    compression = [e for e in events.events if isinstance(e, TieredCompressionEvent)]
    assert compression and compression[0].tokens_after < compression[0].tokens_before
    assert compression[0].attributes()["tiered_context.compression_ratio"] > 1
    memory = TieredMemory.from_defaults(token_limit=50, embedder=HashEmbedder(), compaction="inline", session_id="ladder")
    for i in range(30):
        memory.put(ChatMessage(role="user", content=f"Turn {i}: we discussed the venue, the catering and the agenda of the offsite at some length."))
    ladder = [e for e in events.events if isinstance(e, TieredLadderEvent)]
    assert {e.level for e in ladder} >= {"alert", "compress"}
    assert all(e.session_id == "ladder" for e in ladder)


def test_missing_llama_index_names_the_extra():
    code = textwrap.dedent("""
        import sys
        for name in list(sys.modules):
            if name.startswith("llama_index"):
                del sys.modules[name]
        sys.modules["llama_index"] = None
        sys.modules["llama_index.core"] = None
        import tiered_context
        for module in ("_memory", "_blocks", "_postprocessors", "_retriever", "_embeddings", "_instrumentation", "_convert", "_select"):
            try:
                __import__(f"tiered_context.llama_index.{module}")
            except ImportError as exc:
                assert type(exc).__name__ == "DependencyError", exc
                assert 'pip install "tiered-context[llama-index]"' in str(exc), exc
            else:
                raise SystemExit(f"{module} imported without llama-index-core")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
