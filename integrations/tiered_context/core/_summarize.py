"""The `Summarizer` seam (L3 summaries): an offline extractive default and an LLM summarizer.

A summary is a derived `ContextItem` (role ``"summary"``, tier L3) whose `source_ids`
name every original it stands for, down through summaries of summaries, so nothing it
replaces is ever lost: the originals stay archived and retrievable. Summaries are
incremental (``summarize(new_items, previous)`` folds new items into the previous
summary without re-reading the history) and hierarchical (summaries of summaries).

A summary that is empty or not shorter than what it summarizes is rejected
(`SummaryRejected`): the caller keeps the originals. A failing or slow LLM is retried
with exponential backoff and then raises `SummaryError`; no placeholder ever stands in
for history. The LLM summarizer lives in `core.llm_summarize` (loaded on first use, still
importable from here).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tiered_context.core._blas import one_blas_thread
from tiered_context.core._embed import Embedder, normalize
from tiered_context.core._importance import SENTENCE, information
from tiered_context.core._items import ContextItem, Role, Tier
from tiered_context.core._render import day_of, header
from tiered_context.core._tokens import TokenCounter
from tiered_context.errors import ConfigError, TieredContextError

__all__ = ["ExtractiveSummarizer", "SummaryConfig", "SummaryError", "SummaryRejected", "Summarizer", "make_summary"]


class SummaryError(TieredContextError, RuntimeError):
    """A summary could not be made (the LLM failed or timed out after its retries).
    The history is unchanged: nothing was replaced."""


class SummaryRejected(SummaryError):
    """A summary came back empty or not shorter than its input; the originals are kept."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SummaryConfig:
    """How the memory folds retiring history into progressive summaries (L3).

    When the ladder retires items from the working set, their originals (at least
    `min_batch_tokens` of them; smaller batches wait) are folded into the running
    level-1 summary. A summary standing for `chain_items` originals is sealed and a new
    one starts; `fanout` sealed summaries of one level are merged one level up
    (summaries of summaries). Retiring items whose names, numbers or dates the summary
    dropped, scoring at least `fact_threshold`, stay in L2 (at most `max_fact_items` per
    summary). `candidates=False` archives summaries without offering them to `assemble`.
    """

    enabled: bool = True
    min_batch_tokens: int = 256
    chain_items: int = 256
    fanout: int = 4
    fact_threshold: float = 0.75
    max_fact_items: int = 4
    candidates: bool = True

    def __post_init__(self) -> None:
        if self.min_batch_tokens < 1 or self.chain_items < 2 or self.fanout < 2:
            raise ConfigError("min_batch_tokens must be >= 1, chain_items >= 2 and fanout >= 2")
        if not 0.0 <= self.fact_threshold <= 1.0:
            raise ConfigError(f"fact_threshold must be in [0, 1], got {self.fact_threshold}")
        if self.max_fact_items < 0:
            raise ConfigError("max_fact_items must be >= 0")

    def capacity(self, level: int) -> int:
        """How many originals a level-`level` summary stands for before it is sealed."""
        return self.chain_items * self.fanout ** (level - 1)


@runtime_checkable
class Summarizer(Protocol):
    """Folds `items` (and the `previous` summary, if any) into one new summary item."""

    def summarize(self, items: Sequence[ContextItem], previous: ContextItem | None = None) -> ContextItem: ...

    async def asummarize(self, items: Sequence[ContextItem], previous: ContextItem | None = None) -> ContextItem: ...


# -- the summary item --------------------------------------------------------------------
def summary_id(items: Sequence[ContextItem], previous: ContextItem | None) -> str:
    """Deterministic: the same inputs always name the same summary (replays reuse it)."""
    key = "\x1f".join([previous.id if previous else ""] + [i.id for i in items])
    return "sum_" + hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=12).hexdigest()


