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
category row of the triple carries the same value. Rows of strategies that compress
also carry ``compression_ratio`` (mean over questions of the assembled context's
original tokens / tokens used). ``latency_p50_ms`` / ``latency_p95_ms`` are the median
and 95th percentile of the per-assembly latency (one ``context`` call) in the row.

Observers: ``run_eval(..., on_assembly=callback)`` calls ``callback(Assembly(...))``
once per (question, strategy, budget), right after the context was built and scored:
what RAGAS collectors and tracers consume. Combine several with `fan_out`.

Answer survival (strategies with a per-item ``compressor``): rows from
`tiered_context.evals.survival`, which also explains what they lose.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tiered_context.evals.progress import progress_bar as tqdm

from tiered_context.evals.datasets import Conversation, Question, category_label
from tiered_context.evals.strategies import STRATEGIES, Strategy, counter

__all__ = ["Assembly", "BudgetViolation", "ROW_KEYS", "SESSION_LEVEL", "bootstrap_ci", "fan_out", "render_markdown", "run_eval",
           "write_reports"]

#: Category prefix of the RAGAS metric rows (``"ragas:context_recall"``), tabled apart.
RAGAS_PREFIX = "ragas:"

#: Category of the session-level rows (LongMemEval: a question counts when some turn of
#: each of its answer sessions is in the context), tabled as a column of its own.
SESSION_LEVEL = "all:session"

ROW_KEYS = ("dataset", "strategy", "budget", "category", "recall", "ci_low", "ci_high",
            "questions", "mean_tokens", "seconds", "latency_p50_ms", "latency_p95_ms")


@dataclass(frozen=True, kw_only=True)
class Assembly:
    """One assembled context, as observers of `run_eval` see it.

    `covered` holds the ids of the turns in `context`; `evidence` the question's evidence
    turn ids and `evidence_texts` their text (the reference contexts); `recall` is
    ``len(covered & evidence) / len(evidence)``; `tokens` the cl100k size of `context`;
    `latency_ms` the time of that one ``context`` call. `report` is the tiered strategy's
    assembly report as a dict (``tokens_per_tier``, ``candidates``, ``dropped``,
    ``compression_ratio``, ``seconds``); None for baselines.
    """

    dataset: str
    conversation_id: str
    question_id: str
    category: str
    strategy: str
    budget: int
    question: str
    answer: str | None
    context: str
    tokens: int
    covered: frozenset[str]
    evidence: tuple[str, ...]
    evidence_texts: tuple[str, ...]
    recall: float
    latency_ms: float
    compression_ratio: float | None
    report: Mapping[str, Any] | None


AssemblyObserver = Callable[[Assembly], None]


