"""BaseMessage / Document <-> ContextItem, and exact token counts of LangChain messages.

One message becomes one item:

* ``text``: the message's text parts; every tool call rendered as ``→ name({json args})``;
  images and files as short placeholders (``[image: x.png]``), reasoning left out.
* ``role``: user / assistant / system / tool (a ``ChatMessage`` keeps its own role).
* ``timestamp``: ``additional_kwargs["timestamp"]`` when the message carries one (POSIX
  seconds: an imported multi-party chat keeps its dates), else when it was archived.
* ``metadata``: ``lc_id`` (the message id), ``lc_message`` (the whole message,
  serialised with ``message_to_dict``, so the real message comes back intact),
  ``tool_call_ids`` on an AI message with tool calls and ``tool_call_id`` on a tool
  result (the core bundles them: packing never splits a pair), ``name`` (the speaker).

Counting uses the core `TokenCounter.count_message` on the OpenAI dict form
(``convert_to_openai_messages``): text, tool calls, tool results, images, framing.
LangChain's own ``get_num_tokens`` is never called (it fetches GPT-2 from a model hub).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain_core.documents import Document
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        convert_to_openai_messages,
        message_to_dict,
        messages_from_dict,
    )
    from langchain_core.utils.function_calling import convert_to_openai_tool
except ImportError as exc:  # pragma: no cover - exercised by the import-guard test
    raise missing_extra("langchain-core", "langchain") from exc

from tiered_context.core import REPLY_PRIMING, ContextItem, Role, TokenCounter

__all__ = [
    "SUMMARY_SOURCE",
    "is_summary_message",
    "message_text",
    "message_role",
    "message_to_item",
    "item_to_message",
    "document_to_item",
    "item_to_document",
    "MessageCounter",
    "Piece",
    "fit_pieces",
    "ensure_ids",
    "message_time",
]

#: ``additional_kwargs["lc_source"]`` of the summary message `SummarizationMiddleware` writes.
SUMMARY_SOURCE = "summarization"
_CALL_PREFIX = "→ "
_SKIP_BLOCKS = frozenset({"reasoning", "thinking", "redacted_thinking", "tool_use", "tool_call", "function_call",
                          "tool_call_chunk", "server_tool_call", "server_tool_result"})
_MEDIA_BLOCKS = frozenset({"image", "image_url", "input_image", "audio", "input_audio", "video", "file",
                           "input_file", "document", "media"})


def is_summary_message(message: BaseMessage) -> bool:
    """True for the summary message that `SummarizationMiddleware` puts into the state."""
    return message.additional_kwargs.get("lc_source") == SUMMARY_SOURCE


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, Mapping):
        return ""
    kind = str(block.get("type", "text"))
    if kind in _SKIP_BLOCKS:
        return ""
    if isinstance(block.get("text"), str) and kind not in _MEDIA_BLOCKS:
        return block["text"]
    if kind in _MEDIA_BLOCKS:
        label = "image" if "image" in kind else kind.replace("input_", "")
        meta = block.get("metadata") if isinstance(block.get("metadata"), Mapping) else {}
        name = block.get("filename") or block.get("name") or meta.get("filename") or meta.get("name")
        if name is None and isinstance(block.get("url"), str) and not block["url"].startswith("data:"):
            name = block["url"].rsplit("/", 1)[-1][:60]
        return f"[{label}: {name}]" if name else f"[{label}]"
    return f"[{kind}]"


def message_text(message: BaseMessage) -> str:
    """The searchable text of a message: text parts, tool calls, media placeholders."""
    content = message.content
    parts = [content] if isinstance(content, str) else [_block_text(b) for b in content]
    if isinstance(message, AIMessage):
        for call in message.tool_calls:
            args = json.dumps(call.get("args", {}), ensure_ascii=False, sort_keys=True, default=str)
            parts.append(f"{_CALL_PREFIX}{call.get('name', '')}({args})")
    return "\n".join(p for p in parts if p and p.strip())


def message_role(message: BaseMessage) -> str:
    if isinstance(message, HumanMessage):
        return Role.USER.value
    if isinstance(message, AIMessage):
        return Role.ASSISTANT.value
    if isinstance(message, SystemMessage):
        return Role.SYSTEM.value
    if isinstance(message, (ToolMessage, FunctionMessage)):
        return Role.TOOL.value
    if isinstance(message, ChatMessage):
        return str(message.role)
    return str(message.type)


def ensure_ids(messages: Iterable[BaseMessage]) -> list[BaseMessage]:
    """The messages, each with an id (a copy with a fresh uuid where it had none)."""
    return [m if m.id else m.model_copy(update={"id": str(uuid.uuid4())}) for m in messages]


def message_time(message: BaseMessage, *, default: float) -> float:
    """``additional_kwargs["timestamp"]`` (POSIX seconds) when usable, else `default`."""
    value = message.additional_kwargs.get("timestamp")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 253402300800:
        return float(value)
    return default


def message_to_item(message: BaseMessage, *, timestamp: float | None = None, item_id: str | None = None) -> ContextItem | None:
    """The `ContextItem` for `message`, or None when it carries no text at all."""
    text = message_text(message)
    if not text.strip():
        return None
    meta: dict[str, Any] = {"lc_id": message.id, "lc_message": message_to_dict(message)}
    if message.name:
        meta["name"] = message.name
    if isinstance(message, AIMessage) and message.tool_calls:
        meta["tool_call_ids"] = [str(c["id"]) for c in message.tool_calls if c.get("id")]
    if isinstance(message, ToolMessage) and message.tool_call_id:
        meta["tool_call_id"] = str(message.tool_call_id)
    if is_summary_message(message):
        meta["lc_summary"] = True
    return ContextItem.create(text, role=message_role(message), timestamp=timestamp, metadata=meta,
                              id=item_id or (f"lc:{message.id}" if message.id else None))


def _restore(item: ContextItem) -> BaseMessage | None:
    data = item.metadata.get("lc_message")
    if not isinstance(data, Mapping):
        return None
    try:
        return messages_from_dict([dict(data)])[0]
    except Exception:  # a foreign or corrupted record: fall back to the text
        return None


def _text_only(message: BaseMessage) -> bool:
    if isinstance(message, AIMessage) and message.tool_calls:
        return False  # tool calls must reach the provider exactly as made
    content = message.content
    return isinstance(content, str) or all(
        isinstance(b, str) or (isinstance(b, Mapping) and b.get("type", "text") == "text") for b in content
    )


def item_to_message(item: ContextItem, original: BaseMessage | None = None) -> BaseMessage | None:
    """The message to send for `item` (None if it is not a message, e.g. a document).

    An original item gives back the original message intact. A compressed (L2) or
    truncated form gives a copy of the message with the shorter text, unless the
    message has tool calls or media (then the original goes, so nothing is malformed).
    """
    message = original if original is not None else _restore(item)
    if message is None:
        return None
    if item.is_derived and len(item.origin_ids) == 1 and _text_only(message) and item.text != message_text(message):
        message = message.model_copy(update={"content": item.text})
    return message


def document_to_item(doc: Document, *, position: int | None = None, timestamp: float | None = None) -> ContextItem | None:
    """A `Document` as an item (role ``document``); its metadata and id travel along."""
    if not doc.page_content or not doc.page_content.strip():
        return None
    meta: dict[str, Any] = {"lc_document_metadata": dict(doc.metadata)}
    if doc.id is not None:
        meta["lc_document_id"] = doc.id
    if position is not None:
        meta["lc_position"] = position
    if isinstance(doc.metadata.get("speaker"), str):
        meta["speaker"] = doc.metadata["speaker"]
    item_id = f"doc:{doc.id}" if doc.id else None
    return ContextItem.create(doc.page_content, role=Role.DOCUMENT, timestamp=timestamp, metadata=meta, id=item_id)


def item_to_document(item: ContextItem, *, score: Mapping[str, float] | None = None, tokens: int | None = None) -> Document:
    """A `Document` for an assembled item: its (maybe compressed) text, the original's
    metadata, and a ``tiered_context`` entry (tier, compressed, origin ids, score, tokens)."""
    meta = item.metadata
    if "lc_document_metadata" in meta:
        out_meta = dict(meta["lc_document_metadata"])
        doc_id = meta.get("lc_document_id")
    else:  # a chat item: keep its useful keys, not the serialised message
        out_meta = {k: v for k, v in meta.items() if k != "lc_message"}
        doc_id = None
    out_meta["tiered_context"] = {
        "item_id": item.id,
        "origin_ids": list(item.origin_ids),
        "role": item.role,
        "tier": item.tier.value,
        "compressed": item.is_derived,
        "tokens": tokens if tokens is not None else item.tokens,
        "score": dict(score) if score else {},
        "timestamp": item.timestamp,
    }
    return Document(page_content=item.text, metadata=out_meta, id=doc_id)


class MessageCounter:
    """Exact token counts of LangChain messages and tool schemas with a core `TokenCounter`."""

    #: Cached message counts kept at most (the cache is dropped whole when full).
    CACHE_SIZE = 50_000

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self._tools: dict[tuple[str, int], int] = {}
        self._cache: dict[tuple[Any, ...], int] = {}

    def message(self, message: BaseMessage) -> int:
        """Tokens of one message, framing included (cached by id and content)."""
        content = message.content
        key = (message.id, message.type, content if isinstance(content, str) else repr(content),
               repr(message.tool_calls) if isinstance(message, AIMessage) and message.tool_calls else "",
               getattr(message, "tool_call_id", None), message.name)
        if message.id is not None and (hit := self._cache.get(key)) is not None:
            return hit
        n = self._count(message)
        if message.id is not None:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = n
        return n

    def _count(self, message: BaseMessage) -> int:
        as_dict = convert_to_openai_messages(message)
        if isinstance(message, AIMessage):
            for block in message.content if isinstance(message.content, list) else ():
                if isinstance(block, Mapping) and block.get("type") in ("reasoning", "thinking"):
                    text = block.get("reasoning") or block.get("thinking") or ""
                    as_dict["thinking"] = (as_dict.get("thinking") or "") + str(text)
        return self.counter.count_message(as_dict)

    def messages(self, messages: Sequence[BaseMessage]) -> int:
        """A whole prompt: every message plus the reply priming (= `count_messages`)."""
        return sum(self.message(m) for m in messages) + REPLY_PRIMING

    def tools(self, tools: Sequence[Any]) -> int:
        """Tokens of the tool schemas sent with the call (their OpenAI JSON form)."""
        total = 0
        for tool in tools:
            name = getattr(tool, "name", None) or (tool.get("name") if isinstance(tool, Mapping) else None) or repr(tool)
            key = (str(name), id(tool))
            if key not in self._tools:
                try:
                    schema = convert_to_openai_tool(tool)
                except Exception:
                    schema = tool if isinstance(tool, Mapping) else {"name": str(name)}
                self._tools[key] = self.counter.count(json.dumps(schema, ensure_ascii=False, default=str)) + 3
            total += self._tools[key]
        return total


@dataclass
class Piece:
    """One candidate message of a budgeted view."""

    key: str  # the message id
    message: BaseMessage
    position: float  # sort key in the final view
    value: float
    tokens: int = 0
    protected: bool = False
    group: str = ""  # pieces sharing a group leave together (a tool call and its results)
    calls: frozenset[str] = field(default_factory=frozenset)


def _call_ids(message: BaseMessage) -> frozenset[str]:
    if isinstance(message, AIMessage):
        return frozenset(str(c["id"]) for c in message.tool_calls if c.get("id"))
    if isinstance(message, ToolMessage) and message.tool_call_id:
        return frozenset({str(message.tool_call_id)})
    return frozenset()


def fit_pieces(
    pieces: list[Piece],
    *,
    budget: int,
    fixed_tokens: int,
    counter: MessageCounter,
    partners: Callable[[str], list[Piece]] | None = None,
) -> tuple[list[Piece], list[Piece]]:
    """Complete tool-call groups, drop broken ones, then drop the least valuable groups
    until ``fixed_tokens + pieces`` fits ``budget``. Returns (kept in order, dropped).

    A group is an AI message with tool calls and the tool messages answering it. It is
    kept only whole: every call answered, every tool message preceded by its call (no
    orphaned tool message anywhere, in particular not at the start). `partners(call_id)`
    may supply missing members (from the graph state or the full history).
    """
    by_key = {p.key: p for p in pieces}
    for p in pieces:
        p.calls = _call_ids(p.message)
    if partners is not None:
        known = set().union(*(p.calls for p in pieces)) if pieces else set()
        for call_id in sorted(known):
            for extra in partners(call_id):
                if extra.key not in by_key:
                    extra.calls = _call_ids(extra.message)
                    extra.value = max(extra.value, max((p.value for p in pieces if call_id in p.calls), default=0.0))
                    by_key[extra.key] = extra
                    pieces.append(extra)
    # union the pieces sharing call ids
    parent = {p.key: p.key for p in pieces}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    owner: dict[str, str] = {}
    for p in pieces:
        for c in p.calls:
            if c in owner:
                parent[find(p.key)] = find(owner[c])
            else:
                owner[c] = p.key
    groups: dict[str, list[Piece]] = {}
    for p in pieces:
        p.group = find(p.key)
        groups.setdefault(p.group, []).append(p)
    dropped: list[Piece] = []
    for gid, members in list(groups.items()):
        if not any(m.calls for m in members):
            continue
        asked = set().union(*(m.calls for m in members if isinstance(m.message, AIMessage)))
        answered = set().union(*(m.calls for m in members if isinstance(m.message, ToolMessage)))
        first = min(members, key=lambda m: m.position)
        complete = asked and asked == answered and isinstance(first.message, AIMessage)
        if not complete and not any(m.protected for m in members):
            dropped.extend(members)
            del groups[gid]
    for members in groups.values():
        for m in members:
            if not m.tokens:
                m.tokens = counter.message(m.message)
    total = fixed_tokens + sum(m.tokens for ms in groups.values() for m in ms)
    order = sorted((g for g in groups if not any(m.protected for m in groups[g])),
                   key=lambda g: (max(m.value for m in groups[g]), min(m.position for m in groups[g])))
    for gid in order:
        if total <= budget:
            break
        members = groups.pop(gid)
        total -= sum(m.tokens for m in members)
        dropped.extend(members)
    kept = sorted((m for ms in groups.values() for m in ms), key=lambda m: m.position)
    return kept, dropped
