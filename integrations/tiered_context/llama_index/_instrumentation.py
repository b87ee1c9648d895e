"""Spans and events through LlamaIndex's instrumentation dispatcher.

Every assembly the adapters run happens inside a dispatcher span (``TieredMemory.aget``,
``TieredMemoryBlock._aget``, ``TieredRetriever._aretrieve`` ...) and emits a
`TieredAssemblyEvent` carrying the numbers: budget, tokens used, tokens per tier,
tokens saved against the full history, compression ratio, candidates, dropped, seconds.
The compressor postprocessor emits `TieredCompressionEvent`; the working-set ladder of
the core (alert / compress / prune) comes through as `TieredLadderEvent`.

Watch them like any LlamaIndex event::

    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    class Print(BaseEventHandler):
        def handle(self, event, **kwargs):
            if isinstance(event, TieredAssemblyEvent):
                print(event.tokens, event.compression_ratio)

    get_dispatcher().add_event_handler(Print())

Span handlers whose open spans accept ``span[key] = value`` (OpenInference's handler,
which ``openinference-instrumentation-llama-index`` installs for Phoenix) also get the
numbers as span attributes (``tiered_context.tokens``, ``tiered_context.compression_ratio``
...), because such handlers ignore event types they do not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Optional

from tiered_context.errors import missing_extra

try:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events import BaseEvent
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core import AssembledContext, LadderEvent

__all__ = [
    "dispatcher",
    "TieredAssemblyEvent",
    "TieredCompressionEvent",
    "TieredLadderEvent",
    "ATTRIBUTE_PREFIX",
    "emit_assembly",
    "emit_compression",
    "emit_ladder",
]

dispatcher = get_dispatcher("tiered_context.llama_index")
ATTRIBUTE_PREFIX = "tiered_context."


class TieredAssemblyEvent(BaseEvent):
    """One assembly: what was asked, what it cost, what it saved."""

    component: str
    session_id: str
    query: str
    budget: int
    tokens: int
    history_tokens: int = 0
    tokens_saved: int = 0
    tokens_per_tier: Dict[str, int] = {}
    compression_ratio: float = 1.0
    candidates: int = 0
    dropped: int = 0
    items: int = 0
    messages: Optional[int] = None
    seconds: float = 0.0

    @classmethod
    def class_name(cls) -> str:
        return "TieredAssemblyEvent"

    def attributes(self) -> Dict[str, Any]:
        """Flat, OpenTelemetry-safe attributes (str / int / float values)."""
        out: Dict[str, Any] = {
            "component": self.component,
            "session_id": self.session_id,
            "budget": self.budget,
            "tokens": self.tokens,
            "history_tokens": self.history_tokens,
            "tokens_saved": self.tokens_saved,
            "compression_ratio": self.compression_ratio,
            "candidates": self.candidates,
            "dropped": self.dropped,
            "items": self.items,
            "seconds": self.seconds,
        }
        if self.messages is not None:
            out["messages"] = self.messages
        out.update({f"tokens.{tier}": n for tier, n in self.tokens_per_tier.items()})
        return {ATTRIBUTE_PREFIX + k: v for k, v in out.items()}


class TieredCompressionEvent(BaseEvent):
    """Per-node compression by `CompressionPostprocessor`."""

    component: str
    nodes: int
    compressed: int
    tokens_before: int
    tokens_after: int
    compression_ratio: float

    @classmethod
    def class_name(cls) -> str:
        return "TieredCompressionEvent"

    def attributes(self) -> Dict[str, Any]:
        keys = ("component", "nodes", "compressed", "tokens_before", "tokens_after", "compression_ratio")
        return {ATTRIBUTE_PREFIX + k: getattr(self, k) for k in keys}


class TieredLadderEvent(BaseEvent):
    """A step of the working-set ladder (alert, compress into L2, prune to L3)."""

    session_id: str
    level: str
    working_tokens: int
    limit_tokens: int
    item_count: int = 0
    detail: str = ""

    @classmethod
    def class_name(cls) -> str:
        return "TieredLadderEvent"

    def attributes(self) -> Dict[str, Any]:
        keys = ("session_id", "level", "working_tokens", "limit_tokens", "item_count", "detail")
        return {ATTRIBUTE_PREFIX + "ladder." + k: getattr(self, k) for k in keys}


def _annotate_span(span_id: Optional[str], attributes: Mapping[str, Any]) -> None:
    """Set `attributes` on the open span `span_id` of every span handler that supports
    item assignment (OpenInference's spans do). Never raises."""
    if not span_id:
        return
    current: Any = dispatcher
    while current is not None:
        for handler in getattr(current, "span_handlers", ()):
            span = getattr(handler, "open_spans", {}).get(span_id)
            if span is not None and hasattr(type(span), "__setitem__"):
                for key, value in attributes.items():
                    try:
                        span[key] = value
                    except Exception:  # a handler's own validation must not break assembly
                        pass
        current = current.parent if current.propagate else None


def _fire(event: Any) -> None:
    dispatcher.event(event)
    _annotate_span(event.span_id, event.attributes())


def emit_assembly(
    out: AssembledContext,
    *,
    component: str,
    session_id: str,
    query: str,
    budget: int,
    tokens: Optional[int] = None,
    history_tokens: int = 0,
    messages: Optional[int] = None,
) -> TieredAssemblyEvent:
    """Dispatch the event for one assembly (`tokens` overrides the text count, e.g. with
    the exact message count when the result is returned as chat messages)."""
    used = out.tokens if tokens is None else tokens
    event = TieredAssemblyEvent(
        component=component,
        session_id=session_id,
        query=query,
        budget=budget,
        tokens=used,
        history_tokens=history_tokens,
        tokens_saved=max(0, history_tokens - used),
        tokens_per_tier=dict(out.report.tokens_per_tier),
        compression_ratio=float(out.report.compression_ratio),
        candidates=out.report.candidates,
        dropped=out.report.dropped,
        items=len(out.items),
        messages=messages,
        seconds=float(out.report.seconds),
    )
    _fire(event)
    return event


def emit_compression(*, component: str, nodes: int, compressed: int, before: int, after: int) -> TieredCompressionEvent:
    event = TieredCompressionEvent(
        component=component,
        nodes=nodes,
        compressed=compressed,
        tokens_before=before,
        tokens_after=after,
        compression_ratio=round(before / after, 4) if after else 1.0,
    )
    _fire(event)
    return event


def emit_ladder(session_id: str, event: LadderEvent) -> TieredLadderEvent:
    out = TieredLadderEvent(
        session_id=session_id,
        level=event.level.value,
        working_tokens=event.working_tokens,
        limit_tokens=event.limit_tokens,
        item_count=len(event.item_ids),
        detail=event.detail,
    )
    _fire(out)
    return out