def make_summary(
    text: str,
    items: Sequence[ContextItem],
    previous: ContextItem | None,
    *,
    counter: TokenCounter,
    method: str,
) -> ContextItem:
    """Validate `text` as a summary of `items` (+ `previous`) and wrap it as an item.

    Raises `SummaryRejected` when `text` is empty or has at least as many tokens as the
    input it summarizes.
    """
    if not isinstance(text, str):
        raise SummaryRejected(f"the summary model returned {type(text).__name__}, not text; the originals are kept")
    text = text.strip()
    inputs = ([previous] if previous is not None else []) + list(items)
    if not inputs:
        raise ConfigError("summarize() needs at least one item")
    in_tokens = sum(i.tokens or counter.count(i.text) for i in inputs)
    tokens = counter.count(text)
    if not text:
        raise SummaryRejected("the summary is empty; the originals are kept")
    if tokens >= in_tokens:
        raise SummaryRejected(f"the summary ({tokens} tokens) is not shorter than its input ({in_tokens}); "
                              "the originals are kept")
    sources: dict[str, None] = {}
    for item in inputs:
        for origin in item.origin_ids:
            sources[origin] = None
    children = [i for i in items if i.role == Role.SUMMARY.value]
    level = 1 + max((int(c.metadata.get("summary_level", 1)) for c in children), default=0)
    originals = [i for i in inputs if not i.is_derived]
    seqs = [int(i.metadata["first_seq"]) for i in inputs if "first_seq" in i.metadata] + [i.seq for i in originals]
    last = [int(i.metadata["last_seq"]) for i in inputs if "last_seq" in i.metadata] + [i.seq for i in originals]
    metadata: dict[str, Any] = {
        "summary_level": level,
        "method": method,
        "first_seq": min(seqs, default=-1),
        "last_seq": max(last, default=-1),
        "from_ts": min(i.timestamp for i in inputs),
        "to_ts": max(i.timestamp for i in inputs),
        "input_tokens": in_tokens,
    }
    if previous is not None:
        metadata["previous"] = previous.id
    if children:
        metadata["children"] = [c.id for c in children]
    return ContextItem(
        id=summary_id(items, previous),
        text=text,
        role=Role.SUMMARY.value,
        timestamp=max(i.timestamp for i in inputs),
        tokens=tokens,
        tier=Tier.L3,
        importance=round(max(i.importance for i in inputs), 4),
        metadata=metadata,
        source_ids=tuple(sources),
    )


# -- extractive (offline default) -------------------------------------------------------
#: A sentence with less information than this (chit-chat, greetings) is never picked.
MIN_SENTENCE_BITS = 10.0
_HEADER = re.compile(r"^\[(?P<day>[^\]]{4,30})\]$")
_SPOKEN = re.compile(r"^(?P<who>[^:\n\[]{1,80}?): (?P<text>.+)$")
#: (time, sentence, speaker or None, day or None)
_Line = tuple[float, str, "str | None", "str | None"]


def _parse_lines(text: str) -> list[tuple[str | None, str | None, str]]:
    """(speaker, day, sentence) of each line of an extractive summary (any text works:
    lines without a speaker keep None)."""
    out, day = [], None
    for raw in text.split("\n"):
        raw = raw.strip()
        if not raw:
            continue
        if m := _HEADER.match(raw):
            day = m.group("day")
            continue
        m = _SPOKEN.match(raw)
        out.append((m.group("who"), day, m.group("text")) if m else (None, day, raw))
    return out


def _render_lines(lines: Sequence[_Line]) -> str:
    """Chronological lines, ``Speaker: sentence``, with a ``[day]`` line when the day changes."""
    out, day = [], None
    for _, sentence, who, when in lines:
        if when is not None and when != day:
            out.append(f"[{when}]")
            day = when
        out.append(f"{who}: {sentence}" if who else sentence)
    return "\n".join(out)


#: Sentence vectors an `ExtractiveSummarizer` keeps (a summary's lines and the sentences of a batch).
VECTOR_MEMO = 4096


