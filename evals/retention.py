"""Retention against compression: evidence recall at token budgets.

For every question (LoCoMo categories 1-4, QMSum specific queries), a strategy builds
the context under a hard budget of B cl100k tokens; the score is the fraction of the
question's evidence turns present in that context. LLM-free and deterministic::

    rows = run_eval({"locomo": load_locomo(path)}, ["recency", "bm25"], [1000, 2000])
    write_reports(rows, "out/eval")      # results.json + results.md

Each row aggregates one (dataset, strategy, budget, category), plus ``category="all"``
(the question-weighted mean over every question). ``seconds`` is the wall time of that
(dataset, strategy, budget): packing time for the budget plus the ingest time split
evenly across the budgets (each conversation is ingested once per strategy); every
category row of the triple carries the same value.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tiered_context.evals.datasets import Conversation, category_label
from tiered_context.evals.strategies import STRATEGIES, Strategy, counter

__all__ = ["BudgetViolation", "ROW_KEYS", "bootstrap_ci", "render_markdown", "run_eval",
           "write_reports"]

ROW_KEYS = ("dataset", "strategy", "budget", "category", "recall", "ci_low", "ci_high",
            "questions", "mean_tokens", "seconds")


class BudgetViolation(RuntimeError):
    """A strategy returned more tokens than the budget allows: a bug in that strategy."""


def bootstrap_ci(values: Sequence[float], *, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of `values` (fixed seed)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _check_budget(strategy: Strategy, text: str, reported: int, budget: int) -> int:
    """The measured cl100k size of `text`; raises if it or the reported size is over."""
    measured = counter().count(text)
    if max(measured, reported) > budget:
        raise BudgetViolation(
            f"strategy {strategy.name!r} returned {measured} tokens (it reported {reported}) "
            f"for a budget of {budget}: fix the strategy's packing, the budget is hard"
        )
    return measured


def run_eval(
    conversations_by_dataset: Mapping[str, Sequence[Conversation]],
    strategies: Mapping[str, Callable[[], Strategy]] | Sequence[str],
    budgets: Sequence[int],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score every strategy at every budget on every dataset; one row per category.

    `strategies` maps a row name to a factory of fresh strategies (or is a list of names
    from `STRATEGIES`). Raises `BudgetViolation` if any context exceeds its budget.
    """
    if not isinstance(strategies, Mapping):
        strategies = {name: STRATEGIES[name] for name in strategies}
    total = sum(len(c.questions) for convs in conversations_by_dataset.values() for c in convs)
    bar = tqdm(total=total * len(strategies) * len(budgets), disable=not progress,
               unit="q", dynamic_ncols=True, leave=False)  # tqdm writes to stderr
    counter()  # load the tokenizer now, so no strategy's seconds pay for it
    rows: list[dict[str, Any]] = []
    try:
        for dataset, conversations in conversations_by_dataset.items():
            for name, factory in strategies.items():
                bar.set_description(f"{dataset}/{name}")
                # per budget: category -> [(recall, tokens)], and seconds spent
                scores: dict[int, dict[str, list[tuple[float, int]]]] = {
                    b: defaultdict(list) for b in budgets}
                seconds = dict.fromkeys(budgets, 0.0)
                for conv in conversations:
                    strategy = factory()
                    start = time.perf_counter()
                    strategy.ingest(conv)
                    ingest = time.perf_counter() - start
                    for budget in budgets:
                        seconds[budget] += ingest / len(budgets)
                        for question in conv.questions:
                            start = time.perf_counter()
                            packed = strategy.context(question, budget)
                            seconds[budget] += time.perf_counter() - start
                            tokens = _check_budget(strategy, packed.text, packed.tokens, budget)
                            evidence = set(question.evidence)
                            recall = len(packed.covered & evidence) / len(evidence)
                            scores[budget][question.category].append((recall, tokens))
                            bar.update()
                for budget in budgets:
                    rows.extend(_aggregate(dataset, name, budget, scores[budget],
                                           seconds[budget]))
    finally:
        bar.close()
    return rows


def _aggregate(dataset: str, strategy: str, budget: int,
               by_category: Mapping[str, list[tuple[float, int]]],
               seconds: float) -> list[dict[str, Any]]:
    groups = {c: by_category[c] for c in sorted(by_category)}
    groups["all"] = [pair for c in sorted(by_category) for pair in by_category[c]]
    rows = []
    for category, pairs in groups.items():
        if not pairs:
            continue
        recalls = [r for r, _ in pairs]
        low, high = bootstrap_ci(recalls)
        rows.append({
            "dataset": dataset, "strategy": strategy, "budget": budget,
            "category": category, "recall": round(float(np.mean(recalls)), 4),
            "ci_low": round(low, 4), "ci_high": round(high, 4), "questions": len(pairs),
            "mean_tokens": round(float(np.mean([t for _, t in pairs])), 1),
            "seconds": round(seconds, 3),
        })
    return rows


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown table per dataset: strategy x budget down, recall per category
    across, then the overall recall with its 95% bootstrap CI, mean tokens, seconds."""
    out: list[str] = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        categories = sorted({r["category"] for r in mine} - {"all"})
        cells: dict[tuple[str, int], dict[str, Mapping[str, Any]]] = defaultdict(dict)
        for r in mine:
            cells[(r["strategy"], r["budget"])][r["category"]] = r
        n_all = max((r["questions"] for r in mine if r["category"] == "all"), default=0)
        head = (["strategy", "budget"] + [category_label(c) for c in categories]
                + ["all", "95% CI (all)", "mean tokens", "seconds"])
        out += [f"### {dataset} ({n_all} questions)", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for (strategy, budget), by_cat in cells.items():
            total = by_cat["all"]  # every (strategy, budget) with questions has one
            line = [strategy, str(budget)]
            line += [f"{by_cat[c]['recall']:.3f}" if c in by_cat else "" for c in categories]
            line += [f"{total['recall']:.3f}", f"{total['ci_low']:.3f}-{total['ci_high']:.3f}",
                     f"{total['mean_tokens']:.0f}", f"{total['seconds']:.2f}"]
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def write_reports(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` (the rows) and ``results.md`` (the tables) into `out_dir`;
    returns both paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "results.json", folder / "results.md"
    json_path.write_text(json.dumps(list(rows), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(rows), encoding="utf-8")
    return json_path, md_path
