"""What one model call is sent: LangChain messages through the conversation contract.

Pure functions over LangChain messages, an `AssembledContext` and a token budget, no
session state. `build_view` is shared by `TieredContextMiddleware` (per model call) and
`TieredChatMessageHistory` (per query):

1. the current exchange (the last user message and the tool loop after it) and the
   system prompt are kept verbatim; oversized tool results of that exchange are cut with
   a marker (``core.conversation.enforce``), never the user's message;
2. of the assembled history, the verbatim recent tail (the newest messages the assembler
   chose, contiguous up to the current exchange) stays as real messages;
3. everything else the assembler chose (older messages, compressed forms, summaries)
   becomes ONE labelled context block (``core.conversation.recalled_block``: dated,
   speaker-attributed lines, compressed lines marked), sent as a leading context message
   (``placement="message"``, default) or appended to the system prompt (``"system"``);
   ``rewrite_in_place=True`` instead sends every recalled message at its place in the
   conversation (compressed forms as shortened copies), the pre-contract behaviour;
4. `enforce` makes the result a valid conversation (first non-system message the
   user's, tool results right after their calls, optionally strict alternation).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from tiered_context.core import (
    OPENER_NOTE,
    REPLY_PRIMING,
    AssembledContext,
    ContextItem,
    Turn,
    current_exchange,
    enforce,
    recalled_block,
)
from tiered_context.errors import BudgetError, ConfigError
from tiered_context.langchain._convert import MessageCounter, is_summary_message, item_to_message, message_text
from tiered_context.langchain._trace import report_outputs

__all__ = ["CallReport", "Placement", "View", "build_view", "message_turn", "turn_query", "item_value",
           "CONTEXT_SOURCE", "TRUNCATED"]

TRUNCATED = " […truncated; the original is archived]"
#: ``additional_kwargs["lc_source"]`` of the context message carrying recalled history.
CONTEXT_SOURCE = "tiered_context"


class Placement(str, Enum):
    """Where the recalled-history block goes."""

    MESSAGE = "message"  # a leading HumanMessage right after the system prompt
    SYSTEM = "system"  # appended to the system prompt


def placement(value: Placement | str) -> Placement:
    try:
        return Placement(value)
    except ValueError:
        raise ConfigError(f"context_placement must be one of {[p.value for p in Placement]}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class CallReport:
    """What one model call was sent, in tokens (also the outputs of the traced run).

    `assembled` is the core result the call used: pass the report to
    `TieredContextMiddleware.feedback` to say which of its items an answer used.
    """

    thread: str
    user: str | None
    tokens: int
    max_tokens: int
    messages_in: int
    messages_out: int
    system_tokens: int
    tool_tokens: int
    tail_tokens: int  # the current exchange, verbatim (tool results maybe cut)
    history_tokens: int  # earlier messages sent as real messages (the verbatim recent tail)
    context_tokens: int  # the recalled-history block
    recalled_items: int  # items in the block
    truncated_tool_results: int
    assembled: AssembledContext | None = field(default=None, repr=False)
    recalled: tuple[ContextItem, ...] = field(default=(), repr=False)  # the block's items, in order

    @property
    def session(self) -> str:
        """The thread id (the name of the session before users and threads were separate)."""
        return self.thread

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__ if k not in ("assembled", "recalled")}
        out.update(report_outputs(self.assembled))
        return out


def message_turn(message: BaseMessage, mc: MessageCounter) -> Turn:
    """The contract's view of a message (the message itself is the payload)."""
    tokens = mc.message(message)
    if isinstance(message, AIMessage):
        ids = tuple(str(c["id"]) for c in message.tool_calls if c.get("id"))
        return Turn("assistant", tokens, tool_call_ids=ids, payload=message)
    if isinstance(message, ToolMessage):
        return Turn("tool", tokens, tool_call_id=str(message.tool_call_id) if message.tool_call_id else None, payload=message)
    if isinstance(message, SystemMessage):
        return Turn("system", tokens, payload=message)
    if isinstance(message, ChatMessage) and message.role in ("assistant", "system"):
        return Turn(message.role, tokens, payload=message)
    if isinstance(message, HumanMessage) or isinstance(message, ChatMessage):
        return Turn("user", tokens, payload=message)
    return Turn("tool", tokens, payload=message)  # a legacy FunctionMessage: no call id, dropped as an orphan


