"""Observability: every assembly is a LangChain chain run with its token counts.

A run named ``TieredContextAssembly`` (tag ``tiered_context``) is started on the
callbacks of the current config (the model node inside `create_agent`, the retriever
run, the compressor's callbacks). Its outputs are the numbers of the assembly: tokens
sent and budget, tokens per tier, items kept and dropped, compression ratio, ladder
events. Any LangChain tracer shows it: LangSmith, and `openinference-instrumentation-
langchain` (one CHAIN span in Phoenix, outputs as its output value, metadata as span
metadata). Tracers that keep an OpenTelemetry span per run (OpenInference's, through
its ``get_span(run_id)``) also get the numbers as flat span attributes: the
``tiered_context.*`` keys of `span_attributes` (``tiered_context.assembled_tokens``,
``tiered_context.tokens.L1`` ...), the names the LlamaIndex adapter uses. Without
callbacks this costs one manager construction and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackManager, CallbackManager
    from langchain_core.runnables import RunnableConfig
    from langchain_core.runnables.config import get_callback_manager_for_config
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain-core", "langchain") from exc

from tiered_context.core import AssembledContext

__all__ = ["RUN_NAME", "TAG", "assembly_run", "current_config", "report_outputs", "span_attributes"]

log = logging.getLogger("tiered_context.langchain")
RUN_NAME = "TieredContextAssembly"
TAG = "tiered_context"


def current_config() -> RunnableConfig | None:
    """The config of the runnable we are inside (a graph node), or None outside one."""
    try:
        from langgraph.config import get_config
    except ImportError:  # pragma: no cover - langgraph ships with langchain>=1
        return None
    try:
        return get_config()
    except RuntimeError:
        return None


def report_outputs(out: AssembledContext | None) -> dict[str, Any]:
    """The numbers of an `AssembledContext` as JSON-friendly run outputs."""
    if out is None:
        return {}
    r = out.report
    return {
        "assembled_tokens": out.tokens,
        "assembly_budget": r.budget,
        "tokens_per_tier": dict(r.tokens_per_tier),
        "candidates": r.candidates,
        "dropped": r.dropped,
        "compression_ratio": r.compression_ratio,
        "assembly_seconds": r.seconds,
        "ladder_events": [{"level": e.level.value, "working_tokens": e.working_tokens, "detail": e.detail}
                          for e in r.events],
    }


def span_attributes(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Run outputs as flat OpenTelemetry attributes under ``tiered_context.``: numbers and
    strings as they are, ``tokens_per_tier`` as ``tokens.<tier>``, other mappings as
    ``<key>.<sub>``, lists by their length."""
    out: dict[str, Any] = {}
    for key, value in outputs.items():
        if isinstance(value, Mapping):
            prefix = "tokens" if key == "tokens_per_tier" else key
            out.update({f"{prefix}.{sub}": v for sub, v in value.items() if isinstance(v, (bool, int, float, str))})
        elif isinstance(value, (list, tuple)):
            out[key] = len(value)
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
    return {f"tiered_context.{k}": v for k, v in out.items()}


def _annotate_spans(child: Any, outputs: Mapping[str, Any]) -> None:
    """Set `span_attributes` on the span each span-keeping handler opened for `child`."""
    attributes: dict[str, Any] | None = None
    for handler in getattr(child, "handlers", ()):
        get_span = getattr(handler, "get_span", None)
        if not callable(get_span):
            continue
        with contextlib.suppress(Exception):  # tracing must never break a model call
            span = get_span(child.run_id)
            if span is not None and span.is_recording():
                attributes = span_attributes(outputs) if attributes is None else attributes
                span.set_attributes(attributes)


class _Run:
    def __init__(self) -> None:
        self.outputs: dict[str, Any] = {}


def _manager(config: RunnableConfig | BaseCallbackManager | None, metadata: Mapping[str, Any]) -> BaseCallbackManager | None:
    if config is None:
        return None
    if isinstance(config, BaseCallbackManager):
        manager = config.copy()
    else:
        if not config.get("callbacks"):
            return None
        manager = get_callback_manager_for_config(config)
    if not manager.handlers:
        return None
    manager.add_tags([TAG], inherit=False)
    manager.add_metadata({"tiered_context": True, **metadata}, inherit=False)
    return manager


@contextlib.contextmanager
def assembly_run(config: RunnableConfig | BaseCallbackManager | None, inputs: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None = None) -> Iterator[_Run]:
    """A child chain run around an assembly; fill ``run.outputs`` inside the block."""
    run = _Run()
    manager = _manager(config, metadata or {})
    if manager is None:
        yield run
        return
    if isinstance(manager, AsyncCallbackManager):  # from an async retriever: use its sync twin
        manager = CallbackManager(handlers=manager.handlers, inheritable_handlers=manager.inheritable_handlers,
                                  parent_run_id=manager.parent_run_id, tags=manager.tags,
                                  inheritable_tags=manager.inheritable_tags, metadata=manager.metadata,
                                  inheritable_metadata=manager.inheritable_metadata)
    try:
        child = manager.on_chain_start(None, dict(inputs), name=RUN_NAME, run_type="chain")
    except Exception:  # tracing must never break a model call
        log.debug("could not start the assembly run", exc_info=True)
        yield run
        return
    try:
        yield run
    except BaseException as exc:
        with contextlib.suppress(Exception):
            child.on_chain_error(exc)
        raise
    _annotate_spans(child, run.outputs)
    with contextlib.suppress(Exception):
        child.on_chain_end(run.outputs)