def fan_out(*observers: AssemblyObserver | None) -> AssemblyObserver | None:
    """One `on_assembly` callback that calls each of `observers` in turn (Nones are
    skipped; None when none is left)."""
    live = [o for o in observers if o is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    def observe(assembly: Assembly) -> None:
        for observer in live:
            observer(assembly)

    return observe


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
    on_assembly: Callable[[Assembly], None] | None = None,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Score every strategy at every budget on every dataset; one row per category.

    `strategies` maps a row name to a factory of fresh strategies (or is a list of names
    from `STRATEGIES`). `on_assembly`, if given, receives one `Assembly` per (question,
    strategy, budget). Raises `BudgetViolation` if any context exceeds its budget.

    `jobs` > 1 runs the (dataset, strategy) pairs in that many forked worker processes
    (POSIX only); rows come back in the same order as with one job, and `on_assembly` is
    still called in this process, once a pair has finished. Each pair's timing is its own
    process's, so the `seconds` and latency columns stay comparable across strategies
    only while the workers do not outnumber the cores.
    """
    if not isinstance(strategies, Mapping):
        strategies = {name: STRATEGIES[name] for name in strategies}
    pairs = [(dataset, name) for dataset in conversations_by_dataset for name in strategies]
    total = sum(len(c.questions) for convs in conversations_by_dataset.values() for c in convs)
    bar = tqdm(total=total * len(strategies) * len(budgets), disable=not progress,
               unit=" assemblies", dynamic_ncols=True, leave=False)  # one per question x strategy x budget; stderr
    counter()  # load the tokenizer now, so no strategy's seconds pay for it
    collect = on_assembly is not None
    results: dict[tuple[str, str], tuple[list[dict[str, Any]], list[Assembly]]] = {}
    try:
        if jobs <= 1 or len(pairs) <= 1:
            for dataset, name in pairs:
                bar.set_description(f"{dataset}/{name}")
                results[dataset, name] = _run_pair(dataset, conversations_by_dataset[dataset], name,
                                                   strategies[name], budgets, on_assembly, bar.update)
        else:
            global _JOB  # forked workers inherit it: factories need not be picklable
            _JOB = (conversations_by_dataset, strategies, budgets, collect)
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                futures = {pool.submit(_run_pair_in_worker, pair): pair for pair in pairs}
                for future in as_completed(futures):
                    dataset, name = futures[future]
                    rows, assemblies = future.result()
                    for assembly in assemblies:
                        on_assembly(assembly)  # type: ignore[misc]
                    results[dataset, name] = (rows, [])
                    bar.set_description(f"{dataset}/{name} done")
                    bar.update(len([q for c in conversations_by_dataset[dataset] for q in c.questions]) * len(budgets))
            _JOB = None
    finally:
        bar.close()
    return [row for pair in pairs for row in results[pair][0]]


_JOB: tuple[Any, ...] | None = None


def _run_pair_in_worker(pair: tuple[str, str]) -> tuple[list[dict[str, Any]], list[Assembly]]:
    conversations_by_dataset, strategies, budgets, collect = _JOB  # type: ignore[misc]
    dataset, name = pair
    assemblies: list[Assembly] = []
    rows, _ = _run_pair(dataset, conversations_by_dataset[dataset], name, strategies[name], budgets,
                        assemblies.append if collect else None, lambda n=1: None)
    return rows, assemblies


def _run_pair(dataset: str, conversations: Sequence[Conversation], name: str,
              factory: Callable[[], Strategy], budgets: Sequence[int],
              on_assembly: Callable[[Assembly], None] | None,
              tick: Callable[..., Any]) -> tuple[list[dict[str, Any]], list[Assembly]]:
    """The rows of one (dataset, strategy): every budget, then answer survival."""
    # per budget: category -> [(recall, tokens, latency ms)], and seconds spent
    scores: dict[int, dict[str, list[tuple[float, int, float]]]] = {b: defaultdict(list) for b in budgets}
    seconds = dict.fromkeys(budgets, 0.0)
    ratios: dict[int, dict[str, list[float]]] = {b: defaultdict(list) for b in budgets}
    sessions: dict[int, list[tuple[float, int, float]]] = {b: [] for b in budgets}
    strategy = None
    for conv in conversations:
        strategy = factory()
        start = time.perf_counter()
        strategy.ingest(conv)
        ingest = time.perf_counter() - start
        texts = {t.id: t.text for t in conv.turns} if on_assembly is not None else {}
        for budget in budgets:
            seconds[budget] += ingest / len(budgets)
            for question in conv.questions:
                start = time.perf_counter()
                packed = strategy.context(question, budget)
                elapsed = time.perf_counter() - start
                seconds[budget] += elapsed
                tokens = _check_budget(strategy, packed.text, packed.tokens, budget)
                evidence = set(question.evidence)
                recall = len(packed.covered & evidence) / len(evidence)
                scores[budget][question.category].append((recall, tokens, elapsed * 1000))
                if question.evidence_groups:  # LongMemEval: every answer session touched
                    hit = all(packed.covered & set(g) for g in question.evidence_groups)
                    sessions[budget].append((float(hit), tokens, elapsed * 1000))
                if on_assembly is not None:
                    on_assembly(_assembly(dataset, conv.id, name, budget, question, packed,
                                          tokens, recall, elapsed, texts))
                if packed.compression_ratio is not None:
                    ratios[budget][question.category].append(packed.compression_ratio)
                tick()
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        rows.extend(_aggregate(dataset, name, budget, scores[budget], seconds[budget], ratios[budget]))
        if sessions[budget]:
            session_rows = _aggregate(dataset, name, budget, {SESSION_LEVEL: sessions[budget]}, seconds[budget])
            rows.extend(r for r in session_rows if r["category"] == SESSION_LEVEL)
    compressor = getattr(strategy, "compressor", None) if conversations else None
    if compressor is not None:
        from tiered_context.evals.survival import SURVIVAL_RATIOS, answer_survival  # it imports this module

        for ratio in SURVIVAL_RATIOS:
            row = answer_survival(conversations, compressor, ratio)
            if row is not None:
                rows.append({"dataset": dataset, "strategy": name, **row})
    return rows, []


def _assembly(dataset: str, conversation_id: str, strategy: str, budget: int, question: Question,
              packed: Any, tokens: int, recall: float, elapsed: float,
              texts: Mapping[str, str]) -> Assembly:
    return Assembly(
        dataset=dataset, conversation_id=conversation_id, question_id=question.id,
        category=question.category, strategy=strategy, budget=budget, question=question.text,
        answer=question.answer, context=packed.text, tokens=tokens,
        covered=frozenset(packed.covered), evidence=tuple(question.evidence),
        evidence_texts=tuple(texts[e] for e in question.evidence if e in texts),
        recall=recall, latency_ms=elapsed * 1000, compression_ratio=packed.compression_ratio,
        report=getattr(packed, "report", None),
    )


def _aggregate(dataset: str, strategy: str, budget: int,
               by_category: Mapping[str, list[tuple[float, int, float]]],
               seconds: float, ratios: Mapping[str, list[float]] | None = None) -> list[dict[str, Any]]:
    groups = {c: by_category[c] for c in sorted(by_category)}
    groups["all"] = [pair for c in sorted(by_category) for pair in by_category[c]]
    ratios = ratios or {}
    ratio_groups = {c: list(ratios.get(c, ())) for c in groups}
    ratio_groups["all"] = [r for c in sorted(by_category) for r in ratios.get(c, ())]
    rows = []
    for category, pairs in groups.items():
        if not pairs:
            continue
        recalls = [p[0] for p in pairs]
        low, high = bootstrap_ci(recalls)
        p50, p95 = np.percentile([p[2] for p in pairs], [50, 95])
        row = {
            "dataset": dataset, "strategy": strategy, "budget": budget,
            "category": category, "recall": round(float(np.mean(recalls)), 4),
            "ci_low": round(low, 4), "ci_high": round(high, 4), "questions": len(pairs),
            "mean_tokens": round(float(np.mean([p[1] for p in pairs])), 1),
            "seconds": round(seconds, 3),
            "latency_p50_ms": round(float(p50), 3), "latency_p95_ms": round(float(p95), 3),
        }
        if ratio_groups[category]:
            row["compression_ratio"] = round(float(np.mean(ratio_groups[category])), 4)
        rows.append(row)
    return rows


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown table per dataset: strategy x budget down, recall per category
    across, then the overall recall with its 95% bootstrap CI, mean tokens, seconds
    (and the compression ratio when a strategy compresses); then the answer-survival
    rows, if any, in a table of their own."""
    out: list[str] = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset and r["category"] != "answer_survival"
                and not str(r["category"]).startswith(RAGAS_PREFIX)]
        ragas = [r for r in rows if r["dataset"] == dataset and str(r["category"]).startswith(RAGAS_PREFIX)]
        survival = [r for r in rows if r["dataset"] == dataset and r["category"] == "answer_survival"]
        categories = sorted({r["category"] for r in mine} - {"all", SESSION_LEVEL})
        by_session = any(r["category"] == SESSION_LEVEL for r in mine)
        cells: dict[tuple[str, int], dict[str, Mapping[str, Any]]] = defaultdict(dict)
        for r in mine:
            cells[(r["strategy"], r["budget"])][r["category"]] = r
        n_all = max((r["questions"] for r in mine if r["category"] == "all"), default=0)
        ratio = any("compression_ratio" in r for r in mine)
        head = (["strategy", "budget"] + [category_label(c) for c in categories]
                + ["all", "95% CI (all)"] + (["all, session level"] if by_session else [])
                + ["mean tokens", "seconds"] + (["compression"] if ratio else []))
        if mine:
            out += [f"### {dataset} ({n_all} questions)", "",
                    "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for (strategy, budget), by_cat in cells.items():
            total = by_cat["all"]  # every (strategy, budget) with questions has one
            line = [strategy, str(budget)]
            line += [f"{by_cat[c]['recall']:.3f}" if c in by_cat else "" for c in categories]
            line += [f"{total['recall']:.3f}", f"{total['ci_low']:.3f}-{total['ci_high']:.3f}"]
            if by_session:
                line.append(f"{by_cat[SESSION_LEVEL]['recall']:.3f}" if SESSION_LEVEL in by_cat else "")
            line += [f"{total['mean_tokens']:.0f}", f"{total['seconds']:.2f}"]
            if ratio:
                line.append(f"{total['compression_ratio']:.2f}x" if "compression_ratio" in total else "")
            out.append("| " + " | ".join(line) + " |")
        if mine:
            out.append("")
        if survival:
            out += [f"### {dataset}: answer survival under per-item compression "
                    f"({survival[0]['questions']} single-hop answers found in their evidence)", "",
                    "| strategy | target | achieved | answer terms survive | 95% CI | whole answer string |",
                    "|---|---|---|---|---|---|"]
            for r in survival:
                out.append(f"| {r['strategy']} | {r['target_ratio']:.0f}x | {r['compression_ratio']:.2f}x | "
                           f"{r['recall']:.3f} | {r['ci_low']:.3f}-{r['ci_high']:.3f} | {r['strict_recall']:.3f} |")
            out.append("")
        if ragas:
            out += _ragas_table(dataset, ragas)
    return "\n".join(out)


def _ragas_table(dataset: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """RAGAS metric rows (``category="ragas:<metric>"``, value in ``recall``) as one table:
    strategy x budget down, one column per metric."""
    metrics = list(dict.fromkeys(str(r["category"])[len(RAGAS_PREFIX):] for r in rows))
    cells: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for r in rows:
        cells[(r["strategy"], r["budget"])][str(r["category"])[len(RAGAS_PREFIX):]] = r["recall"]
    scored = max((int(r.get("questions", 0)) for r in rows), default=0)
    sampled = any(int(r.get("sampled_from", 0)) > int(r.get("questions", 0)) for r in rows)
    over = f"mean over a seeded sample of <= {scored} assemblies per row" if sampled else "mean over questions"
    out = [f"### {dataset}: RAGAS metrics ({over})", "",
           "| strategy | budget | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for (strategy, budget), values in cells.items():
        line = [strategy, str(budget)] + [f"{values[m]:.3f}" if m in values else "" for m in metrics]
        out.append("| " + " | ".join(line) + " |")
    return out + [""]


def write_reports(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` (the rows) and ``results.md`` (the tables) into `out_dir`;
    returns both paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "results.json", folder / "results.md"
    json_path.write_text(json.dumps(list(rows), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(rows), encoding="utf-8")
    return json_path, md_path