def _cutter(mc: MessageCounter):
    counter = mc.counter

    def cut(turn: Turn, max_tokens: int) -> Turn:
        message = turn.payload
        text = message.content if isinstance(message.content, str) else message_text(message)
        overhead = mc.message(message.model_copy(update={"content": "", "id": None}))
        keep = max(0, max_tokens - overhead)
        for _ in range(4):
            cut_message = message.model_copy(update={"content": counter.truncate(text, keep, marker=TRUNCATED)})
            tokens = mc.message(cut_message)
            if tokens <= max_tokens or keep == 0:
                break
            keep = max(0, keep - (tokens - max_tokens))
        return Turn("tool", tokens, tool_call_id=turn.tool_call_id, payload=cut_message)

    return cut


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content)


def _merger(mc: MessageCounter):
    def merge(a: Turn, b: Turn) -> Turn:
        ma, mb = a.payload, b.payload
        if isinstance(ma.content, str) and isinstance(mb.content, str):
            content: Any = "\n\n".join(x for x in (ma.content, mb.content) if x)
        else:
            content = _blocks(ma.content) + _blocks(mb.content)
        update: dict[str, Any] = {"content": content, "id": f"{ma.id or uuid.uuid4().hex}+{mb.id or uuid.uuid4().hex}"}
        if isinstance(ma, AIMessage) and isinstance(mb, AIMessage):
            update["tool_calls"] = [*ma.tool_calls, *mb.tool_calls]
        merged = mb.model_copy(update=update)
        return Turn(b.role, mc.message(merged), tool_call_ids=a.tool_call_ids + b.tool_call_ids, payload=merged)

    return merge


_PROBE = ContextItem(id="_", text="x", role="user", timestamp=1.0)  # one undated line: sizes the label


def block_overhead(mc: MessageCounter, where: Placement = Placement.MESSAGE) -> int:
    """Tokens the labelled block adds around the lines the core pays for (label, tags, the
    context message's framing or the join to the system prompt), measured exactly."""
    block = recalled_block([_PROBE])
    line = mc.counter.count("user: x")
    if where is Placement.SYSTEM:
        return mc.counter.count("\n\n" + block) - line + 1
    return mc.message(context_message(block)) - line + 1


def context_message(block: str) -> HumanMessage:
    return HumanMessage(content=block, additional_kwargs={"lc_source": CONTEXT_SOURCE})


def with_block(system: SystemMessage | None, block: str) -> SystemMessage | None:
    """The system message with the recalled-history block appended."""
    if not block:
        return system
    if system is None:
        return SystemMessage(content=block)
    if isinstance(system.content, str):
        return system.model_copy(update={"content": system.content + "\n\n" + block})
    return system.model_copy(update={"content": [*system.content, {"type": "text", "text": "\n\n" + block}]})


@dataclass
class View:
    """A budgeted view: the system message and messages to send, and what went where."""

    system: SystemMessage | None
    messages: list[BaseMessage]
    tokens: int  # exact: system + messages + reply priming (+ tool schemas when given)
    live_tokens: int = 0
    history_tokens: int = 0
    context_tokens: int = 0
    recalled_items: int = 0
    truncated_tool_results: int = 0
    recalled: tuple[ContextItem, ...] = ()


