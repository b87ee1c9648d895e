"""ChatMessage <-> ContextItem, and exact token counts of LlamaIndex messages.

A message becomes one `ContextItem` whose `text` is what retrieval and the packer see
(text blocks, tool calls rendered as ``[call name({...})]``, thinking, placeholders for
media) and whose metadata keeps:

* ``tool_call_ids`` on an assistant message that calls tools, ``tool_call_id`` on each
  tool result (the core packs such bundles whole);
* ``li_message``: the message as JSON (``ChatMessage.model_dump(mode="json")``), so that
  `TieredMemory.get()` returns real ChatMessages with their blocks and
  ``additional_kwargs`` intact, also after a reopen from disk.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tiered_context.errors import missing_extra

try:
    from llama_index.core.base.llms.types import (
        AudioBlock,
        CachePoint,
        ChatMessage,
        CitableBlock,
        CitationBlock,
        DocumentBlock,
        ImageBlock,
        MessageRole,
        TextBlock,
        ThinkingBlock,
        ToolCallBlock,
        VideoBlock,
    )
except ImportError as exc:  # pragma: no cover - exercised by the import-guard test
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core import ContextItem, TokenCounter

__all__ = [
    "MESSAGE_KEY",
    "MediaTokens",
    "message_text",
    "message_to_item",
    "messages_to_items",
    "item_to_message",
    "copy_message",
    "stored_message",
    "tool_call_ids",
    "tool_result_id",
    "message_tokens",
    "messages_tokens",
    "SizedTokens",
]

#: Metadata key holding the original message JSON.
MESSAGE_KEY = "li_message"
#: Keys that BaseMemoryBlock.aput adds to shared messages; never stored with them.
_TRANSIENT_KWARGS = ("session_id",)
_PLACEHOLDER = re.compile(r"\[(?:image|audio|video|document(?:: [^\]]*)?)\]\s*")


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaTokens:
    """What a non-text block costs, in tokens (LlamaIndex's `Memory` defaults for audio,
    video and documents; images use the counter's `image_tokens`, 85 by default)."""

    image: int | None = None  # None: TokenCounter.image_tokens
    audio: int = 256
    video: int = 256
    document: int = 2048


# -- text a message stands for --------------------------------------------------------
def _call_text(name: str, args: Any) -> str:
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False, default=str, sort_keys=True)
    return f"[call {name}({args})]"


def _kwargs_tool_calls(message: ChatMessage) -> list[tuple[str | None, str, Any]]:
    """OpenAI-style ``additional_kwargs["tool_calls"]`` as (id, name, arguments)."""
    out = []
    for call in message.additional_kwargs.get("tool_calls") or ():
        if isinstance(call, Mapping):
            fn = call.get("function") or call
            ident = call.get("id") or call.get("tool_id")
            name = (fn.get("name") if isinstance(fn, Mapping) else None) or call.get("tool_name") or ""
            args = (fn.get("arguments") if isinstance(fn, Mapping) else None) or call.get("tool_kwargs") or ""
        else:  # an SDK object (openai ChatCompletionMessageToolCall) or a ToolSelection
            fn = getattr(call, "function", None)
            ident = getattr(call, "id", None) or getattr(call, "tool_id", None)
            name = getattr(fn, "name", None) or getattr(call, "tool_name", "") or ""
            args = getattr(fn, "arguments", None) or getattr(call, "tool_kwargs", "") or ""
        out.append((str(ident) if ident else None, str(name), args))
    return out


def tool_call_ids(message: ChatMessage) -> list[str]:
    """Ids of the tool calls a message makes (ToolCallBlocks and OpenAI-style kwargs)."""
    ids = [b.tool_call_id for b in message.blocks if isinstance(b, ToolCallBlock) and b.tool_call_id]
    ids += [i for i, _, _ in _kwargs_tool_calls(message) if i]
    return list(dict.fromkeys(str(i) for i in ids))


def tool_result_id(message: ChatMessage) -> str | None:
    """The id of the call a message answers (a tool result, or a return-direct reply)."""
    ident = message.additional_kwargs.get("tool_call_id")
    return str(ident) if ident else None


