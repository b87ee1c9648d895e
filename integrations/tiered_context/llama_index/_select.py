"""How `TieredMemory.get` builds what the model receives.

1. The *tail*: the current exchange (the latest user message and the tool loop after
   it) and up to `recent_messages` messages before it, verbatim, as real ChatMessages.
2. The *recall*: the core assembles the older history under what is left of the limit;
   its items (originals retrieved from the archive, compressed forms, summaries) become
   ONE labelled, dated, speaker-attributed block appended to the system message
   (`core.recalled_block`, the one format of both adapters). With ``in_place=True`` recalled originals and compressed forms go back
   as messages at their positions instead (the previous behaviour; summaries still go
   to the block).
3. The conversation contract (`core.conversation.enforce`) over system + tail: ends with
   the current turn and tool loop verbatim (oversized tool results cut with a marker,
   never the user's turn), first non-system message the user's, tool results right after
   their calls, roles strictly alternating with ``alternate=True``; within the limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from tiered_context.errors import missing_extra

try:
    from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core import AssembledContext, ContextItem, Turn, current_exchange, enforce, recalled_block
from tiered_context.llama_index._convert import copy_message, item_to_message, message_text

if TYPE_CHECKING:  # pragma: no cover
    from tiered_context.llama_index._memory import TieredMemory

__all__ = ["Selection", "Entry", "MemoryView", "input_text", "turn_role"]

log = logging.getLogger("tiered_context.llama_index")

_ROLES = {
    MessageRole.SYSTEM: "system", MessageRole.DEVELOPER: "system", MessageRole.USER: "user",
    MessageRole.TOOL: "tool", MessageRole.FUNCTION: "tool",
}
CUT_MARKER = " [… tool result cut to fit the context window]"
#: The most of the limit that recent messages before the current exchange may take.
RECENT_SHARE = 0.4
#: Below this many tokens of room, no recall block is assembled.
MIN_RECALL_TOKENS = 24
#: Sizes the block's label: one line without a date (the core pays lines and day headers).
_PROBE = ContextItem(id="_", text="x", role="user", timestamp=1.0)
_PROBE_LINE = "user: x"


def turn_role(message: ChatMessage) -> str:
    return _ROLES.get(message.role, "assistant")


def input_text(input: Any) -> str:
    if isinstance(input, ChatMessage):
        return input.content or ""
    return "" if input is None else str(input)


@dataclass(frozen=True, slots=True)
class Entry:
    """A message the selection may send: the positions in `get_all()` it stands for
    (None for the recall block) and the message itself."""

    positions: Tuple[Optional[int], ...]
    message: ChatMessage


@dataclass(frozen=True, slots=True)
class MemoryView:
    """One `TieredMemory.select()`: what `get()` returns and why.

    `messages` (to send), `positions` (per message: its index in `get_all()`, None for a
    system message holding the recall block or for merged messages' extra parts),
    `recalled` (positions of the history lines in the recall block), `assembled` (the
    core's result behind the recall, or None: pass it to `TieredMemory.feedback`),
    `tokens` (exact, as the memory counts them).
    """

    messages: List[ChatMessage]
    positions: List[Optional[int]]
    recalled: List[int]
    assembled: Optional[AssembledContext]
    tokens: int

    @property
    def shown(self) -> List[int]:
        """Every position of `get_all()` the model sees, verbatim or in the block."""
        return sorted({p for p in self.positions if p is not None} | set(self.recalled))


class Selection:
    """One `get`: a snapshot of the log, the tail, the recall, the contract."""

    def __init__(self, memory: "TieredMemory", input: Any, limit: int) -> None:
        self.m = memory
        self.ctx: Any = None
        self.limit = limit
        log_ = memory._log  # a snapshot: puts may continue while this selection runs
        self.history = list(log_.history)
        self.pos = dict(log_.pos)
        self.ids = list(log_.ids)
        self.tokens = list(log_.tokens)
        self.calls = [tuple(c) for c in log_.calls]
        self.answers = list(log_.answers)
        self.history_tokens = sum(self.tokens)
        self.query = input_text(input) or self._latest_user_text()
        self.out: Optional[AssembledContext] = None
        self.block_items: List[ContextItem] = []
        self.inplace: Dict[int, ChatMessage] = {}
        self.view: Optional[MemoryView] = None
        n = len(self.history)
        self._pair_anonymous_results()
        self.system = [p for p in range(n) if turn_role(self.history[p]) == "system" and memory.pin_system]
        rest = [p for p in range(n) if p not in set(self.system) and turn_role(self.history[p]) != "system"]
        self.rest = rest
        live = current_exchange([self._turn(p) for p in rest])
        start = max(0, live - memory.recent_messages)
        while start > 0 and turn_role(self.history[rest[start]]) == "tool":
            start -= 1  # never start the tail on a tool result: take its call too
        fixed = sum(self.tokens[p] for p in self.system)
        if sum(self.tokens[p] for p in rest) + fixed <= limit:
            start = 0  # everything fits: the whole history, verbatim, nothing to recall
        # otherwise the recent messages before the live exchange take at most RECENT_SHARE
        # of the limit when that leaves room for a recall (the live exchange is always sent)
        live_cost = fixed + sum(self.tokens[p] for p in rest[live:])
        recall_possible = limit * (1 - RECENT_SHARE) - live_cost - self._block_overhead() >= MIN_RECALL_TOKENS
        while recall_possible and start and start < live and sum(self.tokens[p] for p in rest[start:live]) > RECENT_SHARE * limit:
            start += 1
            while start < live and turn_role(self.history[rest[start]]) == "tool":
                start += 1
        self.tail = rest[start:]
        self.older = [p for p in range(n) if p not in set(self.tail) and p not in set(self.system)]
        # the tail under the contract alone: what the recall may not take
        base = self._enforce(self.system, self.tail, None)
        self.base_tokens = sum(t.tokens for t in base)
        shown = {p for t in base for p in t.payload.positions if p is not None}
        self.shown = shown
        room = limit - self.base_tokens - self._block_overhead()
        # the core also returns the pinned system messages (sent verbatim here, filtered
        # out of the block): its budget carries their cost on top of the room
        pinned = sum(self.tokens[p] for p in self.system)
        self.recall_budget: Optional[int] = (room + pinned if (self.older and room >= MIN_RECALL_TOKENS and self.query.strip())
                                             else None)
        self._tries = 0

    # -- turns ---------------------------------------------------------------------------
    def _pair_anonymous_results(self) -> None:
        """A tool result without a call id answers the nearest assistant message before it
        (LlamaIndex's older agents): give both a shared synthetic id."""
        for p, message in enumerate(self.history):
            if turn_role(message) != "tool" or self.answers[p]:
                continue
            for q in range(p - 1, max(-1, p - 64), -1):
                if turn_role(self.history[q]) == "assistant":
                    ident = f"~anonymous-{q}"
                    if ident not in self.calls[q]:
                        self.calls[q] = self.calls[q] + (ident,)
                    self.answers[p] = ident
                    break

    def _turn(self, p: int, message: Optional[ChatMessage] = None, tokens: Optional[int] = None) -> Turn:
        message = message or self.history[p]
        role = turn_role(message)
        return Turn(role, self.tokens[p] if tokens is None else tokens,
                    tool_call_ids=self.calls[p] if role == "assistant" else (),
                    tool_call_id=self.answers[p] if role == "tool" else None,
                    payload=Entry((p,), message))

    def _cut(self, turn: Turn, max_tokens: int) -> Turn:
        """A tool result shortened to `max_tokens` (marker included); never a user turn."""
        entry: Entry = turn.payload
        original = entry.message
        text = message_text(original)
        frame = self.m.count_tokens([ChatMessage(role=original.role, content="", additional_kwargs=original.additional_kwargs)])
        room = max(0, max_tokens - frame)
        for _ in range(4):
            short = self.m.counter.truncate(text, room, marker=CUT_MARKER) if room > 0 else CUT_MARKER.strip()
            message = ChatMessage(role=original.role, content=short, additional_kwargs=dict(original.additional_kwargs))
            tokens = self.m.count_tokens([message])
            if tokens <= max_tokens or room <= 0:
                break
            room -= tokens - max_tokens
        return Turn(turn.role, tokens, tool_call_ids=turn.tool_call_ids, tool_call_id=turn.tool_call_id,
                    payload=Entry(entry.positions, message))

    def _merge(self, a: Turn, b: Turn) -> Turn:
        """Two consecutive messages of one role as one (``alternate=True``)."""
        ma, mb = a.payload.message, b.payload.message
        kwargs = {**mb.additional_kwargs, **ma.additional_kwargs}
        calls = list(ma.additional_kwargs.get("tool_calls") or []) + list(mb.additional_kwargs.get("tool_calls") or [])
        if calls:
            kwargs["tool_calls"] = calls
        blocks = [*ma.blocks, TextBlock(text="\n\n"), *mb.blocks]
        message = ChatMessage(role=ma.role, blocks=blocks, additional_kwargs=kwargs)
        return Turn(a.role, self.m.count_tokens([message]), tool_call_ids=a.tool_call_ids + b.tool_call_ids,
                    payload=Entry(a.payload.positions + b.payload.positions, message))

    def _system_turns(self, block: str) -> List[Turn]:
        turns = [self._turn(p) for p in self.system]
        if not block:
            return turns
        if turns:  # the block goes into the (first) system message, as LlamaIndex's Memory does
            first = turns[0].payload.message
            message = ChatMessage(role=first.role, blocks=[*first.blocks, TextBlock(text="\n\n" + block)],
                                  additional_kwargs=dict(first.additional_kwargs))
            turns[0] = Turn("system", self.m.count_tokens([message]), payload=Entry(turns[0].payload.positions + (None,), message))
            return turns
        message = ChatMessage(role=MessageRole.SYSTEM, content=block)
        return [Turn("system", self.m.count_tokens([message]), payload=Entry((None,), message))]

    def _enforce(self, system: List[int], tail: List[int], block: Optional[str], extra: Optional[List[int]] = None) -> List[Turn]:
        turns = self._system_turns(block or "") if system or block else []
        body = sorted(set(tail) | set(extra or []))
        turns += [self._turn(p, self.inplace.get(p), self._inplace_tokens(p)) for p in body]
        return enforce(turns, budget=max(1, self.limit), alternate=self.m.alternate, cut=self._cut, merge=self._merge,
                       opener=self._opener)

    def _opener(self, text: str) -> Turn:
        """The leading user-role context message of a history with no user message (the
        contract's opener: it says so, it never invents a request)."""
        message = ChatMessage(role=MessageRole.USER, content=text)
        return Turn("user", self.m.count_tokens([message]), payload=Entry((None,), message))

    def _inplace_tokens(self, p: int) -> Optional[int]:
        message = self.inplace.get(p)
        return None if message is None else self.m.count_tokens([message])

    def _block_overhead(self) -> int:
        """What the block costs beyond its lines (the core pays the lines and day headers):
        its label and tags, and the system message's framing when there is none to append to."""
        label = recalled_block([_PROBE])
        line = self.m.counter.count(_PROBE_LINE)
        if self.system:
            return self.m.counter.count("\n\n" + label) - line + 1
        return self.m.count_tokens([ChatMessage(role=MessageRole.SYSTEM, content=label)]) - line + 1

    def _latest_user_text(self) -> str:
        for message in reversed(self.history):
            if message.role == MessageRole.USER and message.content:
                return message.content
        return ""

    # -- the recall ------------------------------------------------------------------------
    def accept(self, out: AssembledContext) -> Optional[int]:
        """Take the core's result; returns a larger budget to assemble again with when the
        core spent part of it on messages already in the tail (else None)."""
        self._tries += 1
        older = set(self.older)
        wasted = 0
        items = []
        for item in out.items:
            origins = [self.pos.get(o) for o in item.origin_ids]
            if origins and all(p is not None and p not in older for p in origins):
                if not item.pinned:  # pinned system messages are paid for up front
                    wasted += (item.tokens or self.m.counter.count(item.text)) + 2
                continue  # the tail or a pinned system message: already sent verbatim
            items.append(item)
        self.out = out
        self.block_items = items
        if self._tries >= 3 or self.recall_budget is None:
            return None
        # what the block really costs (exact counts, marks, framing) against the room left:
        # assemble again with the difference rather than trim lines the core chose
        block = recalled_block(sorted(items, key=lambda i: (self._position(i) if self._position(i) is not None else -1, i.seq)))
        cost = sum(t.tokens for t in self._system_turns(block)) - sum(t.tokens for t in self._system_turns(""))
        over = cost - (self.limit - self.base_tokens)
        if over > 0:
            over = max(over, 9)  # (never loop on a few tokens)
        else:
            over = -min(wasted, -over)  # tail items the core paid for: room to refill
        if abs(over) <= 8:
            return None
        self.recall_budget = max(1, self.recall_budget - over)
        return self.recall_budget

    def _value(self, item: ContextItem) -> float:
        scores = self.out.report.scores if self.out is not None else {}
        return max((float(scores.get(o, {}).get("value", 0.0)) for o in item.origin_ids), default=0.0)

    def _position(self, item: ContextItem) -> Optional[int]:
        origins = item.origin_ids
        return self.pos.get(origins[0]) if len(origins) == 1 else None

    def result(self) -> MemoryView:
        items = sorted(self.block_items, key=lambda i: (self._position(i) if self._position(i) is not None else -1, i.seq))
        extra: List[int] = []
        if self.m.in_place:
            self.inplace = {}
            block_items = []
            for item in items:
                p = self._position(item)
                if p is None:
                    block_items.append(item)  # summaries: never passed off as turns
                    continue
                extra.append(p)
                if item.is_derived:
                    self.inplace[p] = item_to_message(item, self.history[p])
            items = block_items
            if extra:  # recalled messages the contract cannot send at any budget (orphans): out now
                limit, self.limit = self.limit, 10**9
                fits = {p for t in self._enforce(self.system, self.tail, recalled_block(items), extra) for p in t.payload.positions}
                self.limit = limit
                extra = [p for p in extra if p in fits]
        while True:
            block = recalled_block(items)
            turns = self._enforce(self.system, self.tail, block, extra)
            total = sum(t.tokens for t in turns)
            kept = {p for t in turns for p in t.payload.positions if p is not None}
            if (total <= self.limit and self.shown <= kept and set(extra) <= kept) or (not items and not extra):
                break  # within the limit, and the recall took nothing from the verbatim tail
            if extra:  # in place: the least valuable recalled message goes first
                extra.remove(min(extra, key=lambda p: (self._value_of_position(p), p)))
            else:
                items.remove(min(items, key=lambda i: (self._value(i), i.seq)))
        messages = [copy_message(t.payload.message) for t in turns]
        positions: List[Optional[int]] = [next((p for p in t.payload.positions if p is not None), None) for t in turns]
        # recalled 1:1 (verbatim or compressed), as AssembledContext.covered counts; not summaries
        recalled = sorted({p for i in items if (p := self._position(i)) is not None})
        if extra:
            shown = {p for t in turns for p in t.payload.positions if p is not None}
            recalled = sorted(set(recalled) | (set(extra) & shown))
        self.view = MemoryView(messages=messages, positions=positions, recalled=recalled, assembled=self.out,
                               tokens=sum(t.tokens for t in turns))
        return self.view

    def _value_of_position(self, p: int) -> float:
        scores = self.out.report.scores if self.out is not None else {}
        return float(scores.get(self.ids[p], {}).get("value", 0.0))

    def fallback(self, error: Optional[Exception] = None) -> MemoryView:
        """The tail alone (after an error from the assembly)."""
        if error is not None:
            log.warning("tiered memory: %s; returning the recent conversation without recall", error)
        self.block_items = []
        return self.result()