def build_view(
    system: SystemMessage | None,
    history: Sequence[BaseMessage],
    live: Sequence[BaseMessage],
    assembled: AssembledContext | None,
    *,
    budget: int,
    mc: MessageCounter,
    lead: Sequence[BaseMessage] = (),
    tool_tokens: int = 0,
    where: Placement = Placement.MESSAGE,
    rewrite_in_place: bool = False,
    alternate: bool = False,
) -> View:
    """The messages to send under `budget` (see the module docstring).

    `history`: the earlier messages (archived; the assembler chose among them);
    `live`: the current exchange; `lead`: messages always sent first (e.g. a summary
    `SummarizationMiddleware` left in the state); `tool_tokens`: the tool schemas' cost.
    Raises `BudgetError` when the system prompt, the lead and the user's turn alone do
    not fit.
    """
    cut, merge = _cutter(mc), _merger(mc)
    room = budget - tool_tokens - REPLY_PRIMING
    position = {m.id: i for i, m in enumerate(history) if m.id}
    chosen: dict[int, tuple[BaseMessage, float]] = {}  # history position -> message to send, value
    recalled: list[tuple[ContextItem, float]] = []
    if assembled is not None:
        for item in assembled.items:
            value = item_value(assembled, item)
            pos = position.get(item.metadata.get("lc_id")) if len(item.origin_ids) == 1 else None
            if pos is not None and (not item.is_derived or rewrite_in_place):
                message = item_to_message(item, history[pos])
                if message is not None and pos not in chosen:
                    chosen[pos] = (message, value)
                    continue
            recalled.append((item, value))
    # the verbatim recent tail: chosen messages contiguous up to the current exchange
    if rewrite_in_place:
        tail_positions = sorted(chosen)
    else:
        tail_positions = []
        for pos in range(len(history) - 1, -1, -1):
            if pos in chosen:
                tail_positions.append(pos)
            elif message_text(history[pos]).strip():
                break  # a message the assembler left out ends the tail (empty ones are skipped)
        tail_positions.reverse()
        for pos in [p for p in chosen if p not in tail_positions]:
            recalled.append((_item_of(assembled, history[pos]), chosen.pop(pos)[1]))
        recalled = [r for r in recalled if r[0] is not None]
    while tail_positions and isinstance(chosen[tail_positions[0]][0], ToolMessage):
        pos = tail_positions.pop(0)  # a result whose call is not in the tail: recalled as a line
        item = _item_of(assembled, history[pos])
        if item is not None:
            recalled.append((item, chosen[pos][1]))
    order = {item.id: n for n, item in enumerate(assembled.items)} if assembled is not None else {}
    recalled.sort(key=lambda r: order.get(r[0].id, 0))
    tail = [(chosen[p][0], chosen[p][1]) for p in tail_positions]

    def assemble_once() -> tuple[list[Turn], SystemMessage | None, list[Turn], int]:
        block = recalled_block([r[0] for r in recalled])
        final_system = with_block(system, block) if where is Placement.SYSTEM else system
        lead_msgs = list(lead) + ([context_message(block)] if block and where is Placement.MESSAGE else [])
        lead_turns = [message_turn(m, mc) for m in lead_msgs]
        turns = [message_turn(m, mc) for m, _ in tail] + [message_turn(m, mc) for m in live]
        if (turns or history) and not any(t.role == "user" for t in (*lead_turns, *turns)):
            # no user message at all (a loop started by a tool call): a labelled context
            # message says so and leads, as the contract's opener (never an invented request;
            # also when the budget left no turn, since providers reject an empty conversation)
            lead_turns.insert(0, message_turn(context_message(OPENER_NOTE), mc))
        sys_tokens = mc.message(final_system) if final_system is not None else 0
        return turns, final_system, lead_turns, sys_tokens

    # fit: drop the least valuable block line or the oldest tail message until it all fits
    live_turns = [message_turn(m, mc) for m in live]
    system_tokens = mc.message(system) if system is not None else 0
    lead_tokens = sum(mc.message(m) for m in lead)
    base = enforce([Turn("system", system_tokens), *live_turns], budget=max(1, room - lead_tokens), cut=cut)
    live_cost = sum(t.tokens for t in base) - system_tokens
    while True:
        turns, final_system, lead_turns, sys_tokens = assemble_once()
        tail_cost = sum(t.tokens for t in turns[:len(tail)])
        block_cost = sum(t.tokens for t in lead_turns) - lead_tokens + sys_tokens - system_tokens
        total = system_tokens + lead_tokens + live_cost + tail_cost + block_cost
        if total <= room or not (recalled or tail):
            break
        low_line = min(range(len(recalled)), key=lambda n: (recalled[n][1], -n), default=None)
        if tail and rewrite_in_place:  # every recalled message is at its place: the least valuable goes
            tail.pop(min(range(len(tail)), key=lambda n: (tail[n][1], n)))
        elif tail and (low_line is None or tail[0][1] <= recalled[low_line][1]):
            tail.pop(0)
            while tail and isinstance(tail[0][0], ToolMessage):
                tail.pop(0)
        else:
            recalled.pop(low_line)
    out = enforce([*([Turn("system", sys_tokens)] if final_system is not None else []), *turns], budget=room,
                  cut=cut, alternate=alternate, merge=merge, lead=lead_turns)
    messages = [t.payload for t in out if t.payload is not None]
    total = mc.messages(([final_system] if final_system is not None else []) + messages) + tool_tokens
    if total > budget:
        raise BudgetError(
            f"the system prompt, the current user message and the tool schemas need {total} tokens "
            f"> max_tokens={budget}; raise max_tokens or shorten the prompt / tool descriptions")
    live_ids = {id(m) for m in live}
    sent_live = [m for m in messages if id(m) in live_ids or (isinstance(m, ToolMessage) and m.content and str(m.content).endswith(TRUNCATED))]
    truncated = sum(1 for m in messages if isinstance(m, ToolMessage) and id(m) not in live_ids
                    and isinstance(m.content, str) and m.content.endswith(TRUNCATED))
    tail_ids = {id(m) for m, _ in tail}
    block_tokens = (sum(t.tokens for t in lead_turns) - lead_tokens) + ((mc.message(final_system) if final_system else 0) - system_tokens)
    return View(
        system=final_system, messages=messages, tokens=total,
        live_tokens=sum(mc.message(m) for m in sent_live),
        history_tokens=sum(mc.message(m) for m in messages if id(m) in tail_ids),
        context_tokens=block_tokens if recalled else 0, recalled_items=len(recalled),
        truncated_tool_results=truncated, recalled=tuple(r[0] for r in recalled),
    )