def _block_text(block: Any) -> str:
    if isinstance(block, TextBlock):
        return block.text
    if isinstance(block, ThinkingBlock):
        return f"[thinking] {block.content}" if block.content else ""
    if isinstance(block, ToolCallBlock):
        return _call_text(block.tool_name, block.tool_kwargs)
    if isinstance(block, ImageBlock):
        return "[image]"
    if isinstance(block, AudioBlock):
        return "[audio]"
    if isinstance(block, VideoBlock):
        return "[video]"
    if isinstance(block, DocumentBlock):
        return f"[document: {block.title}]" if block.title else "[document]"
    if isinstance(block, CitableBlock):
        return "\n".join(t for t in (_block_text(c) for c in block.content) if t)
    if isinstance(block, CitationBlock):
        return _block_text(block.cited_content)
    return ""  # CachePoint and unknown blocks carry no text


def message_text(message: ChatMessage) -> str:
    """The text a message stands for in retrieval and packing (never empty)."""
    parts = [t for t in (_block_text(b) for b in message.blocks) if t]
    parts += [_call_text(name, args) for _, name, args in _kwargs_tool_calls(message)]
    text = "\n".join(parts).strip()
    return text or "[empty message]"


# -- conversion --------------------------------------------------------------------------
def _stored_json(message: ChatMessage) -> dict[str, Any]:
    data = message.model_dump(mode="json")
    kwargs = data.get("additional_kwargs") or {}
    for key in _TRANSIENT_KWARGS:
        kwargs.pop(key, None)
    return data


def messages_to_items(messages: Sequence[ChatMessage], *, first_position: int, pin_system: bool = True) -> list[ContextItem]:
    """Items for messages appended at `first_position` of a history, each with a fresh
    unique id. Timestamps are positions, not dates: messages come back as messages, so
    the core must not charge for date header lines (the wall clock goes to ``created_at``)."""
    now = time.time()
    return [
        message_to_item(m, id=f"m{first_position + k}-{uuid.uuid4().hex[:12]}",
                        pinned=pin_system and m.role in (MessageRole.SYSTEM, MessageRole.DEVELOPER),
                        timestamp=float(first_position + k), extra={"created_at": now})
        for k, m in enumerate(messages)
    ]


