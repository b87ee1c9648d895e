"""Context strategies under evaluation: two baselines, tiered-context itself and its
ablations, and (from `baselines.py`) the frameworks' own memories.

A strategy sees a whole conversation once (`ingest`), then builds the context for each
question under a hard token budget (`context`), reporting which turns made it in::

    strategy = STRATEGIES["bm25"]()
    strategy.ingest(conversation)
    packed = strategy.context(question, budget=1000)
    packed.tokens <= 1000                       # always (cl100k tokens of packed.text)
    recall = len(packed.covered & set(question.evidence)) / len(question.evidence)

The baselines render each kept turn as one line ``"{speaker}: {text}"``, in
chronological order, and never cut a turn: a turn that does not fit whole is skipped.
"""

from __future__ import annotations

import functools

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tiered_context.core import BM25Index
from tiered_context import TokenCounter
from tiered_context.evals.datasets import Conversation, Question

__all__ = [
    "BM25Strategy",
    "NEEDS_MODEL",
    "Packed",
    "RecencyStrategy",
    "STRATEGIES",
    "Strategy",
    "TieredStrategy",
    "counter",
    "llm_free",
]

_COUNTER: TokenCounter | None = None


def counter() -> TokenCounter:
    """The one cl100k counter every strategy and the runner measure with."""
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = TokenCounter("cl100k_base")
    return _COUNTER


@dataclass(frozen=True, kw_only=True)
class Packed:
    """An assembled context: its text, its cl100k token count, and the ids of the turns
    whose content it holds (verbatim or as a compressed form that keeps provenance)."""

    text: str
    tokens: int
    covered: set[str] = field(default_factory=set)
    #: original tokens of the included items / tokens they used (None: no compression)
    compression_ratio: float | None = None
    #: what the assembler reported (tiered strategies: tokens_per_tier, candidates,
    #: dropped, compression_ratio, seconds); None for baselines
    report: Mapping[str, Any] | None = None


@runtime_checkable
class Strategy(Protocol):
    """What the runner needs: a name, one `ingest` per conversation, one `context` per
    question and budget. A fresh instance is made for every conversation."""

    name: str

    def ingest(self, conv: Conversation) -> None: ...

    def context(self, question: Question, budget: int) -> Packed: ...


class _LineStrategy:
    """Shared machinery of the baselines: one rendered line per turn, greedy packing.

    Subclasses only decide the order in which turns are offered (`_priority`).
    """

    name = "lines"
    #: Stop at the first turn that does not fit (a contiguous run) instead of skipping it.
    contiguous = False

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._lines: list[str] = []
        self._costs = np.zeros(0, dtype=np.int64)

    def ingest(self, conv: Conversation) -> None:
        self._ids = [t.id for t in conv.turns]
        self._lines = [f"{t.speaker}: {t.text}" for t in conv.turns]
        newline = counter().count("\n")
        # A line costs its own tokens plus the separator; the joined text is re-counted
        # at the end, so this estimate only has to be close, never exact.
        self._costs = np.asarray(counter().count_many(self._lines), dtype=np.int64) + newline

    def _priority(self, question: Question) -> Sequence[int]:
        """Turn indices in the order they should be offered to the packer."""
        raise NotImplementedError

    def context(self, question: Question, budget: int) -> Packed:
        if budget < 0:
            raise ValueError(f"budget must be >= 0 tokens, got {budget}")
        chosen = self._greedy(self._priority(question), budget)
        while True:
            text = "\n".join(self._lines[i] for i in sorted(chosen))
            tokens = counter().count(text)
            if tokens <= budget:
                return Packed(text=text, tokens=tokens, covered={self._ids[i] for i in chosen})
            chosen.pop()  # estimate was short (rare BPE merge effects): drop the last pick

    def _greedy(self, order: Sequence[int], budget: int) -> list[int]:
        chosen: list[int] = []
        left = budget + counter().count("\n")  # the last line has no separator after it
        for i in order:
            cost = int(self._costs[i])
            if cost <= left:
                chosen.append(i)
                left -= cost
            elif self.contiguous:
                break
        return chosen


