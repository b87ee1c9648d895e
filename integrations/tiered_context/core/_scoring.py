"""Priority scoring: recency, hybrid relevance, importance and learned preference.

Every candidate gets a `ScoreParts` whose fields appear in the assembly report, so a
user can see *why* an item made it in (or did not)::

    total = w_rel * relevance + w_rec * recency + w_imp * importance
    fused     = share * z(bm25) + (1 - share) * z(dense)   (z over the collection)
    share     = bm25_share for questions and short (keyword) queries; for a long
                statement-form message (a chat turn as the query) it shrinks with its
                length: bm25_share * min(1, 4 / content terms)   (`query_share`)
    relevance = max(fused, 0) / max(fused over the candidates)
    recency = 0.5 ** (items since / half_life_items)

The weights start from `ScoringConfig` and are learned per user by `PreferenceModel`
from `feedback(...)`: which of the shown items an answer actually used.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiered_context.core._lexical import terms
from tiered_context.core._speakers import speakers_named, without_speakers
from tiered_context.core._store import SignalStats
from tiered_context.errors import ConfigError

__all__ = ["ScoringConfig", "ScoreParts", "Scorer", "PreferenceModel", "neighbour_shares", "query_share", "turn_step", "speakers_named",
           "without_speakers"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoringConfig:
    """Weights and shapes of the priority score (all validated at construction).

    `bm25_share` is the weight of lexical relevance (BM25) against dense (cosine) in the
    fusion. With `adaptive_fusion` (default) it is the share for questions and keyword
    queries; a statement-form message longer than `short_query_terms` content terms
    (the user's latest chat turn as the query) gets proportionally less, because its
    words are mostly incidental: the earlier turn it needs often shares none of them.

    A date in the query (`core._dates.time_window`) makes the relevant items from that span worth
    ``1 + time_match_boost`` times their value: an absolute one ("on 7 July, 2023", "in
    May 2023", "in 2024") always (LoCoMo dev 1k / 2k 0.864 / 0.918 -> 0.875 / 0.926,
    temporal 0.970 -> 0.979 at 2k; 92 of its 760 questions carry one), a relative one
    ("two weeks ago", "last Saturday") or one without its year ("in June") only when the
    caller says when the query is asked (`assemble(..., asked_at=)`): measured from the
    latest item instead, the window missed the evidence of 6 of 6 such LongMemEval dev
    questions (asked 6-35 days after the last turn) and cost 0.8-1.8 points on the
    conversational set, where chat messages say "two weeks ago" in passing.

    When the query names a speaker of the history (metadata ``speaker`` or ``name``:
    "What did Melanie paint?", "What did C think about the budget?"), that speaker's
    relevant items are worth ``1 + speaker_boost`` times their value: her own turns rarely
    contain her name, so lexical relevance alone finds the turns that address her instead.
    (LoCoMo dev at 1k / 2k: 0.821 / 0.889 without, 0.833 / 0.898 with 0.5.) A turn she
    said beside a strong hit of anyone's gains it too. Whether the turns beside her own
    hits gain it follows the same content distance as the neighbourhood below
    (``speaker_gain_spreads=None``): a transcript's region around what she said is hers
    (fully where the turns are under half a step), a chat message beside hers is its
    sender's (none at a whole step). ``True`` always spreads it, ``False`` never. LoCoMo
    dev 1k / 2k: always 0.853 / 0.910, by distance 0.864 / 0.918 (multi-hop 0.747 -> 0.771
    at 2k); QMSum train 0.523 / 0.680 always, 0.514 / 0.675 never, 0.522 / 0.680 by
    distance (rows `tiered:speaker-gain-spreads`, `tiered:speaker-own-turns`).
    With `name_free_dense` (default) the dense side embeds the query without the names of
    the speakers it names (`without_speakers`): in the default static embedder a name
    weighs as much as any other word of a short question and pulled the vector toward the
    turns that greet her (LoCoMo dev 1k / 2k 0.833 / 0.902 -> 0.845 / 0.907, multi-hop
    0.726 -> 0.746 at 2k; QMSum train and LongMemEval dev within 0.002).

    Turns near a strong hit inherit ``neighbour_decay ** distance`` of its value, out to a
    distance of `neighbour_window`. Distance is content, not turns: each turn is a step of
    ``min(1, median length of the turns around the hit / neighbour_tokens)``, so the reach
    is three or four chat messages but a region of a transcript's short utterances, where
    one topic runs over many turns (``neighbour_tokens=None`` counts turns). Tuned on
    LoCoMo dev and QMSum train: QMSum val 2k 0.548 -> 0.619 against counting turns, LoCoMo
    within 0.5 points at every budget.
    """

    relevance_weight: float = 1.0
    recency_weight: float = 0.1
    importance_weight: float = 0.1
    bm25_share: float = 0.5
    adaptive_fusion: bool = True
    short_query_terms: int = 4
    time_match_boost: float = 1.0
    speaker_boost: float = 0.5
    name_free_dense: bool = True
    speaker_gain_spreads: bool | None = None
    half_life_items: float = 100.0
    neighbour_decay: float = 0.7
    neighbour_window: float = 4
    neighbour_tokens: int | None = 32
    length_exponent: float = 0.25

    @classmethod
    def for_transcripts(cls, **overrides: Any) -> "ScoringConfig":
        """For meeting transcripts where evidence is a whole region: the ten turns around a
        strong hit inherit most of its value whatever their length (`neighbour_window=10`
        turns, `neighbour_decay=0.95`). The default already widens its reach over short
        utterances; this preset goes further. On QMSum val at 500 / 1k / 2k tokens: 0.322 /
        0.483 / 0.636 against the default's 0.295 / 0.461 / 0.619; on LoCoMo (point facts in
        a chat) it costs 13 / 6 / 5 points (``tiered-context eval ... --strategies
        tiered,tiered:transcript``). `overrides` replace any field.
        """
        return cls(**{"neighbour_window": 10, "neighbour_decay": 0.95, "neighbour_tokens": None, **overrides})

    def __post_init__(self) -> None:
        for name in ("relevance_weight", "recency_weight", "importance_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if not 0 <= self.bm25_share <= 1:
            raise ConfigError("bm25_share must be in [0, 1] (0 = dense only, 1 = BM25 only)")
        if self.time_match_boost < 0:
            raise ConfigError("time_match_boost must be >= 0 (0 = ignore dates in queries)")
        if self.short_query_terms < 1:
            raise ConfigError("short_query_terms must be >= 1 content term")
        if self.speaker_boost < 0:
            raise ConfigError("speaker_boost must be >= 0 (0 = ignore speakers the query names)")
        if self.speaker_gain_spreads not in (None, True, False):
            raise ConfigError("speaker_gain_spreads must be None (by content distance), True (always) or False (never)")
        if self.half_life_items <= 0:
            raise ConfigError("half_life_items must be > 0")
        if not 0 <= self.neighbour_decay < 1:
            raise ConfigError("neighbour_decay must be in [0, 1)")
        if not 0 <= self.neighbour_window <= 10:
            raise ConfigError("neighbour_window must be in [0, 10] (units of neighbour_tokens, or turns if it is None)")
        if self.neighbour_tokens is not None and (not isinstance(self.neighbour_tokens, int) or self.neighbour_tokens < 1):
            raise ConfigError("neighbour_tokens must be a positive int (tokens per unit of distance) or None (turns)")
        if not 0 <= self.length_exponent <= 1:
            raise ConfigError("length_exponent must be in [0, 1] (0 = pack by score, 1 = by score per token)")


#: Question form: a leading interrogative / auxiliary or request verb, or a final "?".
_QUESTION = re.compile(
    r"^\W*(what|when|where|who|whom|whose|which|why|how|did|does|do|is|are|was|were|can|could|would|"
    r"should|will|has|have|had|tell|list|name|find|show|summari[sz]e|describe|explain)\b", re.IGNORECASE)


def query_share(query: str, config: ScoringConfig) -> float:
    """The BM25 share of the fusion for `query` (see `ScoringConfig`).

    Questions and short queries keep `bm25_share`; a longer statement (a chat message)
    gets ``bm25_share * min(1, short_query_terms / content terms)``.
    """
    share = config.bm25_share
    if not config.adaptive_fusion or share in (0.0, 1.0):
        return share
    text = query.strip()
    if text.endswith("?") or _QUESTION.match(text):
        return share
    n = len(terms(text))
    return share * min(1.0, config.short_query_terms / n) if n else share


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """The explainable parts of one candidate's priority."""

    relevance: float
    bm25: float
    dense: float
    recency: float
    importance: float
    preference: float  # total minus what the default weights would give
    total: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 4) for k in self.__slots__}  # no deep copy: hot path