class ExtractiveSummarizer:
    """The offline default: keeps the most informative sentences, with who said them and when.

    Setup and use::

        summarizer = ExtractiveSummarizer(embedder=WordLlamaEmbedder())
        first = summarizer.summarize(items[:100])
        second = summarizer.summarize(items[100:200], previous=first)  # incremental

    Each candidate sentence (of the new items and of the previous summary) scores
    ``centrality_weight * z(cosine to the centroid) + (1 - centrality_weight) *
    z(information per sqrt(token))``, where information counts the surprisal of content
    words, numbers and dates (not fillers, nor the speakers' names); sentences without
    less than `MIN_SENTENCE_BITS` are never picked. The best fill `ratio` of the input tokens (at most
    `max_tokens`), near-duplicates skipped, in chronological order. Each line reads
    ``"Caroline: I went to a support group."`` under a ``[8 May 2023]`` line.
    """

    def __init__(
        self,
        *,
        counter: TokenCounter | None = None,
        embedder: Embedder | None = None,
        ratio: float = 0.25,
        max_tokens: int = 400,
        centrality_weight: float = 0.2,
        min_sentence_tokens: int = 4,
    ) -> None:
        if not 0.01 <= ratio < 1.0:
            raise ConfigError(f"ratio must be in [0.01, 1.0), got {ratio}")
        if max_tokens < 16:
            raise ConfigError("max_tokens must be >= 16")
        self.counter = counter or TokenCounter()
        self._embedder = embedder
        # sentence -> unit vector, line -> tokens: a progressive summary's lines are candidates
        # again at every step that extends it; each is embedded and counted once
        self._vectors: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self._vectors_lock = threading.Lock()
        self.ratio, self.max_tokens = ratio, max_tokens
        self.centrality_weight = centrality_weight
        self.min_sentence_tokens = min_sentence_tokens

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from tiered_context.core._embed import WordLlamaEmbedder

            self._embedder = WordLlamaEmbedder()
        return self._embedder

    def summarize(self, items: Sequence[ContextItem], previous: ContextItem | None = None) -> ContextItem:
        lines = self._candidates(items, previous)
        in_tokens = sum(i.tokens or self.counter.count(i.text) for i in list(items) + ([previous] if previous else []))
        limit = max(16, min(self.max_tokens, int(in_tokens * self.ratio)))
        speakers = frozenset(w.lower() for i in items
                             for w in str(i.metadata.get("speaker") or i.metadata.get("name") or "").split())
        chosen = self._select(lines, limit, speakers)
        text = _render_lines([lines[k] for k in sorted(chosen, key=lambda k: (lines[k][0], k))])
        while len(chosen) > 1 and self.counter.count(text) > limit:  # day headers are paid for here
            chosen.pop()
            text = _render_lines([lines[k] for k in sorted(chosen, key=lambda k: (lines[k][0], k))])
        return make_summary(text, items, previous, counter=self.counter, method="extractive")

    async def asummarize(self, items: Sequence[ContextItem], previous: ContextItem | None = None) -> ContextItem:
        return await asyncio.to_thread(self.summarize, items, previous)

    def _candidates(self, items: Sequence[ContextItem], previous: ContextItem | None) -> list[_Line]:
        """Every sentence of the new items and every line of the summaries folded in."""
        out: list[_Line] = []
        for summary in ([previous] if previous is not None else []) + [i for i in items if i.role == Role.SUMMARY.value]:
            start = float(summary.metadata.get("from_ts", summary.timestamp))
            out.extend((start + n * 1e-3, text, who, day) for n, (who, day, text) in enumerate(_parse_lines(summary.text)))
        for item in items:
            if item.role == Role.SUMMARY.value:
                continue
            who = str(item.metadata.get("speaker") or item.metadata.get("name") or item.role)
            day = day_of(item)
            when = header(day)[1:-1] if day else None
            for n, sentence in enumerate(s.strip() for s in SENTENCE.split(item.text)):
                if sentence:
                    out.append((item.timestamp + n * 1e-6, sentence, who, when))
        return out

    def _select(self, lines: list[_Line], limit: int, ignore: frozenset[str]) -> list[int]:
        if not lines:
            return []
        with one_blas_thread():
            return self._choose(lines, limit, ignore)

    def _choose(self, lines: list[_Line], limit: int, ignore: frozenset[str]) -> list[int]:
        bare = [c[1] for c in lines]
        costs = self._count([f"{c[2]}: {c[1]}" if c[2] else c[1] for c in lines])
        vectors = self._embed(bare)
        centroid = vectors.mean(axis=0)
        norm = float(np.linalg.norm(centroid)) or 1.0
        centrality = vectors @ (centroid / norm)
        raw = np.array([information(b, ignore=ignore) for b in bare], dtype=np.float32)
        info = raw / np.sqrt(np.asarray(costs, dtype=np.float32) + 4.0)
        w = self.centrality_weight
        score = w * _z(centrality) + (1 - w) * _z(info)
        short = np.asarray(self._count(bare)) < self.min_sentence_tokens
        score[(raw < MIN_SENTENCE_BITS) | short] = -np.inf
        chosen: list[int] = []
        used = 0
        for k in np.argsort(-score, kind="stable"):
            k = int(k)
            if not np.isfinite(score[k]):
                break
            if used + costs[k] + 1 > limit:
                continue
            if chosen and float(np.max(vectors[chosen] @ vectors[k])) > 0.95:
                continue  # a near-duplicate of a sentence already kept
            chosen.append(k)
            used += costs[k] + 1
        if not chosen and np.isfinite(score).any():  # a tiny batch: its best sentence, if that is shorter
            chosen.append(int(np.argmax(score)))
        return chosen

    def _count(self, texts: list[str]) -> list[int]:
        """Tokens of each of `texts`, each counted once (the most recent `2 * VECTOR_MEMO` kept)."""
        with self._vectors_lock:
            memo = self._counts
            todo = [t for t in dict.fromkeys(texts) if t not in memo]
            if todo:
                memo.update(zip(todo, self.counter.count_many(todo)))
            counts = [memo[t] for t in texts]
            for old in list(memo)[: max(0, len(memo) - 2 * VECTOR_MEMO)]:
                del memo[old]
            return counts

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of `texts`, each sentence embedded once (the most recent `VECTOR_MEMO` kept)."""
        with self._vectors_lock:
            memo = self._vectors
            todo = [t for t in dict.fromkeys(texts) if t not in memo]
            if todo:
                memo.update(zip(todo, normalize(self.embedder.embed(todo))))
            vectors = np.stack([memo[t] for t in texts])
            for old in list(memo)[: max(0, len(memo) - VECTOR_MEMO)]:
                del memo[old]
            return vectors

    def __repr__(self) -> str:
        return f"ExtractiveSummarizer(ratio={self.ratio}, max_tokens={self.max_tokens})"


def _z(values: np.ndarray) -> np.ndarray:
    std = float(values.std())
    return (values - values.mean()) / std if std > 0 else values - values.mean()