class RecencyStrategy(_LineStrategy):
    """Keep the most recent turns: the usual "last N tokens" memory.

    Turns are taken newest first until the first one that does not fit, so the result
    is a contiguous tail of the conversation (what truncating a chat history keeps).
    """

    name = "recency"
    contiguous = True

    def _priority(self, question: Question) -> Sequence[int]:
        return range(len(self._lines) - 1, -1, -1)


class BM25Strategy(_LineStrategy):
    """Keep the turns most lexically relevant to the question (Okapi BM25 over turns).

    Turns with a positive score are packed by descending score (ties: newer first); a
    turn that does not fit is skipped and packing continues with the next.
    """

    name = "bm25"

    def __init__(self) -> None:
        super().__init__()
        self._index = BM25Index()

    def ingest(self, conv: Conversation) -> None:
        super().ingest(conv)
        self._index = BM25Index()
        for turn in conv.turns:
            self._index.add(turn.text)

    def _priority(self, question: Question) -> Sequence[int]:
        scores = self._index.scores(question.text)
        # lexsort sorts by the last key first: score descending, then index descending.
        order = np.lexsort((-np.arange(len(scores)), -scores))
        return [int(i) for i in order if scores[i] > 0]


class TieredStrategy:
    """tiered-context's own assembly through the public `TieredContext` facade.

    Each turn is `put` with its speaker's role (the first speaker of a dialogue is
    "user", the second "assistant"; many-party data is all "user") and its turn id as
    ``metadata["dia_id"]``; coverage is what `assemble(...).covered("dia_id")` reports.
    Keyword arguments go to `TieredContext` unchanged, for ablations::

        TieredStrategy(name="tiered:no-l2", **ablation_settings)

    Compaction runs inline unless `compaction=` says otherwise: the ladder then takes
    its steps at the same turns in every run, so a run reproduces to the digit
    (background compaction takes the same steps at boundaries that depend on timing:
    +-0.003 recall between two runs, measured).
    """

    def __init__(self, *, name: str = "tiered", **options: Any) -> None:
        try:
            from tiered_context import TieredContext
        except ImportError as exc:
            raise ImportError(
                "the 'tiered' strategy needs tiered_context.TieredContext, which this "
                "install does not provide yet; run with --strategies recency,bm25"
            ) from exc
        self.name = name
        self._factory = TieredContext
        self._options = {"compaction": "inline", **options}
        self._ctx: Any = None
        self._compressor: Any = None

    @property
    def compressor(self) -> Any:
        """The per-item compressor this configuration uses (None when compression is off);
        the runner measures answer survival with it."""
        if self._compressor is None and str(self._options.get("compression", "all")) not in ("off", "Compression.OFF"):
            from tiered_context import SelfInformationCompressor

            self._compressor = self._options.get("compressor") or SelfInformationCompressor(counter())
        return self._compressor

    def ingest(self, conv: Conversation) -> None:
        if self._ctx is not None:
            self._ctx.close()
        ctx = self._factory(session_id=conv.id, **self._options)
        for turn in conv.turns:
            role = "assistant" if conv.speakers and turn.speaker == conv.speakers[1] else "user"
            ctx.put(
                turn.text,
                role=role,
                timestamp=turn.timestamp,
                metadata={"dia_id": turn.id, "speaker": turn.speaker, "session": turn.session},
            )
        if hasattr(ctx, "flush"):
            ctx.flush()
        self._ctx = ctx

    def context(self, question: Question, budget: int) -> Packed:
        if self._ctx is None:
            raise RuntimeError("call ingest(conversation) before context(question, budget)")
        out = self._ctx.assemble(question.text, budget=budget, asked_at=question.asked_at)
        rep = out.report
        ratio = rep.compression_ratio if self.compressor is not None else None
        report = {"tokens_per_tier": dict(rep.tokens_per_tier), "candidates": rep.candidates,
                  "dropped": rep.dropped, "compression_ratio": rep.compression_ratio,
                  "seconds": rep.seconds}
        return Packed(text=out.text, tokens=int(out.tokens), covered=set(out.covered("dia_id")),
                      compression_ratio=ratio, report=report)


@functools.lru_cache(maxsize=1)
def _minilm() -> Any:
    from tiered_context import MiniLMEmbedder

    return MiniLMEmbedder()  # one ONNX session shared by every conversation