class PreferenceModel:
    """Per-user weights over (relevance, recency, importance), learned online.

    `update(user, used=[parts...], unused=[parts...])` takes one logistic-regression
    step: items an answer used pull the weights toward their parts, shown-but-unused
    items push away. Weights stay >= 0 and are thread-safe to update.
    """

    def __init__(self, defaults: ScoringConfig, *, learning_rate: float = 0.2) -> None:
        self._defaults = np.array([defaults.relevance_weight, defaults.recency_weight, defaults.importance_weight])
        self._weights: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.learning_rate = learning_rate

    def weights(self, user: str | None) -> np.ndarray:
        return self._weights.get(user or "", self._defaults)

    def update(self, user: str | None, used: Iterable[ScoreParts], unused: Iterable[ScoreParts]) -> np.ndarray:
        samples = [(p, 1.0) for p in used] + [(p, 0.0) for p in unused]
        if not samples:
            return self.weights(user)
        with self._lock:
            w = self.weights(user).copy()
            for parts, label in samples:
                x = np.array([parts.relevance, parts.recency, parts.importance])
                predicted = 1 / (1 + math.exp(-(float(w @ x) * 4 - 2)))
                w += self.learning_rate * (label - predicted) * x
                np.clip(w, 0.0, 5.0, out=w)
            self._weights[user or ""] = w
            return w

    def state(self) -> dict[str, list[float]]:
        """Every user's weights (a snapshot: safe while other threads update)."""
        with self._lock:
            return {u: w.round(6).tolist() for u, w in self._weights.items()}

    def load(self, state: Mapping[str, list[float]], *, merge: bool = False) -> None:
        """Replace the weights with `state` (`merge=True`: only the users it names)."""
        loaded = {}
        for user, weights in state.items():
            w = np.asarray(weights, dtype=float)
            if w.shape != self._defaults.shape or not np.all(np.isfinite(w)):
                raise ValueError(f"weights of {user!r} must be {len(self._defaults)} finite numbers, got {weights!r:.80}")
            loaded[user] = np.clip(w, 0.0, 5.0)
        with self._lock:
            self._weights = {**self._weights, **loaded} if merge else loaded


