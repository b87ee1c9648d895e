"""Memory blocks for LlamaIndex's `Memory`: the tiered archive, and per-session facts."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Tuple

from tiered_context.errors import missing_extra

try:
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
    from llama_index.core.memory.memory import BaseMemoryBlock
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core import (
    Compaction,
    ContextItem,
    MemoryConfig,
    ScoringConfig,
    TieredContext,
    TokenCounter,
    check_id,
    recalled_block,
    self_information,
    terms,
)
from tiered_context.errors import ConfigError
from tiered_context.llama_index._convert import message_text, message_to_item
from tiered_context.llama_index._instrumentation import dispatcher, emit_assembly

__all__ = ["TieredMemoryBlock", "TieredFactBlock"]

DEFAULT_SESSION = "default"
_PROBE = ContextItem(id="_", text="x", role="user", timestamp=1.0)  # sizes the block's label (no date: the core pays headers)


def _session_of(message: ChatMessage, default: str) -> str:
    return str(message.additional_kwargs.get("session_id") or default)


def _query_of(messages: Optional[List[ChatMessage]]) -> str:
    """The latest user text (Memory passes the chat history plus the new input)."""
    for message in reversed(messages or []):
        if message.role == MessageRole.USER and message.content:
            return message.content
    return message_text(messages[-1]) if messages else ""


class TieredMemoryBlock(BaseMemoryBlock[str]):
    """The tiered archive as a block of LlamaIndex's `Memory`: it receives the messages
    `Memory` flushes out of its short-term queue and serves back, for each call, the
    ones relevant to the latest input (hybrid BM25 + dense retrieval, neighbours of strong
    hits, compressed forms of old turns) in at most `token_limit` tokens.

    Setup and use::

        from llama_index.core.memory import Memory
        block = TieredMemoryBlock(token_limit=800, priority=1)
        memory = Memory.from_defaults(session_id="u1", token_limit=4000, memory_blocks=[block])

    Result: `Memory.aget()` puts ``<TieredMemory>`` in the system message: one labelled
    block of recalled history, chronological, under day headers, each line attributed to
    its speaker, compressed lines marked ``Name*:`` (`core.recalled_block`, the format
    every adapter sends). Sessions are
    isolated: each `session_id` Memory passes (any characters) is its own session of one
    memory (`TieredContext.sibling`: one `MemoryConfig`, one store). `config=` takes a
    `MemoryConfig` for every core setting. `atruncate` re-assembles under the smaller
    budget instead of dropping the block, so Memory's truncation keeps the most valuable
    lines.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str = Field(default="TieredMemory")
    priority: int = Field(default=1)
    token_limit: int = Field(default=1000, gt=0, description="Tokens this block may return.")
    path: Optional[str] = Field(default=None, description="Archive directory (None: in memory).")
    counter: Optional[TokenCounter] = Field(default=None, exclude=True)
    embedder: Optional[Any] = Field(default=None, exclude=True)
    store: Optional[Any] = Field(default=None, exclude=True)
    scoring: Optional[ScoringConfig] = Field(default=None, exclude=True)
    config: Optional[MemoryConfig] = Field(default=None, exclude=True, description="Every core setting as one value.")

    _base: TieredContext = PrivateAttr()
    _contexts: Dict[str, TieredContext] = PrivateAttr(default_factory=dict)
    _last: Optional[Tuple[str, str, str]] = PrivateAttr(default=None)  # session, query, content

    def model_post_init(self, __context: Any) -> None:
        from pathlib import Path

        from tiered_context.llama_index._session import as_core_embedder

        if self.config is not None:
            if any(v is not None for v in (self.store, self.path, self.counter, self.embedder, self.scoring)):
                raise ConfigError("with config=, set store / path / counter / embedder / scoring in the MemoryConfig")
            config = self.config
        else:
            config = MemoryConfig(
                path=Path(self.path) if self.path is not None else None, store=self.store, budget=self.token_limit,
                counter=self.counter or TokenCounter(), embedder=as_core_embedder(self.embedder), scoring=self.scoring,
                compaction=Compaction.INLINE,
            )
        self._base = TieredContext(config=config, session_id=DEFAULT_SESSION)
        self.counter = self._base.counter
        self._contexts[DEFAULT_SESSION] = self._base

    def context(self, session_id: Optional[str] = None) -> TieredContext:
        """The `TieredContext` of one session (created on first use: same settings, same store)."""
        session = check_id(session_id or DEFAULT_SESSION, name="session_id")
        ctx = self._contexts.get(session)
        if ctx is None:
            ctx = self._contexts[session] = self._base.sibling(session_id=session)
        return ctx

    async def _aput(self, messages: List[ChatMessage]) -> None:
        by_session: Dict[str, list] = defaultdict(list)
        for message in messages:
            session = _session_of(message, DEFAULT_SESSION)
            by_session[session].append(message_to_item(message, id=f"f-{uuid.uuid4().hex}"))
        for session, items in by_session.items():
            await self.context(session).aput_many(items)

    @dispatcher.span
    async def _aget(self, messages: Optional[List[ChatMessage]] = None, session_id: Optional[str] = None, **block_kwargs: Any) -> str:
        session = session_id or DEFAULT_SESSION
        ctx = self.context(session)
        query = _query_of(messages)
        if len(ctx) == 0 or not query.strip():
            return ""
        out = await ctx.aassemble(query, budget=self._room(self.token_limit))
        emit_assembly(out, component=self.name, session_id=session, query=query, budget=self.token_limit)
        text = self._fit(out, self.token_limit)
        self._last = (session, query, text)
        return text

    def _room(self, limit: int) -> int:
        """The core's budget for a block of `limit` tokens (the header takes its share)."""
        return max(1, limit - self.counter.count(recalled_block([_PROBE])) + self.counter.count("user: x"))

    def _fit(self, out: Any, limit: int) -> str:
        """The labelled block of `out`'s items within `limit` tokens (least valuable lines out first)."""
        items = sorted(out.items, key=lambda i: (i.timestamp, i.seq))
        scores = out.report.scores
        while items:
            text = recalled_block(items)
            if self.counter.count(text) <= limit:
                return text
            items.remove(min(items, key=lambda i: (max((scores.get(o, {}).get("value", 0.0) for o in i.origin_ids), default=0.0), i.seq)))
        return ""

    async def atruncate(self, content: str, tokens_to_truncate: int) -> Optional[str]:
        """Re-assemble under ``tokens(content) - tokens_to_truncate`` (None when nothing fits)."""
        target = self.counter.count(content) - max(0, tokens_to_truncate)
        if target <= 0 or not content:
            return None
        if self._last is not None and self._last[2] == content:
            session, query, _ = self._last
            out = await self.context(session).aassemble(query, budget=self._room(target))
            return self._fit(out, target) or None
        lines = content.splitlines()  # not ours to re-assemble: drop the oldest lines
        while lines and self.counter.count("\n".join(lines)) > target:
            lines.pop(0)
        return "\n".join(lines) or None


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_SELF = re.compile(r"\b(i|i'm|i've|my|me|we|our|mine)\b", re.IGNORECASE)
_FACTY = re.compile(r"\d|\s[A-Z][a-z]+")


