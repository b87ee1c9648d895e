"""The per-call view of `TieredContextMiddleware`: what one model call is sent.

Pure functions over LangChain messages and a token budget, with no session state:
where the verbatim current turn starts (`split_tail`), the exact final count and the
last trims (`finalize`), the recall block put into the system prompt, and the
`CallReport` of a call. The middleware (sessions, tenants, archive) calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from tiered_context.core.assembler import AssembledContext
from tiered_context.core.items import ContextItem
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import BudgetError
from tiered_context.langchain._convert import MessageCounter, Piece, is_summary_message, message_text
from tiered_context.langchain._trace import report_outputs

__all__ = ["CallReport", "TAIL_SHARE", "split_tail", "finalize", "tool_call_positions", "recall_tokens",
           "with_recall", "turn_query", "item_value"]

TRUNCATED = " […truncated; the original is archived]"
RECALL_OPEN = "\n\n<recalled_context note=\"earlier items no longer in this conversation's messages\">\n"
RECALL_CLOSE = "\n</recalled_context>"
#: Share of the room left after the system prompt and tools that an oversized current
#: turn may keep verbatim; the older part of the turn then competes like history.
TAIL_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class CallReport:
    """What one model call was sent, in tokens (also the outputs of the traced run)."""

    session: str
    tokens: int
    max_tokens: int
    messages_in: int
    messages_out: int
    system_tokens: int
    tool_tokens: int
    tail_tokens: int
    history_tokens: int
    recalled_items: int
    truncated_tool_results: int
    assembled: AssembledContext | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__ if k != "assembled"}
        out.update(report_outputs(self.assembled))
        return out


def split_tail(messages: list[BaseMessage], available: int, mc: MessageCounter,
               max_tokens: int) -> tuple[int, list[BaseMessage], int]:
    """Where the verbatim current turn starts, its messages, and how many tool results
    had to be truncated to fit `available` (their originals are archived next turn).

    The turn starts at the last user message (not a summary). When it does not fit, its
    latest part is kept (up to `TAIL_SHARE` of the room, never starting on a tool
    message); if even the last round is too big, its longest tool results are cut.
    """
    if not messages:
        return 0, [], 0
    counter = mc.counter
    start = next((i for i in range(len(messages) - 1, -1, -1)
                  if isinstance(messages[i], HumanMessage) and not is_summary_message(messages[i])), None)
    if start is None:
        start = len(messages) - 1
        while start > 0 and isinstance(messages[start], ToolMessage):
            start -= 1
    costs = [mc.message(m) for m in messages[start:]]
    if sum(costs) <= available:
        return start, messages[start:], 0
    limit = int(available * TAIL_SHARE)
    safe = [i for i in range(start, len(messages)) if not isinstance(messages[i], ToolMessage)]
    suffix = {i: sum(costs[i - start:]) for i in safe}
    fitting = [i for i in safe if suffix[i] <= limit]
    cut = fitting[0] if fitting else safe[-1]
    tail = list(messages[cut:])
    if sum(costs[cut - start:]) <= available:
        return cut, tail, 0
    truncated = 0  # still too big: truncate the longest tool results of the last round, pairs intact
    order = sorted((i for i, m in enumerate(tail) if isinstance(m, ToolMessage) and isinstance(m.content, str)),
                   key=lambda i: -mc.message(tail[i]))
    for i in order:
        over = sum(mc.message(m) for m in tail) - available
        if over <= 0:
            break
        msg = tail[i]
        keep = max(1, counter.count(msg.content) - over)
        tail[i] = msg.model_copy(update={"content": counter.truncate(msg.content, keep, marker=TRUNCATED)})
        truncated += 1
    if sum(mc.message(m) for m in tail) > available:
        raise BudgetError(
            f"the latest turn needs {sum(mc.message(m) for m in tail)} tokens but only {available} are left "
            f"of max_tokens={max_tokens} after the system prompt and tools; raise max_tokens"
        )
    return cut, tail, truncated


def finalize(system: SystemMessage | None, kept: list[Piece], recalled: list[tuple[float, str]], tool_tokens: int,
             mc: MessageCounter, max_tokens: int) -> tuple[SystemMessage | None, list[BaseMessage], int]:
    """Exact count of the final prompt; drop the least valuable piece or recalled line
    (never a protected one, never half a tool-call group) until it fits."""
    kept = list(kept)
    recalled = sorted(recalled, key=lambda r: -r[0])
    while True:
        final_system = with_recall(system, [r[1] for r in recalled])
        view = [p.message for p in kept]
        total = mc.messages(([final_system] if final_system is not None else []) + view) + tool_tokens
        if total <= max_tokens:
            return final_system, view, total
        droppable = [p for p in kept if not p.protected]
        low_piece = min(droppable, key=lambda p: (p.value, p.position), default=None)
        if recalled and (low_piece is None or recalled[-1][0] <= low_piece.value):
            recalled.pop()
        elif low_piece is not None:
            kept = [p for p in kept if p.group != low_piece.group or p.protected]
        else:  # only protected content left: cannot happen unless BPE merges differ
            raise BudgetError(f"the current turn needs {total} tokens > max_tokens={max_tokens}; raise max_tokens")


def tool_call_positions(messages: Sequence[BaseMessage]) -> dict[str, list[int]]:
    """tool_call_id -> positions of the AI message making the call and of its results."""
    by_call: dict[str, list[int]] = {}
    for i, m in enumerate(messages):
        if isinstance(m, AIMessage):
            for c in m.tool_calls:
                if c.get("id"):
                    by_call.setdefault(str(c["id"]), []).append(i)
        elif isinstance(m, ToolMessage) and m.tool_call_id:
            by_call.setdefault(str(m.tool_call_id), []).append(i)
    return by_call


def recall_tokens(counter: TokenCounter, recalled: list[tuple[float, str]]) -> int:
    """Tokens the recall block adds to the system prompt."""
    if not recalled:
        return 0
    return counter.count(RECALL_OPEN + RECALL_CLOSE) + sum(counter.count(r[1]) + 1 for r in recalled)


def with_recall(system: SystemMessage | None, lines: list[str]) -> SystemMessage | None:
    """The system message with a ``<recalled_context>`` block of `lines` appended."""
    if not lines:
        return system
    block = RECALL_OPEN + "\n".join(lines) + RECALL_CLOSE
    if system is None:
        return SystemMessage(content=block.lstrip())
    if isinstance(system.content, str):
        return system.model_copy(update={"content": system.content + block})
    return system.model_copy(update={"content": [*system.content, {"type": "text", "text": block}]})


def turn_query(messages: list[BaseMessage], tail: list[BaseMessage], limit: int = 2000) -> str:
    """The retrieval query of a call: the last user message, then the rest of the turn."""
    human = next((m for m in reversed(messages) if isinstance(m, HumanMessage) and not is_summary_message(m)), None)
    parts = [message_text(human)] if human is not None else []
    parts += [message_text(m) for m in tail if m is not human]
    return "\n".join(p for p in parts if p)[:limit]


def item_value(out: AssembledContext, item: ContextItem) -> float:
    """The scorer's value of an assembled item (what competes for the last tokens)."""
    scores = out.report.scores.get(item.origin_ids[0]) or {}
    return float(scores.get("value", 0.0))
