"""`MessageLog`: the positional index of a `TieredMemory`'s messages.

Every message of the current generation in `get_all()` order, with what the selection
(`_select.Selection`) needs per position without touching the archive: the archive id,
the exact token count, the tool calls a message makes and the call a tool result
answers. The memory appends under its lock; a selection works on a snapshot.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from llama_index.core.base.llms.types import ChatMessage, MessageRole

from tiered_context.llama_index._convert import tool_call_ids, tool_result_id

__all__ = ["MessageLog"]


class MessageLog:
    """Append-only per generation; `clear()` starts the next one."""

    history: List[ChatMessage]
    ids: List[str]  # archive item id per position
    pos: Dict[str, int]  # archive item id -> position
    tokens: List[int]  # exact tokens per position
    results: Dict[str, int]  # tool_call_id -> position of its (first) result
    calls: List[Tuple[str, ...]]  # per position: ids of the calls it makes
    answers: List[Optional[str]]  # per position: the call a tool result answers

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.history, self.ids, self.pos, self.tokens, self.results = [], [], {}, [], {}
        self.calls, self.answers = [], []

    def append(self, item_id: str, message: ChatMessage, tokens: int) -> None:
        position = len(self.history)
        self.history.append(message)
        self.ids.append(item_id)
        self.pos[item_id] = position
        self.tokens.append(tokens)
        answered = tool_result_id(message) if message.role == MessageRole.TOOL else None
        if answered:
            self.results.setdefault(answered, position)
        self.calls.append(tuple(tool_call_ids(message)))
        self.answers.append(answered)

    def __len__(self) -> int:
        return len(self.history)

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)
