"""How `TieredMemory.get` turns one assembly into chat messages: the tail, the repair of
tool-call bundles and of the first message, and the exact-token trim."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, List, Optional

from tiered_context.errors import missing_extra

try:
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core.assembler import AssembledContext
from tiered_context.llama_index._convert import copy_message, item_to_message

if TYPE_CHECKING:  # pragma: no cover
    from tiered_context.llama_index.memory import TieredMemory

__all__ = ["Selection", "input_text"]

log = logging.getLogger("tiered_context.llama_index")

SUMMARY_HEADER = "Summary of earlier conversation:"


def input_text(input: Any) -> str:
    if isinstance(input, ChatMessage):
        return input.content or ""
    return "" if input is None else str(input)


class Selection:
    """One `get`: the snapshot, the query, the budget, and the repair of the result.

    The current turn (from the latest user message) and the newest messages that fit
    form the *tail*, sized with exact message tokens: the core offers the tail verbatim
    and fills the rest of `budget` by value. The result is converted to messages,
    repaired (bundles, user first) and, when the exact count is still over the limit,
    trimmed oldest-first outside the tail. Entries are ``(position, message, tokens)``;
    a summary of several older messages goes into one system message after the leading
    system messages.
    """

    def __init__(self, memory: "TieredMemory", input: Any, limit: int) -> None:
        self.m = memory
        self.ctx: Any = None  # the TieredContext to assemble from (set by the memory)
        self.limit = limit
        log = memory._log  # a snapshot: puts may continue while this selection runs
        self.history = list(log.history)
        self.pos = dict(log.pos)
        self.ids = list(log.ids)
        self.tokens = list(log.tokens)
        self.results = dict(log.results)
        self.calls = list(log.calls)
        self.answers = list(log.answers)
        self.history_tokens = sum(self.tokens)
        self.out: Optional[AssembledContext] = None
        self.entries: List[tuple] = []
        self.summary: Optional[tuple] = None
        self.raw_tokens = 0
        self.derived: set = set()
        self.positions: List[Optional[int]] = []
        self.done: Optional[List[ChatMessage]] = None
        n = len(self.history)
        self.query = input_text(input) or self._latest_user_text()
        if n == 0:
            self.done = []
            return
        self.last = self._bundle_start(n - 1)
        if sum(self.tokens[self.last:]) > limit:
            self.done = self.fallback()  # as ChatMemoryBuffer: the latest message even if too long
            return
        start = self._bundle_start(min(self._turn_start(), n - min(memory.recent_messages, n)))
        self.tail_start = self._fitting_tail(start)
        self.tail = n - self.tail_start
        self.budget = max(1, limit)

    def _fitting_tail(self, start: int) -> int:
        """The first position of the newest messages (whole bundles, back to `start`) that
        fit the limit together (at least the latest bundle)."""
        n = len(self.history)
        room = self.limit
        p = n
        while p > start:
            q = self._bundle_start(p - 1)
            cost = sum(self.tokens[q:p])
            if cost > room:
                break
            room -= cost
            p = q
        return min(p, self.last)

    # -- structure ---------------------------------------------------------------------
    def _latest_user_text(self) -> str:
        for message in reversed(self.history):
            if message.role == MessageRole.USER and message.content:
                return message.content
        return ""

    def _turn_start(self) -> int:
        """Position of the latest user message (the current turn starts there)."""
        for p in range(len(self.history) - 1, -1, -1):
            if self.history[p].role == MessageRole.USER:
                return p
        return 0

    def _anchor(self, p: int) -> Optional[int]:
        """For a tool result at `p`: the position of the assistant message that made the
        call (by id; for a result without id, the nearest assistant before it)."""
        if self.history[p].role != MessageRole.TOOL:
            return None
        answered = self.answers[p]
        for q in range(p - 1, max(-1, p - 64), -1):
            if answered and answered in self.calls[q]:
                return q
            if not answered and self.history[q].role == MessageRole.ASSISTANT:
                return q
        return None

    def _bundle_start(self, p: int) -> int:
        """The first position of the tool-call bundle that `p` belongs to (else `p`)."""
        anchor = self._anchor(p)
        return p if anchor is None else anchor

    def _verbatim(self, p: int) -> tuple:
        return (p, copy_message(self.history[p]), self.tokens[p])

    def fallback(self, error: Optional[Exception] = None) -> List[ChatMessage]:
        """The latest message with its tool-call bundle (as ChatMemoryBuffer when even it
        does not fit, or after `error` from the assembly)."""
        if error is not None:
            log.warning("tiered memory: %s; returning the latest message only", error)
        start = self._bundle_start(len(self.history) - 1)
        self.positions = list(range(start, len(self.history)))
        self.m._last_positions = list(self.positions)
        return [copy_message(self.history[p]) for p in self.positions]

    # -- the result --------------------------------------------------------------------
    def accept(self, out: AssembledContext) -> None:
        self.out = out
        self.entries, self.summary = self._convert(out)
        self.raw_tokens = self._total(self.entries, self.summary)

    @staticmethod
    def _total(entries: List[tuple], summary: Optional[tuple]) -> int:
        return sum(e[2] for e in entries) + (summary[2] if summary else 0)

    def result(self) -> tuple[List[ChatMessage], int]:
        by_pos = {e[0]: e for e in self.entries}
        for p in range(self.tail_start, len(self.history)):  # the tail, verbatim and whole
            if p not in by_pos or p in self.derived:
                by_pos[p] = self._verbatim(p)
        entries = self._repair(sorted(by_pos.values(), key=lambda e: e[0]))
        summary = self.summary
        if self._total(entries, summary) > self.limit:
            entries, summary = self._trim(entries, summary)
        lead = 0
        while lead < len(entries) and entries[lead][1].role == MessageRole.SYSTEM:
            lead += 1
        ordered = entries[:lead] + ([summary] if summary else []) + entries[lead:]
        self.positions = [e[0] if e[0] >= 0 else None for e in ordered]
        self.verbatim = [e[0] >= 0 and e[0] not in self.derived and e[2] == self.tokens[e[0]] for e in ordered]
        return [e[1] for e in ordered], self._total(entries, summary)

    # -- conversion and repair -----------------------------------------------------------
    def _convert(self, out: AssembledContext) -> tuple[List[tuple], Optional[tuple]]:
        entries: List[tuple] = []
        summaries: List[str] = []
        for item in out.items:
            origins = item.origin_ids
            if len(origins) == 1 and origins[0] in self.pos:
                p = self.pos[origins[0]]
                message = item_to_message(item, self.history[p])
                tokens = self.tokens[p]
                if item.is_derived:
                    self.derived.add(p)
                    tokens = self.m.count_tokens([message])
                entries.append((p, message, tokens))
            elif item.is_derived:
                summaries.append(item.text)
        entries.sort(key=lambda e: e[0])
        summary = None
        if summaries:
            message = ChatMessage(role=MessageRole.SYSTEM, content="\n".join([SUMMARY_HEADER, *summaries]))
            summary = (-1, message, self.m.count_tokens([message]))
        return self._repair(entries), summary

    def _repair(self, entries: List[tuple]) -> List[tuple]:
        """No tool result without its call, no call without its results (unless the call is
        still pending), and (with `start_with_user`) no assistant or tool message first."""
        while True:
            calls = {c for p, _, _ in entries for c in self.calls[p]}
            results = {self.answers[p] for p, _, _ in entries}
            present = {e[0] for e in entries}
            keep = []
            for p, m, t in entries:
                if m.role == MessageRole.TOOL and (
                    self.answers[p] not in calls if self.answers[p] else self._anchor(p) not in present
                ):
                    continue  # an orphaned result: a provider error
                if any(c not in results and c in self.results for c in self.calls[p]):
                    continue  # its results exist but were not selected: drop the call too
                keep.append((p, m, t))
            if self.m.start_with_user:
                keep = self._start_with_user(keep)
            if [e[0] for e in keep] == [e[0] for e in entries]:
                return keep
            entries = keep

    def _start_with_user(self, entries: List[tuple]) -> List[tuple]:
        first = next((i for i, e in enumerate(entries) if e[1].role != MessageRole.SYSTEM), None)
        if first is None or entries[first][1].role == MessageRole.USER:
            return entries
        p = entries[first][0]
        q = p - 1  # the user message that led to it: added when it fits, keeps the evidence
        while q >= 0 and self.history[q].role != MessageRole.USER:
            q -= 1
        if q >= 0:
            have = {e[0] for e in entries}
            extra = [self._verbatim(r) for r in range(q, p) if r not in have]
            if self._total(entries, None) + sum(e[2] for e in extra) <= self.limit:
                return sorted(entries + extra, key=lambda e: e[0])
        if p >= self.last:  # the latest message itself: lead in with its user turn, shortened
            lead = self._shortened(q, self.limit - self._total(entries, None)) if q >= 0 and q == p - 1 else None
            return sorted(entries + [lead], key=lambda e: e[0]) if lead else entries
        return entries[:first] + entries[first + 1 :]

    def _shortened(self, q: int, room: int) -> Optional[tuple]:
        """History message `q` cut to fit `room` tokens (None when not even a stub fits)."""
        original = self.history[q]
        frame = self.m.count_tokens([ChatMessage(role=original.role, content="")])
        if room - frame < 8:
            return None
        text = self.m.counter.truncate(original.content or "", room - frame, marker=" […]")
        message = ChatMessage(role=original.role, content=text)
        tokens = self.m.count_tokens([message])
        return (q, message, tokens) if tokens <= room else None

    def _value(self, p: int) -> float:
        if self.out is None or p < 0:
            return 0.0
        return float(self.out.report.scores.get(self.ids[p], {}).get("value", 0.0))

    def _trim(self, entries: List[tuple], summary: Optional[tuple]) -> tuple[List[tuple], Optional[tuple]]:
        """Over the limit (exact message tokens exceed the core's line costs): drop the
        summary, then the least valuable entries outside the tail (with their bundle
        partners, by the final repair) until the rest fits."""
        if summary is not None:
            summary = None
            if self._total(entries, None) <= self.limit:
                return entries, None
        excess = self._total(entries, None) - self.limit
        droppable = [e for e in entries if e[0] < self.tail_start and not (e[1].role == MessageRole.SYSTEM and self.m.pin_system)]
        dropped = set()
        for p, _, t in sorted(droppable, key=lambda e: (self._value(e[0]), e[0])):
            if excess <= 0:
                break
            dropped.add(p)
            excess -= t
        keep = self._repair([e for e in entries if e[0] not in dropped])
        last = len(self.history) - 1
        if self._total(keep, None) > self.limit or not keep or keep[-1][0] != last:
            keep = [self._verbatim(p) for p in range(self.last, last + 1)]
        return keep, None
