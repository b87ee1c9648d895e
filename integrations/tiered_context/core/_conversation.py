"""The conversation contract: what every adapter hands a chat model is a valid conversation.

Adapters convert their framework's messages to `Turn`s (role, exact token count, the tool
calls a turn makes or answers, and the framework message as an opaque `payload`), call
`enforce`, and convert the result back. The contract, for any input:

1. system turns come first (in their order);
2. the current exchange (the last user turn and the tool loop in progress after it) is
   kept verbatim; when it alone exceeds the budget, tool results are cut with
   ``cut(turn, max_tokens)`` (which adds a marker), never the user's turn;
3. the first non-system turn is a user turn;
4. every tool result directly follows the assistant turn that made its call (results are
   moved next to their call; results without a call, and assistant turns whose calls are
   not all answered, are dropped: providers refuse both);
5. with ``alternate=True`` roles strictly alternate user / assistant (a tool result takes
   the user's place after the assistant turn that called it); consecutive turns of one
   role are merged with ``merge`` (default: one turn whose payload is the tuple of the
   originals' payloads);
6. the total is at most ``budget`` (earlier history goes first, newest kept, contiguous),
   unless the system turns, `lead` turns and the current user turn alone exceed it:
   nothing the contract must keep is ever dropped; `check` then reports the overrun.

    >>> from dataclasses import replace
    >>> turns = [Turn("system", 10), Turn("user", 5), Turn("assistant", 5, tool_call_ids=("c1",)),
    ...          Turn("tool", 900, tool_call_id="c1")]
    >>> [t.role for t in enforce(turns, budget=100, cut=lambda t, n: replace(t, tokens=n))]
    ['system', 'user', 'assistant', 'tool']

`lead` turns (e.g. a context message holding recalled history) are placed right after the
system turns and always kept.

A history with no user turn at all (an agent loop started by a tool call) cannot start with
the user's turn without inventing one. With ``opener=``, `enforce` asks the adapter for a
labelled user-role context turn holding `OPENER_NOTE` (it says there is no user message)
and leads with it, inside the budget; the model is told the truth and no provider refuses
the conversation. Without it, such a history starts with the assistant turn (`check`
reports it). `check(turns, ...)` lists contract violations (tests).
Framework-free: the LangChain and LlamaIndex adapters share it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiered_context.core._items import ContextItem

__all__ = ["Turn", "current_exchange", "enforce", "check", "recalled_block", "ROLES", "RECALL_TAG", "RECALL_NOTE",
           "COMPRESSED_MARK", "COMPRESSED_NOTE", "OPENER_NOTE", "SUMMARY_SPEAKER"]

ROLES = frozenset({"system", "user", "assistant", "tool"})
RECALL_TAG = "recalled_context"
#: The marks after a speaker's name: compressed lines and summaries (explained by `RECALL_NOTE`).
COMPRESSED_MARK = "*"
SUMMARY_SPEAKER = "summary"  # a summary's line: "summary: ..." (it speaks for several messages)
#: The block's label (9 tokens); `COMPRESSED_NOTE` follows it only when a line is compressed.
RECALL_NOTE = "Earlier conversation, recalled (not new messages)."
COMPRESSED_NOTE = "Name* = compressed, not verbatim."
#: The leading user-role context turn of a history with no user message (``enforce(opener=...)``).
OPENER_NOTE = "<conversation_context>\nNo user message: this conversation was started by the tool calls below.\n</conversation_context>"


@dataclass(frozen=True, slots=True)
class Turn:
    """One message, as the contract sees it."""

    role: str  # "system" | "user" | "assistant" | "tool"
    tokens: int
    tool_call_ids: tuple[str, ...] = ()  # assistant: the calls it makes
    tool_call_id: str | None = None  # tool: the call it answers
    payload: Any = None  # the framework message (opaque here)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Turn.role must be one of {sorted(ROLES)}, got {self.role!r}")
        if not isinstance(self.tokens, int) or isinstance(self.tokens, bool) or self.tokens < 0:
            raise ValueError(f"Turn.tokens must be an int >= 0, got {self.tokens!r}")


Cut = Callable[[Turn, int], Turn]
Merge = Callable[[Turn, Turn], Turn]


def current_exchange(turns: Sequence[Turn]) -> int:
    """Index where the live exchange starts: the last user turn (the tool loop after it is
    part of the exchange). Without a user turn: the last round of the trailing tool loop
    (the assistant turn whose calls the trailing results answer; the earlier rounds are
    history, so the budget can always hold the exchange), else ``len(turns)``."""
    for i in range(len(turns) - 1, -1, -1):
        if turns[i].role == "user":
            return i
    i = len(turns)
    while i > 0 and turns[i - 1].role == "tool":
        i -= 1
    if i > 0 and turns[i - 1].role == "assistant" and turns[i - 1].tool_call_ids:
        i -= 1
    while i < len(turns) and turns[i].role == "tool":  # never start on a result
        i += 1
    return i


def _default_merge(a: Turn, b: Turn) -> Turn:
    pa = a.payload if isinstance(a.payload, tuple) else (a.payload,)
    pb = b.payload if isinstance(b.payload, tuple) else (b.payload,)
    return Turn(a.role, a.tokens + b.tokens, tool_call_ids=a.tool_call_ids + b.tool_call_ids, payload=pa + pb)


def _units(turns: Sequence[Turn]) -> list[list[Turn]]:
    """Group turns into units that enter or leave together: an assistant turn with calls
    and all its results (moved right after it, in call order); lone other turns. Tool
    results without a call and assistant turns with unanswered calls are dropped."""
    results: dict[str, Turn] = {}
    calls_seen: set[str] = set()
    for t in turns:
        if t.role == "assistant":
            calls_seen.update(t.tool_call_ids)
        elif t.role == "tool" and t.tool_call_id is not None and t.tool_call_id in calls_seen \
                and t.tool_call_id not in results:
            results[t.tool_call_id] = t  # the first answer to a call made earlier
    units: list[list[Turn]] = []
    used: set[str] = set()
    for t in turns:
        if t.role == "tool":
            continue  # placed with its call below
        if t.role == "assistant" and t.tool_call_ids:
            ids = list(dict.fromkeys(t.tool_call_ids))
            if any(c not in results or c in used for c in ids):
                continue  # an unanswered (or already answered) call: providers refuse it
            used.update(ids)
            units.append([t, *(results[c] for c in ids)])
        else:
            units.append([t])
    return units


def _size(units: Sequence[Sequence[Turn]]) -> int:
    return sum(t.tokens for u in units for t in u)


def _fit_live(live: list[list[Turn]], room: int, cut: Cut | None) -> list[list[Turn]]:
    """Cut the tool results of the live exchange so it fits `room` (never another turn)."""
    over = _size(live) - room
    if over <= 0 or cut is None:
        return live
    tools = [(u, k) for u, unit in enumerate(live) for k, t in enumerate(unit) if t.role == "tool"]
    if not tools:
        return live
    fixed = _size(live) - sum(live[u][k].tokens for u, k in tools)
    share = max(0, room - fixed)
    out = [list(unit) for unit in live]
    for _ in range(4):  # a marker costs tokens: tighten the caps until it fits
        sizes = sorted(live[u][k].tokens for u, k in tools)
        cap, left, n = 0, share, len(sizes)
        for i, s in enumerate(sizes):  # water-filling: small results whole, big ones to one cap
            if s * (n - i) <= left:
                left -= s
                cap = s
            else:
                cap = left // (n - i)
                break
        else:
            cap = sizes[-1]
        for u, k in tools:
            original = live[u][k]
            out[u][k] = original if original.tokens <= cap else cut(original, cap)
        excess = _size(out) - room
        if excess <= 0:
            return out
        share = max(0, share - excess)
    return out


def enforce(
    turns: Sequence[Turn],
    *,
    budget: int,
    alternate: bool = False,
    cut: Cut | None = None,
    merge: Merge | None = None,
    lead: Sequence[Turn] = (),
    opener: Callable[[str], Turn] | None = None,
) -> list[Turn]:
    """The turns to send: the contract (module docstring) applied to `turns` under `budget`.

    `cut(turn, max_tokens)` returns a tool-result turn shortened to at most `max_tokens`
    (with a marker saying so); without it an oversized live exchange is kept whole.
    `merge(a, b)` joins two consecutive turns of one role (``alternate=True``).
    `lead`: turns placed right after the system turns and always kept.
    `opener(text)`: a user-role turn carrying `text` (`OPENER_NOTE`), led with when neither
    `lead` nor `turns` holds a user turn.
    """
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
        raise ValueError(f"budget must be a positive int number of tokens, got {budget!r}")
    system = [t for t in turns if t.role == "system"]
    rest = [t for t in turns if t.role != "system"]
    if opener is not None and rest and not any(t.role == "user" for t in (*lead, *rest)):
        first = opener(OPENER_NOTE)
        if first.role != "user":
            raise ValueError(f"opener must return a user turn, got {first.role!r}")
        lead = [first, *lead]
    start = current_exchange(rest)
    history_units = _units(rest[:start])
    live_units = _units(rest[start:])
    # the live exchange keeps its user turn even if _units would not drop it (it never does)
    fixed = sum(t.tokens for t in system) + sum(t.tokens for t in lead)
    live_units = _fit_live(live_units, budget - fixed, cut)
    room = budget - fixed - _size(live_units)
    kept: list[list[Turn]] = []
    for unit in reversed(history_units):  # newest first, contiguous
        cost = sum(t.tokens for t in unit)
        if cost > room:
            break
        kept.append(unit)
        room -= cost
    kept.reverse()
    lead_units = [[t] for t in lead]
    if not lead_units or lead_units[0][0].role != "user":
        # the first non-system turn must be the user's: drop leading history that is not
        while kept and kept[0][0].role != "user":
            kept.pop(0)
    units = lead_units + kept + live_units
    protected = len(lead_units) + len(kept)  # lead and live are never dropped
    if alternate:
        merge = merge or _default_merge
        while True:
            joined = _alternate(units, merge, len(lead_units), protected)
            total = sum(t.tokens for t in system) + _size(joined)
            if total <= budget or not kept:
                units = joined
                break
            kept.pop(0)  # a merge cost tokens: give up the oldest history unit
            while kept and kept[0][0].role != "user" and (not lead_units or lead_units[0][0].role != "user"):
                kept.pop(0)
            units = lead_units + kept + live_units
            protected = len(lead_units) + len(kept)
    return system + [t for unit in units for t in unit]


def _alternate(units: list[list[Turn]], merge: Merge, n_lead: int, live_from: int) -> list[list[Turn]]:
    """Merge consecutive same-side turns (a tool result takes the user's side); lead units
    and live units (index >= `live_from`) are never dropped, history units that cannot
    alternate (leading non-user turns, a tool loop right before a user turn) are."""
    out: list[tuple[list[Turn], bool]] = []
    for index, unit in enumerate(units):
        keep = index < n_lead or index >= live_from
        unit = list(unit)
        while True:
            if not out:
                if unit[0].role == "user" or keep:
                    out.append((unit, keep))
                break
            prev, prev_keep = out[-1]
            last = prev[-1]
            side_prev = "user" if last.role in ("user", "tool") else "assistant"
            side_new = "user" if unit[0].role == "user" else "assistant"
            if side_prev != side_new:
                out.append((unit, keep))
            elif last.role == unit[0].role:
                out[-1] = ([*prev[:-1], merge(last, unit[0]), *unit[1:]], prev_keep or keep)
            elif not keep:
                pass  # a user turn right after tool results, in history: dropped
            elif not prev_keep:
                out.pop()  # a history tool loop right before a kept user turn: dropped
                continue
            else:
                out.append((unit, keep))  # nothing droppable: kept (check() reports it)
            break
    return [u for u, _ in out]


def check(turns: Sequence[Turn], *, alternate: bool = False, budget: int | None = None,
          source: Sequence[Turn] | None = None) -> list[str]:
    """Contract violations of `turns` (empty when valid). With `budget`, the total is
    checked; with `source` (the input of `enforce`), that its current user turn and the
    non-tool turns of its live exchange are present (compared by payload identity)."""
    problems: list[str] = []
    seen_other = False
    for i, t in enumerate(turns):
        if t.role == "system" and seen_other:
            problems.append(f"turn {i}: a system turn after a non-system turn")
        if t.role != "system":
            seen_other = True
    others = [t for t in turns if t.role != "system"]
    if others and others[0].role != "user":
        problems.append(f"first non-system turn is {others[0].role!r}, not 'user'")
    open_calls: list[str] = []  # calls of the last assistant turn still awaiting their result
    answered: set[str] = set()
    for i, t in enumerate(others):
        if t.role == "tool":
            if t.tool_call_id not in open_calls:
                problems.append(f"turn {i}: tool result {t.tool_call_id!r} does not directly follow its call")
            else:
                open_calls.remove(t.tool_call_id)
                answered.add(t.tool_call_id)
            continue
        if open_calls:
            problems.append(f"turn {i}: calls {open_calls} have no result before the next turn")
        open_calls = list(t.tool_call_ids) if t.role == "assistant" else []
    if open_calls:
        problems.append(f"calls {open_calls} have no result")
    if alternate:
        side = None
        for i, t in enumerate(others):
            s = "user" if t.role in ("user", "tool") else "assistant"
            if t.role == "tool" and i > 0 and others[i - 1].role == "tool":
                continue  # several results of one call turn fill one slot
            if s == side:
                problems.append(f"turn {i}: two {s} turns in a row (alternate=True)")
            side = s
    if budget is not None:
        total = sum(t.tokens for t in turns)
        if total > budget:
            problems.append(f"total {total} tokens > budget {budget}")
    if source is not None:
        rest = [t for t in source if t.role != "system"]
        start = current_exchange(rest)
        payloads = [t.payload for t in turns]
        flat = [p for x in payloads for p in (x if isinstance(x, tuple) else (x,))]
        for t in (t for unit in _units(rest[start:]) for t in unit):
            if t.role == "tool":
                continue
            if not any(p is t.payload for p in flat):
                problems.append(f"the live {t.role} turn {t.payload!r:.60} is missing")
    return problems


def recalled_block(items: Sequence["ContextItem"], *, note: str = RECALL_NOTE, tag: str = RECALL_TAG) -> str:
    """Recalled history as ONE labelled block, the one format both adapters send: every
    line attributed to its speaker and placed under its date header, compressed forms
    marked `COMPRESSED_MARK` after the speaker (``Melanie*: ...``; one token) and
    summaries as ``summary: ...``, in the given (chronological) order. Empty string for
    no items.

    The label is short: `note`, plus `COMPRESSED_NOTE` only when some line is compressed.
    A line's date is its timestamp's day; an item whose timestamp is an ordering, not a
    date (LlamaIndex memory numbers its messages), is dated by the wall clock it was
    stored at (``metadata["created_at"]``) when it has one. Lines are rendered as the core
    renders them (`core._render.attributed`: a leading ``[date] Name:`` of the content
    that repeats the header or the speaker is not paid twice).

        <recalled_context>
        Earlier conversation, recalled (not new messages). Name* = compressed, not verbatim.
        [3 May 2025]
        Caroline: I went to the LGBTQ support group yesterday.
        Melanie*: painting lake sunrise last year
        </recalled_context>
    """
    from tiered_context.core._render import attributed, header

    if not items:
        return ""
    lines: list[str] = []
    current: str | None = None
    compressed = False
    for item in items:  # the caller's order: the assembler's is chronological
        day = _day_of(item)
        if day is not None and day != current:
            lines.append(header(day))
            current = day
        who, text = attributed(item)
        if str(item.role) == "summary" or (item.is_derived and len(item.origin_ids) > 1):
            lines.append(f"{SUMMARY_SPEAKER}: {text}")
        else:
            mark = COMPRESSED_MARK if item.is_derived else ""
            compressed = compressed or bool(mark)
            lines.append(f"{who}{mark}: {text}")
    label = " ".join(part for part in (note, COMPRESSED_NOTE if compressed and note else "") if part)
    head = [f"<{tag}>", label] if label else [f"<{tag}>"]
    return "\n".join([*head, *lines, f"</{tag}>"])


def _day_of(item: "ContextItem") -> str | None:
    """The day of a recalled line: the timestamp's, else ``metadata["created_at"]``'s."""
    from tiered_context.core._render import day_of

    day = day_of(item)
    if day is not None:
        return day
    created = item.metadata.get("created_at")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return day_of(item.evolve(timestamp=float(created)))
    return None
