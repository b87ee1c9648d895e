"""The semantic cache's meaning guard, measured: hit rate and false-hit rate, before and after.

    python -m tiered_context.evals.cache_eval                      # WordLlama (the default embedder)
    python -m tiered_context.evals.cache_eval --embedders wordllama,minilm --thresholds 0.85,0.92

The paraphrase set is `tiered_context.evals.cache_pairs`: pairs that must hit (a rewording
with the same numbers, dates, negations and names) and pairs that must miss (one of those
changed, or another change the guard does not model, kept to show its limits). Each pair
lives in its own tenant of one embedded-Qdrant `SemanticCache`, so a lookup can only
return that pair's cached answer:

- **hit rate**: must-hit pairs answered from the cache (higher is better);
- **false-hit rate**: must-miss pairs answered from the cache, i.e. a wrong answer served
  (lower is better).

"before" is the vector match alone (``guard=None``), "after" is the default
``guard=same_meaning`` (`tiered_context.core._meaning`). The row at threshold "any" takes
the nearest entry whatever its similarity, so it shows the guard on its own. Prints a
markdown table (and, with ``--by-category``, false hits per kind of change). Offline and
deterministic.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tiered_context.evals.cache_pairs import MUST_HIT, MUST_MISS

__all__ = ["Row", "evaluate", "main", "markdown"]

_LLM = "eval-model|temperature=0"
_ANY = 1e-9  # a threshold every match passes: the guard alone decides


@dataclass(frozen=True)
class Row:
    embedder: str
    threshold: float
    guard: bool
    hits: int
    hit_total: int
    false_hits: int
    miss_total: int
    false_by_category: dict[str, int]

    @property
    def hit_rate(self) -> float:
        return self.hits / self.hit_total if self.hit_total else 0.0

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.miss_total if self.miss_total else 0.0


def _embedder(name: str) -> Any:
    if name == "wordllama":
        from tiered_context import WordLlamaEmbedder

        return WordLlamaEmbedder()
    if name == "minilm":
        from tiered_context import MiniLMEmbedder

        return MiniLMEmbedder()
    if name == "hash":
        from tiered_context.testing import HashEmbedder

        return HashEmbedder(64)
    raise SystemExit(f"unknown embedder {name!r}; use wordllama, minilm or hash")


_DEFAULT_THRESHOLD = {"wordllama": None, "minilm": 0.94, "hash": 0.8}  # None: SemanticCache's default


def evaluate(embedders: Sequence[str] = ("wordllama",), thresholds: Sequence[float] | None = None) -> list[Row]:
    """Rows of (embedder, threshold, guard off/on) with hit and false-hit counts."""
    from tiered_context.core import same_meaning
    from tiered_context.qdrant._cache import DEFAULT_THRESHOLD
    from tiered_context.qdrant import SemanticCache

    rows: list[Row] = []
    for name in embedders:
        embedder = _embedder(name)
        folder = tempfile.mkdtemp(prefix="cache-eval-")
        try:
            cache = SemanticCache(folder, embedder=embedder)
            try:
                for i, (cached, _, _) in enumerate(MUST_HIT):
                    cache.update(f"hit-{i}", cached, _LLM, f"hit-{i}")
                for i, (cached, _, _) in enumerate(MUST_MISS):
                    cache.update(f"miss-{i}", cached, _LLM, f"miss-{i}")
                default = _DEFAULT_THRESHOLD.get(name) or DEFAULT_THRESHOLD
                levels = list(dict.fromkeys([*(thresholds or ()), default] if thresholds else [default]))
                for threshold in [*sorted(levels), _ANY]:
                    for guard in (None, same_meaning):
                        cache.threshold, cache.guard = threshold, guard
                        hits = sum(_answered(cache, f"hit-{i}", asked) for i, (_, asked, _) in enumerate(MUST_HIT))
                        wrong = Counter(kind for i, (_, asked, kind) in enumerate(MUST_MISS)
                                        if _answered(cache, f"miss-{i}", asked))
                        rows.append(Row(name, threshold, guard is not None, hits, len(MUST_HIT), sum(wrong.values()),
                                        len(MUST_MISS), dict(wrong)))
            finally:
                cache.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def _answered(cache: Any, tenant: str, asked: str) -> bool:
    hit = cache.lookup(tenant, asked, _LLM)
    return hit is not None and hit.response == tenant


def markdown(rows: Sequence[Row], *, by_category: bool = False) -> str:
    """The rows as a markdown table (hit rate up is better, false-hit rate down)."""
    lines = ["| embedder | threshold | meaning guard | hit rate (must hit) | false-hit rate (must miss) |",
             "|---|---|---|---|---|"]
    for r in rows:
        th = "any" if r.threshold == _ANY else f"{r.threshold:.2f}"
        lines.append(f"| {r.embedder} | {th} | {'on (after)' if r.guard else 'off (before)'} | "
                     f"{r.hit_rate:.1%} ({r.hits}/{r.hit_total}) | "
                     f"{r.false_hit_rate:.1%} ({r.false_hits}/{r.miss_total}) |")
    if by_category:
        kinds = sorted(Counter(kind for _, _, kind in MUST_MISS).items())
        lines += ["", "| embedder | threshold | meaning guard | " + " | ".join(f"{k} (of {n})" for k, n in kinds) + " |",
                  "|---|---|---|" + "---|" * len(kinds)]
        for r in rows:
            th = "any" if r.threshold == _ANY else f"{r.threshold:.2f}"
            lines.append(f"| {r.embedder} | {th} | {'on' if r.guard else 'off'} | "
                         + " | ".join(str(r.false_by_category.get(k, 0)) for k, _ in kinds) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiered_context.evals.cache_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--embedders", default="wordllama", help="comma separated: wordllama, minilm, hash")
    parser.add_argument("--thresholds", default="", help="comma separated cosine thresholds besides the default")
    parser.add_argument("--by-category", action="store_true", help="also print false hits per kind of change")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    rows = evaluate([e.strip() for e in args.embedders.split(",") if e.strip()], thresholds or None)
    print(f"Paraphrase set: {len(MUST_HIT)} must-hit pairs, {len(MUST_MISS)} must-miss pairs "
          "(tiered_context.evals.cache_pairs).\n")
    print(markdown(rows, by_category=args.by_category))
    return 0


if __name__ == "__main__":
    sys.exit(main())
