"""Exact token counts of LangChain messages: tool calls, reasoning / thinking blocks and
media are counted (never as zero), and the middleware's budget uses those counts."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402

from tiered_context import TokenCounter  # noqa: E402
from tiered_context.langchain._convert import MessageCounter  # noqa: E402

COUNTER = TokenCounter()
MC = MessageCounter(COUNTER)
ARGS = {"query": "word " * 50}


def test_tool_call_arguments_are_counted():
    plain = MC.message(AIMessage(content=""))
    call = AIMessage(content="", tool_calls=[{"name": "search", "args": ARGS, "id": "c1"}])
    assert MC.message(call) - plain >= COUNTER.count(json.dumps(ARGS))
    result = ToolMessage(content="ok " * 30, tool_call_id="c1")
    assert MC.message(result) >= COUNTER.count("ok " * 30)


def test_thinking_and_reasoning_blocks_are_counted():
    reasoning = "let me reason about this carefully, step by step"
    base = MC.message(AIMessage(content=[{"type": "text", "text": "ok"}]))
    for block in ({"type": "thinking", "thinking": reasoning}, {"type": "reasoning", "reasoning": reasoning}):
        with_thinking = AIMessage(content=[block, {"type": "text", "text": "ok"}])
        assert MC.message(with_thinking) - base >= COUNTER.count(reasoning)


def test_images_are_counted_as_image_tokens():
    text = MC.message(HumanMessage(content=[{"type": "text", "text": "what is this?"}]))
    image = MC.message(HumanMessage(content=[{"type": "text", "text": "what is this?"},
                                             {"type": "image", "url": "https://example.invalid/cat.png"}]))
    assert image - text >= COUNTER.image_tokens