class Scorer:
    """Computes `ScoreParts` for many candidates at once (vectorised)."""

    def __init__(self, config: ScoringConfig | None = None, preferences: PreferenceModel | None = None) -> None:
        self.config = config or ScoringConfig()
        self.preferences = preferences or PreferenceModel(self.config)

    def score(
        self,
        *,
        bm25: np.ndarray,
        dense: np.ndarray,
        seqs: np.ndarray,
        importance: np.ndarray,
        latest_seq: int,
        stats: SignalStats | None = None,
        user: str | None = None,
        query: str | None = None,
    ) -> list[ScoreParts]:
        """Score parts of every candidate; `query` (when given) sets the fusion's BM25
        share per query (`query_share`), else `bm25_share` applies as it is."""
        cfg = self.config
        stats = stats or SignalStats()
        share = cfg.bm25_share if query is None else query_share(query, cfg)
        fused = share * (bm25 - stats.bm25_mean) / stats.bm25_std + (1 - share) * (
            dense - stats.dense_mean
        ) / stats.dense_std
        fused = np.maximum(fused, 0)
        relevance = fused / fused.max() if len(fused) and fused.max() > 0 else fused
        recency = np.power(0.5, np.maximum(latest_seq - seqs, 0) / cfg.half_life_items)
        parts = np.stack([relevance, recency, importance], axis=1)
        learned = parts @ self.preferences.weights(user)
        default = parts @ self.preferences.weights(None)
        return [
            ScoreParts(float(r), float(b), float(d), float(c), float(i), float(t - base), float(t))
            for r, b, d, c, i, t, base in zip(relevance, bm25, dense, recency, importance, learned, default)
        ]


def turn_step(seq: int, near: Mapping[int, Any], *, unit: int | None, turns: int) -> float:
    """How far one turn around `seq` reaches, in turns of content (at most 1): the median
    length of the turns within `turns` of it, in `unit` tokens. A chat message is a step
    (1.0); a transcript's short utterances are a fraction of one. `unit` None: 1.0."""
    if not unit:
        return 1.0
    around = [near[s].tokens or 1 for s in range(seq - turns, seq + turns + 1) if s in near]
    return min(1.0, statistics.median(around) / unit) if around else 1.0


def neighbour_shares(seq: int, value: float, near: Mapping[int, Any], *, decay: float, reach: float,
                     step: float, turns: int) -> dict[int, float]:
    """The share of a strong hit's `value` each turn around it inherits, by seq.

    `seq` is the hit's position, `near` the items by seq around it (a gap stops the walk).
    A turn `d` turns out inherits ``decay ** (d * step)`` of the value, while
    ``d * step <= reach`` and ``d <= turns``. `step` is what one turn there weighs in
    distance (`turn_step`: a chat message a whole step, a transcript's short utterances a
    fraction, so the reach spans more of them).
    """
    inherit: dict[int, float] = {}
    for direction in (-1, 1):
        for d in range(1, turns + 1):
            item = near.get(seq + direction * d)
            dist = d * step
            if item is None or dist > reach:
                break
            inherit[item.seq] = decay ** dist * value
    return inherit