def _ablation(name: str, **settings: Any) -> Callable[[], Strategy]:
    def factory() -> Strategy:
        from tiered_context import ScoringConfig

        options = dict(settings)
        if "scoring" in options:
            options["scoring"] = ScoringConfig(**options["scoring"])
        if options.pop("transcripts", False):
            options["scoring"] = ScoringConfig.for_transcripts()
        if options.pop("minilm", False):
            options["embedder"] = _minilm()
        if "summary" in options:
            from tiered_context import SummaryConfig

            options["summary"] = SummaryConfig(**options["summary"])
        return TieredStrategy(name=name, **options)

    return factory


#: Name -> factory of a fresh strategy (one per conversation). `tiered:*` are ablations
#: of the default configuration, each changing one thing.
STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "recency": RecencyStrategy,
    "bm25": BM25Strategy,
    "tiered": TieredStrategy,
    "tiered:minilm": _ablation("tiered:minilm", minilm=True),
    "tiered:bm25-only": _ablation("tiered:bm25-only", scoring={"bm25_share": 1.0}),
    "tiered:dense-only": _ablation("tiered:dense-only", scoring={"bm25_share": 0.0}),
    # the fusion's BM25 share fixed at 0.5 for every query (no shrinking for chat messages)
    "tiered:fixed-fusion": _ablation("tiered:fixed-fusion", scoring={"adaptive_fusion": False}),
    # relevant items from the span a date in the query names ("on 7 July, 2023", "two weeks ago") count double
    "tiered:no-time": _ablation("tiered:no-time", scoring={"time_match_boost": 0.0}),
    # a speaker the query names ("What did Melanie paint?") gets no extra weight
    "tiered:no-speaker": _ablation("tiered:no-speaker", scoring={"speaker_boost": 0.0}),
    # the dense side embeds the query as it is, with the names of the speakers it names
    "tiered:named-dense": _ablation("tiered:named-dense", scoring={"name_free_dense": False}),
    # the gain of a speaker the query names stays with her own turns / always spreads to the
    # turns beside her hits (default: spreads as far as the turns are shorter than a step)
    "tiered:speaker-own-turns": _ablation("tiered:speaker-own-turns", scoring={"speaker_gain_spreads": False}),
    "tiered:speaker-gain-spreads": _ablation("tiered:speaker-gain-spreads", scoring={"speaker_gain_spreads": True}),
    "tiered:no-neighbours": _ablation("tiered:no-neighbours", scoring={"neighbour_decay": 0.0}),
    # neighbour distance counted in turns (three either side), not in content
    "tiered:turn-neighbours": _ablation("tiered:turn-neighbours",
                                        scoring={"neighbour_tokens": None, "neighbour_window": 3}),
    # the preset for meeting transcripts: a strong hit's neighbours inherit more, farther
    "tiered:transcript": _ablation("tiered:transcript", transcripts=True),
    # compression: none at all / the ladder's L2 forms only / also forms of retrieved candidates
    "tiered:no-compress": _ablation("tiered:no-compress", compression="off", summary={"enabled": False}),
    "tiered:l2-only": _ablation("tiered:l2-only", compression="working-set", summary={"enabled": False}),
    "tiered:compress": _ablation("tiered:compress", compression="all", summary={"enabled": False}),
    # the same with progressive summaries made, archived and offered to assembly
    "tiered:summaries": _ablation("tiered:summaries", compression="all", summary={"enabled": True, "candidates": True}),
}

#: Strategies that need a model or an LLM the run must be given (not part of ``all``).
NEEDS_MODEL = frozenset({"llmlingua", "langchain_summarization", "llama_index_summary_memory"})


def llm_free() -> tuple[str, ...]:
    """What ``--strategies all`` runs: every registered strategy that needs no model or
    LLM (each is still skipped when its framework is not installed)."""
    return tuple(name for name in STRATEGIES if name not in NEEDS_MODEL)


# The frameworks' own memories register themselves (``STRATEGIES.update(...)`` at the
# end of baselines.py, which imports summary_baselines.py, and of that one too).
import tiered_context.evals.baselines  # noqa: E402,F401
