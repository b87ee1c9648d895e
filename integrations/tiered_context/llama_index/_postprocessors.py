"""Node postprocessors: pack by value per token, compress with provenance, re-prioritise.

All three are `BaseNodePostprocessor`s with sync and async paths; they work in a
`RetrieverQueryEngine(node_postprocessors=[...])`, a chat engine, or a
`VectorMemoryBlock(node_postprocessors=[...])`.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Dict, List, Optional

import numpy as np

from tiered_context.errors import missing_extra

try:
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, model_validator
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core import (
    Compressor,
    ContextItem,
    PreferenceModel,
    Role,
    ScoreParts,
    ScoringConfig,
    SelfInformationCompressor,
    TokenCounter,
    self_information,
    terms,
)
from tiered_context.llama_index._instrumentation import emit_compression

__all__ = ["TokenBudgetPostprocessor", "CompressionPostprocessor", "PriorityPostprocessor", "PROVENANCE_KEYS"]

#: Metadata a compressed node carries (hidden from the LLM and the embedder).
PROVENANCE_KEYS = (
    "tiered_context_source_id",
    "tiered_context_original_tokens",
    "tiered_context_tokens",
    "tiered_context_compression_ratio",
    "tiered_context_compressor",
)


def _scores(nodes: Sequence[NodeWithScore]) -> np.ndarray:
    """Node scores, with missing ones filled by rank (first best), shifted to >= 0."""
    raw = np.array([n.score if n.score is not None else np.nan for n in nodes], dtype=np.float64)
    if np.isnan(raw).all():
        return 1.0 / (1.0 + np.arange(len(nodes)))
    raw = np.where(np.isnan(raw), np.nanmin(raw), raw)
    return raw - min(0.0, float(raw.min()))


def renamed_token_budget(values: Any, owner: str) -> Any:
    """`token_budget=` (the name before one release) -> `token_limit=`, with a
    DeprecationWarning; both at once is an error."""
    if isinstance(values, dict) and "token_budget" in values:
        values = dict(values)
        old = values.pop("token_budget")
        if values.get("token_limit") is not None and old is not None:
            raise ValueError(f"{owner}: pass token_limit= only (token_budget= is its deprecated old name)")
        warnings.warn(f"{owner}(token_budget=...) is deprecated; use token_limit=, the name every LlamaIndex "
                      "class of tiered-context uses (token_budget goes in the next release)", DeprecationWarning, stacklevel=4)
        values["token_limit"] = old
    return values


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


class TokenBudgetPostprocessor(BaseNodePostprocessor):
    """Keeps the best nodes that fit in `token_limit` tokens, after dropping
    near-duplicates (term-set Jaccard >= `dedupe_threshold`; the higher-scored copy stays).

    Setup and use::

        packer = TokenBudgetPostprocessor(token_limit=1500)
        engine = RetrieverQueryEngine.from_args(retriever, node_postprocessors=[packer])

    Result: nodes in descending score order whose texts (as the LLM sees them, metadata
    included) fit in `token_limit` tokens. The highest-scored node that fits is always
    kept; the rest of the room goes by value per token: value / tokens **
    `length_exponent` (default 1.0, the fractional-knapsack greedy; 0.0: by rank alone),
    where a node's value is its reciprocal rank, 1 / (1 + rank by score) among the nodes
    left after dedupe. The scores are used as an order only, so the choice does not move
    when a retriever's scores are shifted or scaled. Raw similarities share a large offset
    (the 20th cosine hit scores 0.40 when the first scores 0.47): as values they made a
    weak hit nearly as valuable as the best one, and at small budgets the packer traded
    the 2nd and 3rd best chunks for shorter weak ones (QMSum val at 500 tokens: evidence
    recall 0.089 against 0.114 for plain truncation; with ranks 0.115; at 1,000 / 2,000:
    0.180 / 0.304 against 0.165 / 0.293; 63 queries, so small differences are noise:
    `tiered-context eval --data-qmsum ... --rag-postprocessors`). `token_budget=` is the
    deprecated old name of `token_limit` (one release).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    token_limit: int = Field(default=2000, gt=0)
    dedupe_threshold: Optional[float] = Field(default=0.85, ge=0.0, le=1.0)
    #: with reciprocal-rank values, 1.0 (value per token) measured at or above plain truncation at
    #: 500 / 1,000 / 2,000 tokens on QMSum val in a VectorStoreIndex query engine
    #: (`tiered-context eval --data-qmsum ... --rag-postprocessors`)
    length_exponent: float = Field(default=1.0, ge=0.0, le=1.0)
    metadata_mode: MetadataMode = Field(default=MetadataMode.LLM)
    counter: Optional[TokenCounter] = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, values: Any) -> Any:
        return renamed_token_budget(values, "TokenBudgetPostprocessor")

    @property
    def token_budget(self) -> int:
        """Deprecated: `token_limit`."""
        return self.token_limit

    def model_post_init(self, __context: Any) -> None:
        self.counter = self.counter or TokenCounter()

    @classmethod
    def class_name(cls) -> str:
        return "TokenBudgetPostprocessor"

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        costs = [c + 1 for c in self.counter.count_many(texts)]  # +1: the separator between nodes
        scores = _scores(nodes)
        by_score = sorted(range(len(nodes)), key=lambda i: -scores[i])
        kept: List[int] = []
        seen: List[set] = []
        for i in by_score:
            words = set(terms(texts[i]))
            if self.dedupe_threshold is not None and any(_jaccard(words, s) >= self.dedupe_threshold for s in seen):
                continue
            kept.append(i)
            seen.append(words)
        # value: the reciprocal rank among the nodes left after dedupe (the scores as an order only)
        value = {i: 1.0 / (1 + rank) for rank, i in enumerate(kept)}
        remaining = self.token_limit
        chosen = set()
        best = next((i for i in kept if costs[i] <= remaining), None)  # kept is best-first
        if best is not None:  # never give up the best node that fits for several cheaper ones
            chosen.add(best)
            remaining -= costs[best]
        for i in sorted(kept, key=lambda i: -value[i] / costs[i] ** self.length_exponent):
            if i in chosen:
                continue
            if costs[i] <= remaining:
                chosen.add(i)
                remaining -= costs[i]
        return [nodes[i] for i in by_score if i in chosen]

    async def _apostprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        return self._postprocess_nodes(nodes, query_bundle)  # CPU-light: no thread hop


