"""Plots and a Markdown report from the eval's result rows.

    rows = run_eval({"locomo": convs}, ["recency", "bm25", "tiered"], [500, 1000, 2000, 4000])
    write_report(rows, "out/eval")     # -> out/eval/report.md, next to three PNGs

or, from a ``results.json`` an earlier run wrote (older files with fewer keys work too)::

    python -m tiered_context.evals.report out/eval/results.json

The report holds:

- ``retention.png``: evidence recall against the token budget, one line per strategy
  with its 95% bootstrap CI as a band, one panel per dataset (``x="tokens"`` draws it
  against the mean tokens a strategy really used instead);
- ``categories.png``: recall per question category at one budget, CIs as error bars;
- ``latency.png``: milliseconds per assembly (p50 and p95) per strategy at that budget;
  rows without ``latency_p50_ms`` fall back to the mean wall time per question
  (ingest share included), and the chart says so;
- the recall tables of `retention.render_markdown` (answer survival included), a
  latency table, and a RAGAS table when rows with ``category="ragas:<metric>"`` exist.

Matplotlib runs on its Agg backend: nothing opens a window, so this works headless.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tiered_context.evals.datasets import category_label
from tiered_context.evals.retention import render_markdown

__all__ = ["ci_overlap", "main", "plot_categories", "plot_latency", "plot_retention", "reference_budget",
           "write_report"]

Row = Mapping[str, Any]
_SURVIVAL = "answer_survival"
_RAGAS = "ragas:"
_RAG = "rag_postprocessor"  # rows of tiered_context.evals.rag_postprocessors: a table of their own
_MARKERS = "osD^vP*Xh<>p"
_DASHES = ("-", "--", "-.", ":")


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), or an ImportError
    that names the extra to install."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib ships with the evals extra
        raise ImportError('plots need matplotlib: pip install "tiered-context[evals]"') from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _recall_rows(rows: Iterable[Row]) -> list[Row]:
    """Rows that are evidence recall at a budget (no answer-survival, no RAGAS rows)."""
    return [r for r in rows if r.get("budget", 0) > 0 and r.get("category") not in (_SURVIVAL, _RAG)
            and not str(r.get("category", "")).startswith(_RAGAS) and "recall" in r]


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _styles(strategies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One fixed colour / marker / dash per strategy, the same in every figure: the ten
    tab10 colours, then their light tab20 twins drawn dashed (lines) or hatched (bars)."""
    plt = _pyplot()
    colours = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20").colors[1::2])
    return {s: {"color": colours[i % 20], "marker": _MARKERS[i % len(_MARKERS)],
                "linestyle": _DASHES[(i // 10) % len(_DASHES)]} for i, s in enumerate(strategies)}


def _hatch(styles: Mapping[str, Mapping[str, Any]], strategy: str) -> str | None:
    """Bars of the second ten strategies are hatched, so no two bars look alike."""
    return "//" if styles[strategy]["linestyle"] != "-" else None


def _plain_log_ticks(axis: Any) -> None:
    """Log-scale tick labels as plain numbers (0.1, 1, 10), none on minor ticks."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _ci(row: Row) -> tuple[float, float]:
    """The row's 95% CI, or a zero-width one at its recall when an older file has none."""
    return float(row.get("ci_low", row["recall"])), float(row.get("ci_high", row["recall"]))


def reference_budget(rows: Iterable[Row]) -> int | None:
    """The budget the bar charts use: 2000 when it was run, else the middle budget."""
    budgets = sorted({int(r["budget"]) for r in _recall_rows(rows)})
    if not budgets:
        return None
    return 2000 if 2000 in budgets else budgets[len(budgets) // 2]


def _legend_below(fig: Any, axes: Sequence[Any], handles: list[Any], labels: list[str]) -> None:
    columns = min(5, max(1, len(labels)))
    fig.legend(handles, labels, loc="lower center", ncol=columns, frameon=False, fontsize=9)
    rows_of_legend = math.ceil(len(labels) / columns)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))


def plot_retention(rows: Sequence[Row], path: str | Path, *, x: Literal["budget", "tokens"] = "budget") -> Path:
    """Recall of ``category="all"`` against budget (or mean tokens used), with CI bands."""
    plt = _pyplot()
    data = [r for r in _recall_rows(rows) if r["category"] == "all"]
    datasets = _ordered(r["dataset"] for r in data) or ["(no recall rows)"]
    styles = _styles(_ordered(r["strategy"] for r in data))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for k, (strategy, style) in enumerate(styles.items()):
            # each line thinner than the one before: identical curves (recency-like
            # baselines often coincide) stay visible as layers instead of hiding
            size = {"linewidth": max(1.0, 3.2 - 0.3 * k), "markersize": max(3.0, 8.5 - 0.6 * k)}
            mine = sorted((r for r in data if r["dataset"] == dataset and r["strategy"] == strategy),
                          key=lambda r: r["budget"])
            if not mine:
                continue
            xs = [r["budget"] if x == "budget" else r.get("mean_tokens", r["budget"]) for r in mine]
            lows, highs = zip(*(_ci(r) for r in mine))
            ax.plot(xs, [r["recall"] for r in mine], label=strategy, **size, **style)
            ax.fill_between(xs, lows, highs, color=style["color"], alpha=0.12, linewidth=0)
        questions = max((r.get("questions", 0) for r in data if r["dataset"] == dataset), default=0)
        ax.set_title(f"{dataset} ({questions} questions)")
        ax.set_xscale("log", base=2)
        budgets = sorted({r["budget"] for r in data if r["dataset"] == dataset})
        _plain_log_ticks(ax.xaxis)
        if budgets:
            ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("token budget (cl100k)" if x == "budget" else "mean tokens used (cl100k)")
        ax.set_ylabel("evidence recall")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle("Retention vs tokens (bands: 95% bootstrap CI)", fontsize=12)
    _legend_below(fig, axes[0], handles, labels)
    return _save(fig, path)


def plot_categories(rows: Sequence[Row], path: str | Path, *, budget: int | None = None) -> Path:
    """Recall per category (and overall) at one budget: grouped bars, CI error bars."""
    plt = _pyplot()
    budget = budget if budget is not None else reference_budget(rows)
    data = [r for r in _recall_rows(rows) if r["budget"] == budget]
    datasets = _ordered(r["dataset"] for r in data) or ["(no recall rows)"]
    strategies = _ordered(r["strategy"] for r in data)
    styles = _styles(strategies)
    widths = [max(2, len({r["category"] for r in data if r["dataset"] == d})) for d in datasets]
    fig, axes = plt.subplots(1, len(datasets), figsize=(sum(1.3 * w + 1.5 for w in widths), 4.8),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in data if r["dataset"] == dataset]
        categories = sorted({r["category"] for r in mine} - {"all"})
        categories = categories + ["all"] if len(categories) != 1 else categories  # "all" = the one
        width = 0.8 / max(1, len(strategies))
        for k, strategy in enumerate(strategies):
            cells = {r["category"]: r for r in mine if r["strategy"] == strategy}
            xs = [i + (k - (len(strategies) - 1) / 2) * width for i, c in enumerate(categories) if c in cells]
            got = [cells[c] for c in categories if c in cells]
            if not got:
                continue
            heights = [r["recall"] for r in got]
            errors = [[h - _ci(r)[0] for h, r in zip(heights, got)], [_ci(r)[1] - h for h, r in zip(heights, got)]]
            ax.bar(xs, heights, width=width, yerr=errors, capsize=2, label=strategy, color=styles[strategy]["color"],
                   hatch=_hatch(styles, strategy), edgecolor="white", linewidth=0.3,
                   error_kw={"elinewidth": 0.8, "alpha": 0.7})
        ax.set_xticks(range(len(categories)), [category_label(c).replace(" (", "\n(") for c in categories],
                      fontsize=9)
        ax.set_title(f"{dataset} at budget {budget}")
        ax.set_ylabel("evidence recall")
        ax.set_ylim(0, 1.05)
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    _legend_below(fig, axes[0], handles, labels)
    return _save(fig, path)


def _latency(row: Row) -> tuple[float, float | None, bool]:
    """(p50 ms, p95 ms or None, measured?) of one row; the fallback is the mean wall time
    per question of the (dataset, strategy, budget), ingest share included."""
    if "latency_p50_ms" in row:
        return float(row["latency_p50_ms"]), row.get("latency_p95_ms"), True
    return 1000 * float(row.get("seconds", 0.0)) / max(1, int(row.get("questions", 1))), None, False


def plot_latency(rows: Sequence[Row], path: str | Path, *, budget: int | None = None) -> Path:
    """Milliseconds per assembly per strategy at one budget (log scale): p50 bars with
    the p95 as a tick past them, one panel per dataset."""
    plt = _pyplot()
    budget = budget if budget is not None else reference_budget(rows)
    data = [r for r in _recall_rows(rows) if r["budget"] == budget and r["category"] == "all"]
    datasets = _ordered(r["dataset"] for r in data) or ["(no recall rows)"]
    strategies = _ordered(r["strategy"] for r in data)
    styles = _styles(strategies)
    measured = all(_latency(r)[2] for r in data)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 1.2 + 0.45 * max(3, len(strategies))),
                             squeeze=False, sharey=True)
    for ax, dataset in zip(axes[0], datasets):
        cells = {r["strategy"]: _latency(r) for r in data if r["dataset"] == dataset}
        ys = range(len(strategies))
        p50 = [cells.get(s, (float("nan"),))[0] for s in strategies]
        bars = ax.barh(ys, p50, color=[styles[s]["color"] for s in strategies], height=0.6, edgecolor="white")
        for bar, strategy in zip(bars, strategies):
            bar.set_hatch(_hatch(styles, strategy))
        p95 = [cells[s][1] if s in cells and cells[s][1] is not None else float("nan") for s in strategies]
        if any(not math.isnan(v) for v in p95):
            ax.scatter(p95, ys, marker="|", s=220, color="black", label="p95", zorder=3)
        for y, value in zip(ys, p50):
            if value <= 0:  # no bar on a log axis: say so instead of leaving a blank row
                ax.text(0.01, y, "p50 < 0.001 ms", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
        ax.set_yticks(list(ys), strategies, fontsize=9)
        log = any(v > 0 for v in p50)  # a log axis of all-zero timings is meaningless
        if log:
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
        scale = " (log scale)" if log else ""
        ax.set_xlabel(f"ms per assembly, bars p50{scale}" if measured
                      else f"ms per question, ingest share included{scale}")
        ax.set_title(f"{dataset} at budget {budget}")
        ax.grid(True, axis="x", alpha=0.3, which="both")
    axes[0][0].invert_yaxis()  # shared y axis: first strategy on top, once for all panels
    handles, labels = axes[0][0].get_legend_handles_labels()
    _legend_below(fig, axes[0], handles, labels)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    _pyplot().close(fig)
    return target


def ci_overlap(rows: Sequence[Row], first: str, second: str, *, dataset: str, budget: int,
               category: str = "all") -> dict[str, Any]:
    """Compare two strategies' recall at one budget: both rows' recall and CI, the
    difference, and whether the 95% CIs overlap (if they do, the run does not show a
    difference; if not, it does, at roughly that confidence)."""
    found: dict[str, Row] = {}
    for row in _recall_rows(rows):
        if (row["dataset"], row["budget"], row["category"]) == (dataset, budget, category) \
                and row["strategy"] in (first, second):
            found[row["strategy"]] = row
    missing = [s for s in (first, second) if s not in found]
    if missing:
        raise KeyError(f"no {category!r} row for {', '.join(missing)} on {dataset!r} at budget {budget}; "
                       f"run the eval with those strategies and that budget")
    a, b = found[first], found[second]
    return {
        first: {"recall": a["recall"], "ci": _ci(a)}, second: {"recall": b["recall"], "ci": _ci(b)},
        "difference": round(a["recall"] - b["recall"], 4),
        "overlap": _ci(a)[0] <= _ci(b)[1] and _ci(b)[0] <= _ci(a)[1],
    }


def _latency_table(rows: Sequence[Row], budget: int | None) -> list[str]:
    data = [r for r in _recall_rows(rows) if r["budget"] == budget and r["category"] == "all"]
    if not data:
        return []
    measured = all(_latency(r)[2] for r in data)
    head = "| dataset | strategy | p50 ms | p95 ms |" if measured else "| dataset | strategy | mean ms per question |"
    out = [head, "|---|---|---|---|" if measured else "|---|---|---|"]
    for r in data:
        p50, p95, _ = _latency(r)
        out.append(f"| {r['dataset']} | {r['strategy']} | {p50:.2f} | {p95:.2f} |" if measured and p95 is not None
                   else f"| {r['dataset']} | {r['strategy']} | {p50:.2f} |" + (" |" if measured else ""))
    return out


def _ragas_table(rows: Sequence[Row]) -> list[str]:
    """One line per (dataset, strategy, budget), one column per RAGAS metric."""
    data = [r for r in rows if str(r.get("category", "")).startswith(_RAGAS)]
    if not data:
        return []
    metrics = _ordered(r["category"][len(_RAGAS):] for r in data)
    cells: dict[tuple[str, str, Any], dict[str, Any]] = defaultdict(dict)
    for r in data:
        value = next((r[k] for k in ("score", "value", "recall") if k in r), None)
        cells[(r.get("dataset", ""), r.get("strategy", ""), r.get("budget", ""))][r["category"][len(_RAGAS):]] = value
    out = ["| dataset | strategy | budget | " + " | ".join(metrics) + " |", "|" + "---|" * (3 + len(metrics))]
    for (dataset, strategy, budget), by_metric in cells.items():
        values = [f"{by_metric[m]:.3f}" if isinstance(by_metric.get(m), (int, float)) else "" for m in metrics]
        out.append(f"| {dataset} | {strategy} | {budget} | " + " | ".join(values) + " |")
    return out


def _complete(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Rows with the keys `render_markdown` reads, defaulted for older results files."""
    out = []
    for r in _recall_rows(rows) + [r for r in rows if r.get("category") == _SURVIVAL]:
        row = dict(r)
        row.setdefault("ci_low", row["recall"])
        row.setdefault("ci_high", row["recall"])
        for key in ("questions", "mean_tokens", "seconds"):
            row.setdefault(key, 0)
        if row["category"] == _SURVIVAL:
            for key in ("target_ratio", "compression_ratio", "strict_recall"):
                row.setdefault(key, float("nan"))
        out.append(row)
    return out


def write_report(rows: Sequence[Row], out_dir: str | Path, *, budget: int | None = None,
                 title: str = "Retention against compression") -> Path:
    """Draw the three figures into `out_dir` and write ``report.md`` beside them (images
    linked relatively, so the folder can be moved or published as is); returns its path.

    `budget` picks the budget of the category and latency charts (default:
    `reference_budget`). Rows may come from an older ``results.json``: missing CIs,
    latencies or ratios are tolerated.
    """
    rows = list(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = budget if budget is not None else reference_budget(rows)
    recall = _recall_rows(rows)
    lines = [f"# {title}", ""]
    if recall:
        plot_retention(rows, out / "retention.png")
        plot_retention(rows, out / "retention_tokens.png", x="tokens")
        plot_categories(rows, out / "categories.png", budget=budget)
        plot_latency(rows, out / "latency.png", budget=budget)
        strategies = ", ".join(f"`{s}`" for s in _ordered(r["strategy"] for r in recall))
        budgets = ", ".join(str(b) for b in sorted({r["budget"] for r in recall}))
        lines += [f"Strategies: {strategies}. Budgets: {budgets} cl100k tokens. Recall is the share of "
                  "a question's evidence turns present in the context built under the budget; "
                  "CIs are 95% percentile bootstrap intervals over questions.", "",
                  "## Retention vs tokens", "", "![evidence recall against the token budget](retention.png)", "",
                  "Against the tokens really used (a strategy may stop under its budget):", "",
                  "![evidence recall against the mean tokens used](retention_tokens.png)", "",
                  f"## Per category at budget {budget}", "", f"![recall per category at budget {budget}](categories.png)",
                  "", f"## Latency per assembly at budget {budget}", "",
                  f"![milliseconds per assembly at budget {budget}](latency.png)", ""]
        lines += _latency_table(rows, budget) + [""]
    lines += ["## Tables", "", render_markdown(_complete(rows)) or "(no recall rows)", ""]
    if any(r.get("category") == _RAG for r in rows):
        from tiered_context.evals.rag_postprocessors import render_markdown as rag_table

        lines += ["## RAG postprocessors", "", "Chunks of QMSum meetings retrieved top-k, then budgeted by each "
                  "pipeline inside the framework's own query engine / retrieval chain.", "", rag_table(rows), ""]
    ragas = _ragas_table(rows)
    if ragas:
        lines += ["## RAGAS", "", "Scores of the assembled contexts against the reference contexts "
                  "(LLM-judged metrics only when a judge was configured).", ""] + ragas + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tiered_context.evals.report results.json [--out DIR] [--budget N]``."""
    parser = argparse.ArgumentParser(description="Plots and report.md from an eval's results.json")
    parser.add_argument("results", type=Path, help="results.json written by `tiered-context eval`")
    parser.add_argument("--out", type=Path, help="output folder (default: the folder of results.json)")
    parser.add_argument("--budget", type=int, help="budget of the category and latency charts")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"{args.results}: not found; give the results.json an eval wrote")
    path = write_report(json.loads(args.results.read_text(encoding="utf-8")),
                        args.out or args.results.parent, budget=args.budget)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