def message_to_item(
    message: ChatMessage,
    *,
    id: str,
    pinned: bool = False,
    timestamp: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ContextItem:
    """One ContextItem for `message`: rendered text, bundle ids, the original as JSON."""
    meta: dict[str, Any] = dict(extra or {})
    calls = tool_call_ids(message)
    if calls:
        meta["tool_call_ids"] = calls
    answered = tool_result_id(message)
    if answered:
        meta["tool_call_id"] = answered
    name = message.additional_kwargs.get("name")
    if isinstance(name, str) and name.strip() and "speaker" not in meta:
        meta["speaker"] = name.strip()  # the core renders and costs "name: text", as the recall block does
    meta[MESSAGE_KEY] = _stored_json(message)
    return ContextItem.create(
        message_text(message), role=message.role.value, id=id, pinned=pinned, timestamp=timestamp, metadata=meta
    )


def copy_message(message: ChatMessage) -> ChatMessage:
    """A copy whose block list and kwargs can be changed without touching `message`
    (blocks themselves are shared: cheap, and LlamaIndex never edits them in place)."""
    return message.model_copy(update={"blocks": list(message.blocks), "additional_kwargs": dict(message.additional_kwargs)})


def stored_message(item: ContextItem) -> ChatMessage | None:
    """The original message kept in `item.metadata` (None for items not made here)."""
    data = item.metadata.get(MESSAGE_KEY)
    return ChatMessage.model_validate(data) if isinstance(data, Mapping) else None


def item_to_message(item: ContextItem, original: ChatMessage | None = None) -> ChatMessage:
    """The message to send for `item`.

    An original comes back as the stored ChatMessage (a copy). A compressed form keeps
    the original's role, media blocks and ``additional_kwargs`` with the shorter text;
    a message that is part of a tool-call bundle always comes back whole (a provider
    rejects a call without its structured arguments). Items not made from a message
    (documents, summaries) become plain messages of their role (``summary`` -> system).
    """
    original = original or stored_message(item)
    if original is None:
        role = item.role if item.role in MessageRole._value2member_map_ else MessageRole.SYSTEM.value
        return ChatMessage(role=role, content=item.text)
    if not item.is_derived or tool_call_ids(original) or tool_result_id(original):
        return copy_message(original)
    text = _PLACEHOLDER.sub("", item.text).strip()
    media = [b for b in original.blocks if isinstance(b, (ImageBlock, AudioBlock, VideoBlock, DocumentBlock, CachePoint))]
    kwargs = {k: v for k, v in original.additional_kwargs.items() if k != "tool_calls"}
    return ChatMessage(role=original.role, blocks=[TextBlock(text=text), *media], additional_kwargs=kwargs)


# -- token counts ---------------------------------------------------------------------
def _parts(blocks: Iterable[Any], media: MediaTokens, counter: TokenCounter) -> tuple[list[dict], int, list[dict], str]:
    """(content parts, media tokens, tool calls, thinking) of a message's blocks."""
    parts: list[dict] = []
    extra = 0
    calls: list[dict] = []
    thinking: list[str] = []
    for b in blocks:
        if isinstance(b, TextBlock):
            parts.append({"type": "text", "text": b.text})
        elif isinstance(b, ThinkingBlock):
            if b.content:
                thinking.append(b.content)
            elif b.num_tokens:
                extra += int(b.num_tokens)
        elif isinstance(b, ToolCallBlock):
            calls.append({"id": b.tool_call_id, "function": {"name": b.tool_name, "arguments": b.tool_kwargs}})
        elif isinstance(b, ImageBlock):
            extra += counter.image_tokens if media.image is None else media.image
        elif isinstance(b, AudioBlock):
            extra += media.audio
        elif isinstance(b, VideoBlock):
            extra += media.video
        elif isinstance(b, DocumentBlock):
            extra += media.document
        elif isinstance(b, CitableBlock):
            p, e, c, t = _parts(b.content, media, counter)
            parts += p
            extra += e
            calls += c
            thinking += [t] if t else []
        elif isinstance(b, CitationBlock):
            p, e, _, _ = _parts([b.cited_content], media, counter)
            parts += p
            extra += e
    return parts, extra, calls, "\n".join(thinking)


def message_tokens(message: ChatMessage, counter: TokenCounter, media: MediaTokens = MediaTokens()) -> int:
    """Tokens `message` costs in a prompt: text, tool calls (name + JSON arguments), tool
    call ids, thinking, media (fixed estimates) and the chat framing."""
    parts, extra, calls, thinking = _parts(message.blocks, media, counter)
    for ident, name, args in _kwargs_tool_calls(message):
        calls.append({"id": ident, "function": {"name": name, "arguments": args}})
    shaped: dict[str, Any] = {"role": message.role.value, "content": parts, "tool_calls": calls}
    if tool_result_id(message):
        shaped["tool_call_id"] = tool_result_id(message)
    if thinking:
        shaped["thinking"] = thinking
    name = message.additional_kwargs.get("name")
    if isinstance(name, str):
        shaped["name"] = name
    return counter.count_message(shaped) + extra


def messages_tokens(messages: Sequence[ChatMessage], counter: TokenCounter, media: MediaTokens = MediaTokens()) -> int:
    """Sum of `message_tokens` (no reply priming: that belongs to the call, not the memory)."""
    return sum(message_tokens(m, counter, media) for m in messages)


class SizedTokens:
    """A `tokenizer_fn` for code that only takes ``len(tokenizer_fn(text))`` (LlamaIndex's
    chat engines do): returns a sized range counted by the memory's `TokenCounter`."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    def __call__(self, text: str) -> range:
        return range(self.counter.count(text or ""))