def extract_facts(text: str, *, min_importance: float = 0.25, min_self_importance: float = 0.1) -> List[str]:
    """Offline fact extraction: statements (not questions) about the speaker ("I am
    vegetarian", self-information >= `min_self_importance`) or with something specific
    in them (a number, a date, a name; >= `min_importance`)."""
    facts = []
    for sentence in _SENTENCE.split(text):
        sentence = sentence.strip()
        if len(sentence) < 12 or sentence.endswith("?"):
            continue
        info = self_information(sentence)
        if (_SELF.search(sentence) and info >= min_self_importance) or (_FACTY.search(sentence) and info >= min_importance):
            facts.append(sentence)
    return facts


class TieredFactBlock(BaseMemoryBlock[str]):
    """Facts the user stated, kept per session, served by relevance to the latest input.

    Offline by default: from each flushed message of the given `roles`, the sentences
    that carry a number, a date, a name or a statement about the speaker, and enough
    self-information ("I moved to Lisbon in 2021", "my budget is 3000 EUR"). Pass
    `extractor=` (text -> list of facts) to use anything else, e.g. an LLM call.

    Setup and use::

        memory = Memory.from_defaults(session_id="u1", memory_blocks=[TieredFactBlock()])

    Result: ``<Facts>`` with one ``- fact`` line each, most relevant first, at most
    `token_limit` tokens; sessions never see each other's facts. `atruncate` drops the
    least relevant facts first.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str = Field(default="Facts")
    priority: int = Field(default=2)
    max_facts: int = Field(default=50, gt=0)
    token_limit: int = Field(default=400, gt=0)
    roles: Tuple[str, ...] = Field(default=("user",))
    min_importance: float = Field(default=0.25, ge=0.0, le=1.0)
    extractor: Optional[Callable[[str], List[str]]] = Field(default=None, exclude=True)
    counter: Optional[TokenCounter] = Field(default=None, exclude=True)

    _facts: Dict[str, List[Tuple[int, str, float]]] = PrivateAttr(default_factory=dict)  # seq, text, importance
    _seq: int = PrivateAttr(default=0)

    def model_post_init(self, __context: Any) -> None:
        self.counter = self.counter or TokenCounter()

    def facts(self, session_id: Optional[str] = None) -> List[str]:
        """The session's facts, oldest first."""
        return [text for _, text, _ in sorted(self._facts.get(session_id or DEFAULT_SESSION, []))]

    async def _aput(self, messages: List[ChatMessage]) -> None:
        for message in messages:
            if message.role.value not in self.roles:
                continue
            session = _session_of(message, DEFAULT_SESSION)
            text = message_text(message)
            found = self.extractor(text) if self.extractor else extract_facts(text, min_importance=self.min_importance)
            self._add(session, found)

    def _add(self, session: str, found: List[str]) -> None:
        facts = self._facts.setdefault(session, [])
        known = {t.lower() for _, t, _ in facts}
        for fact in found:
            fact = fact.strip()
            if not fact or fact.lower() in known:
                continue
            known.add(fact.lower())
            self._seq += 1
            facts.append((self._seq, fact, self_information(fact)))
        if len(facts) > self.max_facts:  # keep the most informative, newer ones win ties
            facts.sort(key=lambda f: (f[2], f[0]), reverse=True)
            del facts[self.max_facts :]

    def _ranked(self, session: str, query: str) -> List[str]:
        wanted = set(terms(query))
        facts = self._facts.get(session, [])
        newest = max((f[0] for f in facts), default=0)

        def score(f: Tuple[int, str, float]) -> float:
            words = set(terms(f[1]))
            overlap = len(words & wanted) / (len(wanted) or 1)
            return overlap + 0.2 * f[2] + 0.05 * (f[0] / max(1, newest))

        return [f[1] for f in sorted(facts, key=score, reverse=True)]

    def _render(self, facts: List[str], limit: int) -> str:
        lines: List[str] = []
        used = 0
        for fact in facts:
            line = f"- {fact}"
            cost = self.counter.count(line) + 1
            if used + cost > limit:
                continue
            lines.append(line)
            used += cost
        return "\n".join(lines)

    async def _aget(self, messages: Optional[List[ChatMessage]] = None, session_id: Optional[str] = None, **block_kwargs: Any) -> str:
        session = session_id or DEFAULT_SESSION
        return self._render(self._ranked(session, _query_of(messages)), self.token_limit)

    async def atruncate(self, content: str, tokens_to_truncate: int) -> Optional[str]:
        lines = content.splitlines()
        target = self.counter.count(content) - max(0, tokens_to_truncate)
        while lines and self.counter.count("\n".join(lines)) > target:
            lines.pop()  # lines are most relevant first
        return "\n".join(lines) or None