class CompressionPostprocessor(BaseNodePostprocessor):
    """Compresses each node's text with the core's `Compressor` (default: the offline
    self-information compressor; any `Compressor`, e.g. LLMLingua, via `compressor=`).

    Setup and use::

        engine = RetrieverQueryEngine.from_args(
            retriever, node_postprocessors=[CompressionPostprocessor(ratio=0.5)])

    Result: the same nodes in the same order with the same scores; a compressed node is a
    copy with id ``"<id>~L2"``, the shorter text, and provenance in its metadata
    (`PROVENANCE_KEYS`: the source node id, tokens before and after, the ratio), hidden
    from the LLM and the embedder. Numbers, names, quoted and code spans, and a leading
    "[date] Speaker:" survive; JSON and nodes under `min_tokens` are left as they are.
    Compression is query-aware: the words of the query and their neighbours are kept
    (when the compressor takes ``query=``, as the default does). With `token_limit`, the
    ratio is chosen so that the nodes fit (never below `min_ratio`); `token_budget=` is
    its deprecated old name (one release).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    token_limit: Optional[int] = Field(default=None, gt=0)
    min_ratio: float = Field(default=0.2, gt=0.0, le=1.0)
    min_tokens: int = Field(default=24, ge=0)
    counter: Optional[TokenCounter] = Field(default=None, exclude=True)
    compressor: Optional[Any] = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, values: Any) -> Any:
        return renamed_token_budget(values, "CompressionPostprocessor")

    @property
    def token_budget(self) -> Optional[int]:
        """Deprecated: `token_limit`."""
        return self.token_limit

    def model_post_init(self, __context: Any) -> None:
        self.counter = self.counter or TokenCounter()
        self.compressor = self.compressor or SelfInformationCompressor(self.counter)
        if not isinstance(self.compressor, Compressor):
            raise TypeError("compressor must implement compress(items, ratio) and acompress(items, ratio)")

    @classmethod
    def class_name(cls) -> str:
        return "CompressionPostprocessor"

    def _prepare(self, nodes: List[NodeWithScore]) -> tuple[list, list, float]:
        todo, items = [], []
        total = 0
        for i, n in enumerate(nodes):
            text = n.node.get_content(metadata_mode=MetadataMode.NONE)
            tokens = self.counter.count(text)
            total += tokens
            if isinstance(n.node, TextNode) and tokens >= self.min_tokens:
                todo.append(i)
                items.append(ContextItem(id=n.node.node_id, text=text, role=Role.DOCUMENT.value, tokens=tokens))
        ratio = self.ratio
        if self.token_limit is not None:
            ratio = 1.0 if total <= self.token_limit else max(self.min_ratio, self.token_limit / max(1, total))
        return todo, items, ratio

    def _apply(self, nodes: List[NodeWithScore], todo: list, items: list, forms: list, ratio: float) -> List[NodeWithScore]:
        out = list(nodes)
        before = after = done = 0
        name = type(self.compressor).__name__
        for i, item, form in zip(todo, items, forms):
            tokens = form.tokens or self.counter.count(form.text)
            before += item.tokens
            if tokens >= item.tokens:
                after += item.tokens
                continue
            after += tokens
            done += 1
            original = nodes[i]
            node = original.node.model_copy(deep=True)
            node.id_ = f"{original.node.node_id}~L2"
            node.set_content(form.text)
            node.metadata.update({
                "tiered_context_source_id": original.node.node_id,
                "tiered_context_original_tokens": item.tokens,
                "tiered_context_tokens": tokens,
                "tiered_context_compression_ratio": round(item.tokens / max(1, tokens), 4),
                "tiered_context_compressor": name,
            })
            for keys in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
                keys.extend(k for k in PROVENANCE_KEYS if k not in keys)
            out[i] = NodeWithScore(node=node, score=original.score)
        if items:
            emit_compression(component=self.class_name(), nodes=len(nodes), compressed=done, before=before, after=after)
        return out

    def _query_kwargs(self, query_bundle: Optional[QueryBundle]) -> Dict[str, Any]:
        """``query=`` for compressors that take it (query-aware compression)."""
        query = query_bundle.query_str if query_bundle is not None else None
        if not query:
            return {}
        try:
            params = inspect.signature(self.compressor.compress).parameters
        except (TypeError, ValueError):
            return {}
        return {"query": query} if "query" in params else {}

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        todo, items, ratio = self._prepare(nodes)
        if not items or ratio >= 1.0:
            return list(nodes)
        return self._apply(nodes, todo, items, self.compressor.compress(items, ratio, **self._query_kwargs(query_bundle)), ratio)

    async def _apostprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        todo, items, ratio = self._prepare(nodes)
        if not items or ratio >= 1.0:
            return list(nodes)
        forms = await self.compressor.acompress(items, ratio, **self._query_kwargs(query_bundle))
        return self._apply(nodes, todo, items, forms, ratio)


def _timestamp(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    return None


class PriorityPostprocessor(BaseNodePostprocessor):
    """Re-scores nodes by the core's priority: relevance (the retriever's score, min-max
    normalised), recency (exponential decay of ``metadata[timestamp_key]`` with
    `half_life_seconds`), importance (self-information of the text), weighted per user
    by preferences learned from `feedback`.

    Setup and use::

        priority = PriorityPostprocessor(recency_weight=0.3, top_n=8)
        engine = RetrieverQueryEngine.from_args(retriever, node_postprocessors=[priority])
        response = engine.query("...")
        priority.feedback(response.source_nodes, used=[response.source_nodes[0].node.node_id])

    Result: the nodes sorted by the new score (their `score` replaced by it), the first
    `top_n` when given; `last_parts` holds each node's `ScoreParts` (why it ranked).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    relevance_weight: float = Field(default=1.0, ge=0.0)
    recency_weight: float = Field(default=0.2, ge=0.0)
    importance_weight: float = Field(default=0.1, ge=0.0)
    half_life_seconds: float = Field(default=7 * 86400.0, gt=0.0)
    timestamp_key: str = Field(default="timestamp")
    now: Optional[float] = Field(default=None, description="Reference time (default: the call's time).")
    top_n: Optional[int] = Field(default=None, gt=0)
    user_id: Optional[str] = Field(default=None)
    learning_rate: float = Field(default=0.2, gt=0.0)

    _prefs: PreferenceModel = PrivateAttr()
    _last_parts: Dict[str, ScoreParts] = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        config = ScoringConfig(
            relevance_weight=self.relevance_weight, recency_weight=self.recency_weight, importance_weight=self.importance_weight,
        )
        self._prefs = PreferenceModel(config, learning_rate=self.learning_rate)

    @classmethod
    def class_name(cls) -> str:
        return "PriorityPostprocessor"

    @property
    def last_parts(self) -> Dict[str, ScoreParts]:
        """Each node's `ScoreParts` from the last call, by node id."""
        return self._last_parts

    @property
    def preferences(self) -> PreferenceModel:
        return self._prefs

    def weights(self, user_id: Optional[str] = None) -> Dict[str, float]:
        w = self._prefs.weights(user_id or self.user_id)
        return {"relevance": float(w[0]), "recency": float(w[1]), "importance": float(w[2])}

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if not nodes:
            return []
        raw = _scores(nodes)
        span = float(raw.max() - raw.min())
        relevance = (raw - raw.min()) / span if span > 0 else np.ones(len(nodes))
        now = self.now if self.now is not None else time.time()
        recency = np.array([
            0.0 if (ts := _timestamp(n.node.metadata.get(self.timestamp_key))) is None
            else math.pow(0.5, max(0.0, now - ts) / self.half_life_seconds)
            for n in nodes
        ])
        importance = np.array([self_information(n.node.get_content(metadata_mode=MetadataMode.NONE)) for n in nodes])
        x = np.stack([relevance, recency, importance], axis=1)
        totals = x @ self._prefs.weights(self.user_id)
        defaults = x @ self._prefs.weights(None)
        ranked = []
        parts: Dict[str, ScoreParts] = {}
        for n, (rel, rec, imp), raw_score, total, base in zip(nodes, x, raw, totals, defaults):
            parts[n.node.node_id] = ScoreParts(float(rel), 0.0, float(raw_score), float(rec), float(imp), float(total - base), float(total))
            ranked.append(NodeWithScore(node=n.node, score=float(total)))
        ranked.sort(key=lambda n: -(n.score or 0.0))
        self._last_parts = parts
        return ranked[: self.top_n] if self.top_n else ranked

    async def _apostprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        return self._postprocess_nodes(nodes, query_bundle)

    def feedback(self, nodes: Sequence[NodeWithScore], used: Sequence[str], *, user_id: Optional[str] = None) -> Dict[str, float]:
        """Which of the shown `nodes` (by node id) the answer used: one online step of the
        user's weights. Returns the new weights."""
        used_ids = set(used)
        yes = [self.last_parts[n.node.node_id] for n in nodes if n.node.node_id in self.last_parts and n.node.node_id in used_ids]
        no = [self.last_parts[n.node.node_id] for n in nodes if n.node.node_id in self.last_parts and n.node.node_id not in used_ids]
        self._prefs.update(user_id or self.user_id, yes, no)
        return self.weights(user_id)