def _item_of(assembled: AssembledContext | None, message: BaseMessage) -> ContextItem | None:
    if assembled is None:
        return None
    for item in assembled.items:
        if item.metadata.get("lc_id") == message.id and not item.is_derived:
            return item
    return None


def turn_query(messages: Sequence[BaseMessage], live: Sequence[BaseMessage], limit: int = 2000) -> str:
    """The retrieval query of a call: the last user message, then the rest of the exchange."""
    human = next((m for m in reversed(messages) if isinstance(m, HumanMessage) and not is_summary_message(m)), None)
    parts = [message_text(human)] if human is not None else []
    parts += [message_text(m) for m in live if m is not human]
    return "\n".join(p for p in parts if p)[:limit]


def item_value(out: AssembledContext, item: ContextItem) -> float:
    """The scorer's value of an assembled item (what competes for the last tokens)."""
    scores = out.report.scores.get(item.origin_ids[0]) or {}
    return float(scores.get("value", 0.0))


def live_start(messages: Sequence[BaseMessage], mc: MessageCounter) -> int:
    """Where the current exchange starts in `messages` (`core.conversation.current_exchange`)."""
    return current_exchange([message_turn(m, mc) for m in messages])


__all__ += ["live_start", "placement", "context_message", "with_block", "block_overhead"]
