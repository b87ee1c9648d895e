"""OpenTelemetry for tiered-context, without a framework: one span per assembly.

OpenTelemetry stays optional: nothing here imports it at module load, and the core never
imports this module. Install ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http``
(the ``evals`` extra brings them with Arize Phoenix), then::

    from tiered_context.tracing import otlp_tracer_provider, record_assembly

    provider = otlp_tracer_provider("http://127.0.0.1:6006/v1/traces", project="my-app")
    tracer = provider.get_tracer("my-app")
    out = ctx.assemble("When is the launch?", budget=2000)
    record_assembly(tracer, query="When is the launch?", context=out.text,
                    tokens=out.tokens, report=out.report)
    provider.shutdown()          # flushes

Spans follow the OpenInference semantic conventions that Arize Phoenix reads: span kind
``RETRIEVER``, ``input.value`` (the query), ``output.value`` (the assembled context),
``retrieval.documents.<i>.document.content`` (one per context line, first
`MAX_DOCUMENTS`), and the numbers under ``tiered_context.*``: ``tokens`` (out),
``tokens_in`` (original tokens of what was kept, before compression), ``tokens.<tier>``,
``compression_ratio``, ``candidates``, ``dropped``, ``items``, ``latency_ms``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tiered_context.errors import missing_extra

if TYPE_CHECKING:  # pragma: no cover
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["ATTRIBUTE_PREFIX", "MAX_DOCUMENTS", "assembly_attributes", "otlp_tracer_provider",
           "record_assembly"]

ATTRIBUTE_PREFIX = "tiered_context."
#: Context lines exported as retrieval documents per span (the whole text is the output).
MAX_DOCUMENTS = 100


def _report_get(report: Any, key: str, default: Any = None) -> Any:
    """`key` of an `AssemblyReport` or of its mapping form (the eval passes mappings)."""
    if report is None:
        return default
    if isinstance(report, Mapping):
        return report.get(key, default)
    return getattr(report, key, default)


def assembly_attributes(*, query: str, context: str, tokens: int, report: Any = None,
                        latency_ms: float | None = None, compression_ratio: float | None = None,
                        extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The OpenInference + ``tiered_context.*`` attributes of one assembly (flat,
    OpenTelemetry-safe values). `report` is an `AssemblyReport` or a mapping with its
    fields; `extra` keys are prefixed with ``tiered_context.`` and None values dropped."""
    ratio = compression_ratio if compression_ratio is not None else _report_get(report, "compression_ratio")
    lines = [line for line in context.splitlines() if line.strip()]
    attrs: dict[str, Any] = {
        "openinference.span.kind": "RETRIEVER",
        "input.value": query, "input.mime_type": "text/plain",
        "output.value": context, "output.mime_type": "text/plain",
    }
    for i, line in enumerate(lines[:MAX_DOCUMENTS]):
        attrs[f"retrieval.documents.{i}.document.content"] = line
    numbers: dict[str, Any] = {"tokens": int(tokens), "items": len(lines),
                               "candidates": _report_get(report, "candidates"),
                               "dropped": _report_get(report, "dropped"),
                               "latency_ms": latency_ms}
    if ratio is not None:
        numbers["compression_ratio"] = float(ratio)
        numbers["tokens_in"] = int(round(tokens * float(ratio)))
    for tier, n in dict(_report_get(report, "tokens_per_tier", None) or {}).items():
        numbers[f"tokens.{tier}"] = int(n)
    numbers.update(extra or {})
    attrs.update({ATTRIBUTE_PREFIX + k: v for k, v in numbers.items() if v is not None})
    metadata = {k: v for k, v in numbers.items() if v is not None}
    attrs["metadata"] = json.dumps(metadata, default=str)
    return attrs


def record_assembly(tracer: Tracer, *, query: str, context: str, tokens: int, report: Any = None,
                    latency_ms: float | None = None, compression_ratio: float | None = None,
                    extra: Mapping[str, Any] | None = None,
                    name: str = "TieredContextAssembly") -> Span:
    """Emit one finished span for an assembly that already happened. With `latency_ms`
    the span's start is set back by that much, so its duration is the assembly's."""
    end = time.time_ns()
    start = end - int((latency_ms or 0.0) * 1e6)
    span = tracer.start_span(name, start_time=start, attributes=assembly_attributes(
        query=query, context=context, tokens=tokens, report=report, latency_ms=latency_ms,
        compression_ratio=compression_ratio, extra=extra))
    span.end(end_time=end)
    return span


def otlp_tracer_provider(endpoint: str, *, project: str, batch: bool = True) -> TracerProvider:
    """A `TracerProvider` exporting OTLP over HTTP to `endpoint` (``.../v1/traces``) with
    the project name Phoenix files the spans under. Not installed as the global provider;
    call ``shutdown()`` (or ``force_flush()``) to send what is buffered."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise missing_extra("opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http", "evals") from exc
    provider = TracerProvider(resource=Resource.create({"openinference.project.name": project,
                                                        "service.name": project}))
    exporter = OTLPSpanExporter(endpoint=endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider
